/* The public ABI seen from C through minicpm.h only: struct sizes and field offsets, defaults, status names,
 * the last-error buffer convention, NULL handling and the params size check. Linked against the shared
 * library. */
#include "minicpm.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

static int g_checks = 0;
static int g_failures = 0;

#define CHECK(cond, ...)                                             \
    do {                                                             \
        g_checks++;                                                  \
        printf("%s ", (cond) ? "ok  " : "FAIL");                     \
        printf(__VA_ARGS__);                                         \
        if (!(cond)) {                                               \
            g_failures++;                                            \
            printf("   [%s:%d: %s]", __FILE__, __LINE__, #cond);     \
        }                                                            \
        printf("\n");                                                \
    } while (0)

static void check_size(const char * name, uint32_t want) {
    uint32_t got = minicpm_struct_size(name);
    CHECK(got == want, "struct_size(\"%s\") = %u, sizeof here = %u", name, got, want);
}

/* One field as this C compiler lays it out. */
struct field {
    const char * name;
    size_t       offset;
    size_t       size;
};

#define FIELD(T, f) {#f, offsetof(struct T, f), sizeof(((struct T *) 0)->f)}
#define N_FIELDS(a) ((int) (sizeof(a) / sizeof((a)[0])))

static const struct field model_params_fields[] = {
    FIELD(minicpm_model_params, size), FIELD(minicpm_model_params, n_threads), FIELD(minicpm_model_params, backend),
    FIELD(minicpm_model_params, use_mmap), FIELD(minicpm_model_params, pad_), FIELD(minicpm_model_params, quantize),
    FIELD(minicpm_model_params, quant_group_size), FIELD(minicpm_model_params, quantize_head),
    FIELD(minicpm_model_params, pad1_),
    FIELD(minicpm_model_params, sparse),       FIELD(minicpm_model_params, device_memory),
    FIELD(minicpm_model_params, cuda_graphs),  FIELD(minicpm_model_params, pad2_),
};
static const struct field model_info_fields[] = {
    FIELD(minicpm_model_info, size),           FIELD(minicpm_model_info, n_vocab),
    FIELD(minicpm_model_info, n_ctx_train),    FIELD(minicpm_model_info, n_embd),
    FIELD(minicpm_model_info, n_layer),        FIELD(minicpm_model_info, n_head),
    FIELD(minicpm_model_info, n_head_kv),      FIELD(minicpm_model_info, n_head_dim),
    FIELD(minicpm_model_info, n_ff),           FIELD(minicpm_model_info, bos_token_id),
    FIELD(minicpm_model_info, n_eos),          FIELD(minicpm_model_info, eos_token_ids),
    FIELD(minicpm_model_info, weight_dtype),   FIELD(minicpm_model_info, tied_head),
    FIELD(minicpm_model_info, pad_),           FIELD(minicpm_model_info, rms_norm_eps),
    FIELD(minicpm_model_info, rope_theta),     FIELD(minicpm_model_info, scale_emb),
    FIELD(minicpm_model_info, residual_scale), FIELD(minicpm_model_info, logit_divisor),
    FIELD(minicpm_model_info, rope_mscale),    FIELD(minicpm_model_info, pad1_),
    FIELD(minicpm_model_info, n_params),       FIELD(minicpm_model_info, weight_bytes),
    FIELD(minicpm_model_info, kv_bytes_per_token), FIELD(minicpm_model_info, backend),
    FIELD(minicpm_model_info, sparse_config),  FIELD(minicpm_model_info, quantization_config),
    FIELD(minicpm_model_info, sparse_attention), FIELD(minicpm_model_info, pad2_),
    FIELD(minicpm_model_info, backend_name),   FIELD(minicpm_model_info, device_memory_free),
    FIELD(minicpm_model_info, device_memory_total), FIELD(minicpm_model_info, device_arena_bytes),
    FIELD(minicpm_model_info, device_arena_free),
};
static const struct field context_params_fields[] = {
    FIELD(minicpm_context_params, size),      FIELD(minicpm_context_params, n_ctx),
    FIELD(minicpm_context_params, n_seq_max), FIELD(minicpm_context_params, n_threads),
    FIELD(minicpm_context_params, kv_dtype),  FIELD(minicpm_context_params, n_chunk),
    FIELD(minicpm_context_params, use_reference), FIELD(minicpm_context_params, exact_kernels),
    FIELD(minicpm_context_params, pad_),
};
static const struct field engine_params_fields[] = {
    FIELD(minicpm_engine_params, size),        FIELD(minicpm_engine_params, n_threads),
    FIELD(minicpm_engine_params, n_batch_max), FIELD(minicpm_engine_params, n_chunk),
    FIELD(minicpm_engine_params, n_ctx),       FIELD(minicpm_engine_params, n_queue_max),
    FIELD(minicpm_engine_params, kv_dtype),    FIELD(minicpm_engine_params, prefix_cache),
    FIELD(minicpm_engine_params, exact_kernels), FIELD(minicpm_engine_params, pad_),
    FIELD(minicpm_engine_params, kv_bytes),
    FIELD(minicpm_engine_params, draft_model),
    FIELD(minicpm_engine_params, draft_num_iter), FIELD(minicpm_engine_params, draft_top_k),
    FIELD(minicpm_engine_params, draft_tree_size), FIELD(minicpm_engine_params, pad1_),
    FIELD(minicpm_engine_params, draft_kv_bytes),
    FIELD(minicpm_engine_params, draft_head),     FIELD(minicpm_engine_params, draft_vocab),
    FIELD(minicpm_engine_params, draft_vocab_size), FIELD(minicpm_engine_params, pad2_),
};
static const struct field sampling_params_fields[] = {
    FIELD(minicpm_sampling_params, size),               FIELD(minicpm_sampling_params, temperature),
    FIELD(minicpm_sampling_params, top_p),              FIELD(minicpm_sampling_params, min_p),
    FIELD(minicpm_sampling_params, top_k),              FIELD(minicpm_sampling_params, repetition_penalty),
    FIELD(minicpm_sampling_params, presence_penalty),   FIELD(minicpm_sampling_params, frequency_penalty),
    FIELD(minicpm_sampling_params, penalty_last_n),     FIELD(minicpm_sampling_params, n_max_tokens),
    FIELD(minicpm_sampling_params, n_top_logprobs),     FIELD(minicpm_sampling_params, logprobs),
    FIELD(minicpm_sampling_params, ignore_eos),         FIELD(minicpm_sampling_params, speculative),
    FIELD(minicpm_sampling_params, masked),
    FIELD(minicpm_sampling_params, seed),
};
static const struct field event_fields[] = {
    FIELD(minicpm_event, token),      FIELD(minicpm_event, finish_reason), FIELD(minicpm_event, logprob),
    FIELD(minicpm_event, n_top),      FIELD(minicpm_event, top_tokens),    FIELD(minicpm_event, top_logprobs),
    FIELD(minicpm_event, t_us),       FIELD(minicpm_event, n_spec_verifies), FIELD(minicpm_event, n_spec_accepted),
};
static const struct field request_info_fields[] = {
    FIELD(minicpm_request_info, size),        FIELD(minicpm_request_info, state),
    FIELD(minicpm_request_info, n_prompt),    FIELD(minicpm_request_info, n_prefilled),
    FIELD(minicpm_request_info, n_generated), FIELD(minicpm_request_info, n_cached),
    FIELD(minicpm_request_info, t_submit_us), FIELD(minicpm_request_info, t_admit_us),
    FIELD(minicpm_request_info, t_first_token_us), FIELD(minicpm_request_info, t_end_us),
};
static const struct field engine_stats_fields[] = {
    FIELD(minicpm_engine_stats, size),            FIELD(minicpm_engine_stats, n_running),
    FIELD(minicpm_engine_stats, n_waiting),       FIELD(minicpm_engine_stats, n_undrained),
    FIELD(minicpm_engine_stats, kv_tokens_used),  FIELD(minicpm_engine_stats, kv_tokens_total),
    FIELD(minicpm_engine_stats, backend),         FIELD(minicpm_engine_stats, backend_name),
    FIELD(minicpm_engine_stats, pad_),            FIELD(minicpm_engine_stats, n_steps),
    FIELD(minicpm_engine_stats, n_prompt_tokens), FIELD(minicpm_engine_stats, n_generated_tokens),
    FIELD(minicpm_engine_stats, n_errors),        FIELD(minicpm_engine_stats, n_prefix_query_tokens),
    FIELD(minicpm_engine_stats, n_prefix_hit_tokens), FIELD(minicpm_engine_stats, n_prefix_evictions),
    FIELD(minicpm_engine_stats, kv_tokens_cached), FIELD(minicpm_engine_stats, prefix_cache),
    FIELD(minicpm_engine_stats, pad1_),
    FIELD(minicpm_engine_stats, n_spec_verifies),
    FIELD(minicpm_engine_stats, n_spec_drafted),  FIELD(minicpm_engine_stats, n_spec_accepted),
    FIELD(minicpm_engine_stats, n_spec_at_depth),
    FIELD(minicpm_engine_stats, t_forward_us), FIELD(minicpm_engine_stats, t_attention_us),
    FIELD(minicpm_engine_stats, n_graph_captures), FIELD(minicpm_engine_stats, n_graph_replays),
    FIELD(minicpm_engine_stats, n_graph_fallbacks),
};

/* Fields whose offset differs from minicpm_struct_offset(), each printed (quiet: only counts). */
static int offset_mismatches(const char * name, const struct field * fields, int n, int quiet) {
    int wrong = 0;
    for (int i = 0; i < n; i++) {
        const int32_t lib = minicpm_struct_offset(name, fields[i].name);
        if (lib == (int32_t) fields[i].offset) continue;
        wrong++;
        if (!quiet) printf("     %s.%s: offset here %zu, library %d\n", name, fields[i].name, fields[i].offset, lib);
    }
    return wrong;
}

/* Every field offset agrees with the library, and the fields tile the struct with no gap. */
static void check_layout(const char * name, const struct field * fields, int n, size_t size) {
    size_t end = 0;
    int    gaps = 0;
    for (int i = 0; i < n; i++) {
        gaps += fields[i].offset != end;
        end = fields[i].offset + fields[i].size;
    }
    CHECK(offset_mismatches(name, fields, n, 0) == 0 && gaps == 0 && end == size,
          "%s: %d field offsets match the library, no padding (%zu bytes)", name, n, size);
}

#define CHECK_LAYOUT(name) check_layout(#name, name##_fields, N_FIELDS(name##_fields), sizeof(struct minicpm_##name))

/* The checker itself: two same-typed fields swapped in a copy of the engine_params table are both caught. */
static void check_swap_detected(void) {
    struct field swapped[N_FIELDS(engine_params_fields)];
    memcpy(swapped, engine_params_fields, sizeof(swapped));
    const size_t t = swapped[2].offset; /* n_batch_max <-> n_chunk, both int32_t */
    swapped[2].offset = swapped[3].offset;
    swapped[3].offset = t;
    const int wrong = offset_mismatches("engine_params", swapped, N_FIELDS(swapped), 1);
    CHECK(wrong == 2, "a table with %s and %s swapped has %d mismatching fields (want 2)", swapped[2].name,
          swapped[3].name, wrong);
}

static void check_status_name(int32_t status, const char * want) {
    const char * got = minicpm_status_name(status);
    CHECK(got != NULL && strcmp(got, want) == 0, "status_name(%d) = \"%s\" (want \"%s\")", status, got ? got : "(null)",
          want);
}

/* A doorbell of type minicpm_notify_fn: never rung here, it proves the signature compiles from C. */
static void notify(void * user_data, uint64_t request_id, int32_t n_ready) {
    (void) user_data;
    (void) request_id;
    (void) n_ready;
}

static void print_last_error(const char * label) {
    char buf[512];
    int32_t n = minicpm_last_error(buf, (int32_t) sizeof(buf));
    printf("     %s: last error (%d bytes): %s\n", label, n, buf);
}

int main(void) {
    CHECK(minicpm_abi_version() == MINICPM_ABI_VERSION, "abi version %u (header %d)", minicpm_abi_version(),
          MINICPM_ABI_VERSION);

    check_size("model_params", sizeof(struct minicpm_model_params));
    check_size("model_info", sizeof(struct minicpm_model_info));
    check_size("context_params", sizeof(struct minicpm_context_params));
    check_size("engine_params", sizeof(struct minicpm_engine_params));
    check_size("sampling_params", sizeof(struct minicpm_sampling_params));
    check_size("event", sizeof(struct minicpm_event));
    check_size("request_info", sizeof(struct minicpm_request_info));
    check_size("engine_stats", sizeof(struct minicpm_engine_stats));
    CHECK(minicpm_struct_size("no_such_struct") == 0, "unknown struct name -> %u",
          minicpm_struct_size("no_such_struct"));
    CHECK(minicpm_struct_size(NULL) == 0, "NULL struct name -> %u", minicpm_struct_size(NULL));

    CHECK_LAYOUT(model_params);
    CHECK_LAYOUT(model_info);
    CHECK_LAYOUT(context_params);
    CHECK_LAYOUT(engine_params);
    CHECK_LAYOUT(sampling_params);
    CHECK_LAYOUT(event);
    CHECK_LAYOUT(request_info);
    CHECK_LAYOUT(engine_stats);
    check_swap_detected();
    CHECK(minicpm_struct_offset("engine_params", "no_such_field") == -1 &&
              minicpm_struct_offset("no_such_struct", "size") == -1 && minicpm_struct_offset(NULL, "size") == -1 &&
              minicpm_struct_offset("engine_params", NULL) == -1,
          "unknown or NULL struct / field -> -1");

    /* Default params: the documented defaults. */
    struct minicpm_model_params mp;
    memset(&mp, 0xff, sizeof(mp));
    minicpm_model_default_params(&mp);
    CHECK(mp.size == sizeof(mp) && mp.use_mmap == 1 && mp.n_threads == 0 && mp.quantize == 0 &&
              mp.quant_group_size == 0 && mp.quantize_head == 1 && mp.sparse == MINICPM_SPARSE_AUTO,
          "model defaults: size %u use_mmap %u n_threads %d quantize %d group %d head %u sparse %d", mp.size,
          mp.use_mmap, mp.n_threads, mp.quantize, mp.quant_group_size, mp.quantize_head, mp.sparse);
    struct minicpm_context_params cp;
    memset(&cp, 0xff, sizeof(cp));
    minicpm_context_default_params(&cp);
    CHECK(cp.size == sizeof(cp) && cp.n_ctx == 0 && cp.n_seq_max == 1 && cp.kv_dtype == MINICPM_DTYPE_F32 &&
              cp.n_chunk == 0 && cp.use_reference == 0,
          "context defaults: size %u n_ctx %d n_seq_max %d kv_dtype %d n_chunk %d use_reference %u", cp.size, cp.n_ctx,
          cp.n_seq_max, cp.kv_dtype, cp.n_chunk, cp.use_reference);
    struct minicpm_engine_params ep;
    minicpm_engine_default_params(&ep);
    CHECK(ep.size == sizeof(ep) && ep.n_batch_max == 64 && ep.n_chunk == 256 && ep.n_queue_max == 256 &&
              ep.kv_dtype == MINICPM_DTYPE_BF16,
          "engine defaults: size %u n_batch_max %d n_chunk %d n_queue_max %d kv_dtype %d", ep.size, ep.n_batch_max,
          ep.n_chunk, ep.n_queue_max, ep.kv_dtype);
    struct minicpm_sampling_params sp;
    minicpm_sampling_default_params(&sp);
    CHECK(sp.size == sizeof(sp) && sp.top_p == 1.0f && sp.min_p == 0.0f && sp.penalty_last_n == -1,
          "sampling defaults: size %u top_p %g min_p %g penalty_last_n %d", sp.size, sp.top_p, sp.min_p,
          sp.penalty_last_n);
    minicpm_model_default_params(NULL);   /* must not crash */
    minicpm_context_default_params(NULL);

    check_status_name(MINICPM_STATUS_OK, "ok");
    check_status_name(MINICPM_STATUS_QUEUE_FULL, "queue_full");
    check_status_name(MINICPM_STATUS_INVALID_ARGUMENT, "invalid_argument");
    check_status_name(MINICPM_STATUS_IO, "io");
    check_status_name(MINICPM_STATUS_BAD_MODEL, "bad_model");
    check_status_name(MINICPM_STATUS_UNSUPPORTED, "unsupported");
    check_status_name(MINICPM_STATUS_OUT_OF_MEMORY, "out_of_memory");
    check_status_name(MINICPM_STATUS_NOT_FOUND, "not_found");
    check_status_name(MINICPM_STATUS_TOO_LARGE, "too_large");
    check_status_name(MINICPM_STATUS_ABI_MISMATCH, "abi_mismatch");
    check_status_name(MINICPM_STATUS_INTERNAL, "internal");
    check_status_name(12345, "unknown");

    /* A missing model directory: IO, *out reset to NULL, a message naming the path. */
    minicpm_model_t * model = (minicpm_model_t *) &mp; /* any non-NULL value: load must reset it */
    int32_t rc = minicpm_model_load("/nonexistent/minicpm-model-dir", NULL, &model);
    char msg[512];
    int32_t len = minicpm_last_error(msg, (int32_t) sizeof(msg));
    CHECK(rc == MINICPM_STATUS_IO && model == NULL, "load of a missing dir: %s, out %s", minicpm_status_name(rc),
          model ? "not NULL" : "NULL");
    CHECK(len > 0 && strstr(msg, "/nonexistent/minicpm-model-dir") != NULL, "its message (%d bytes): %s", len, msg);
    char small[8];
    int32_t len_small = minicpm_last_error(small, (int32_t) sizeof(small));
    CHECK(len_small == len && strlen(small) == 7 && strncmp(small, msg, 7) == 0,
          "truncated copy: returns %d, holds \"%s\"", len_small, small);
    CHECK(minicpm_last_error(NULL, 0) == len, "last_error(NULL, 0) returns the length %d", minicpm_last_error(NULL, 0));

    /* A successful call clears the last error. */
    char info[256];
    int32_t n_info = minicpm_system_info(info, (int32_t) sizeof(info));
    CHECK(n_info >= 0 && minicpm_last_error(NULL, 0) == 0, "system_info: \"%s\" (%d bytes); last error cleared",
          n_info >= 0 ? info : "", n_info);

    /* NULL arguments: an error with a message, never a crash. */
    rc = minicpm_model_load(NULL, NULL, &model);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "model_load(NULL dir): %s", minicpm_status_name(rc));
    print_last_error("model_load(NULL dir)");
    rc = minicpm_model_load("/tmp", NULL, NULL);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "model_load(NULL out): %s", minicpm_status_name(rc));
    struct minicpm_model_info mi;
    mi.size = sizeof(mi);
    rc = minicpm_model_info(NULL, &mi);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "model_info(NULL model): %s", minicpm_status_name(rc));
    minicpm_context_t * ctx = NULL;
    rc = minicpm_context_init(NULL, NULL, &ctx);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT && ctx == NULL, "context_init(NULL model): %s",
          minicpm_status_name(rc));
    print_last_error("context_init(NULL model)");
    int32_t tok = 1;
    float   logits[4];
    rc = minicpm_context_eval(NULL, &tok, NULL, NULL, 1, logits, 4);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "context_eval(NULL ctx): %s", minicpm_status_name(rc));
    rc = minicpm_context_seq_len(NULL, 0);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "context_seq_len(NULL ctx): %s", minicpm_status_name(rc));
    rc = minicpm_context_seq_truncate(NULL, 0, 0);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "context_seq_truncate(NULL ctx): %s", minicpm_status_name(rc));
    minicpm_model_free(NULL);
    minicpm_context_free(NULL);

    /* Engine calls on a NULL engine, with the v2 signatures: user_data first, 64-bit request ids. */
    int user = 0;
    rc = minicpm_engine_set_notify(NULL, notify, &user);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "engine_set_notify(NULL engine): %s", minicpm_status_name(rc));
    const uint64_t big_id = ((uint64_t) 1 << 40) + 1;
    struct minicpm_event ev;
    rc = minicpm_engine_drain(NULL, big_id, &ev, 1);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "engine_drain(NULL engine): %s", minicpm_status_name(rc));
    rc = minicpm_engine_cancel(NULL, big_id);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "engine_cancel(NULL engine): %s", minicpm_status_name(rc));
    uint32_t mask_bits[1] = {1};
    rc = minicpm_engine_set_mask(NULL, big_id, mask_bits, 1);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "engine_set_mask(NULL engine): %s", minicpm_status_name(rc));
    struct minicpm_request_info ri;
    ri.size = sizeof(ri);
    rc = minicpm_engine_request_info(NULL, big_id, &ri);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "engine_request_info(NULL engine): %s", minicpm_status_name(rc));
    uint64_t ids[4];
    rc = minicpm_engine_poll(NULL, ids, 4);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "engine_poll(NULL engine): %s", minicpm_status_name(rc));
    uint64_t id = 7;
    rc = minicpm_engine_submit(NULL, &tok, 1, NULL, NULL, 0, NULL, NULL, 0, &id);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "engine_submit(NULL engine): %s", minicpm_status_name(rc));
    rc = minicpm_model_warnings(NULL, NULL, 0);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "model_warnings(NULL model): %s", minicpm_status_name(rc));
    rc = minicpm_model_save(NULL, "/tmp");
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "model_save(NULL model): %s", minicpm_status_name(rc));
    minicpm_engine_free(NULL);

    /* A params struct of another size (an older or newer caller): ABI mismatch, checked first. */
    mp.size = (uint32_t) sizeof(mp) - 4;
    rc = minicpm_model_load("/nonexistent/minicpm-model-dir", &mp, &model);
    CHECK(rc == MINICPM_STATUS_ABI_MISMATCH, "model_load with params.size %u: %s", mp.size, minicpm_status_name(rc));
    print_last_error("model params size");
    cp.size = (uint32_t) sizeof(cp) + 8;
    rc = minicpm_context_init(NULL, &cp, &ctx);
    CHECK(rc == MINICPM_STATUS_ABI_MISMATCH, "context_init with params.size %u: %s", cp.size, minicpm_status_name(rc));

    int64_t t0 = minicpm_time_us(), t1 = minicpm_time_us();
    CHECK(t0 > 0 && t1 >= t0, "time_us monotonic: %lld then %lld", (long long) t0, (long long) t1);

    printf("%d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
