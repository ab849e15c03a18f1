// The library, model and context exports of minicpm.h (the engine and sampling ones are in engine.cpp).
// Every function that can fail goes through guarded(): no exception crosses the C boundary.
#include "minicpm.h"

#include "api/boundary.h"
#include "core/backend.h"
#include "engine/context.h"
#include "model/kv-cache.h"
#include "model/minicpm4.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

using namespace minicpm;

// The shared buffer convention: copy up to cap-1 bytes plus a NUL, return the full length.
static int32_t copy_out(const std::string & text, char * buf, int32_t cap) {
    if (buf && cap > 0) {
        const size_t n = std::min(text.size(), size_t(cap - 1));
        std::memcpy(buf, text.data(), n);
        buf[n] = '\0';
    }
    return int32_t(std::min(text.size(), size_t(INT32_MAX)));
}

static void require(const void * p, const char * what) {
    if (!p) fail(MINICPM_STATUS_INVALID_ARGUMENT, std::string(what) + " is NULL");
}

// ---- library -----------------------------------------------------------------------------------------------

uint32_t minicpm_abi_version(void) { return MINICPM_ABI_VERSION; }

// Not guarded: reading the last error must not clear it.
int32_t minicpm_last_error(char * buf, int32_t cap) { return copy_out(last_error_text(), buf, cap); }

const char * minicpm_status_name(int32_t status) {
    switch (status) {
        case MINICPM_STATUS_OK: return "ok";
        case MINICPM_STATUS_QUEUE_FULL: return "queue_full";
        case MINICPM_STATUS_INVALID_ARGUMENT: return "invalid_argument";
        case MINICPM_STATUS_IO: return "io";
        case MINICPM_STATUS_BAD_MODEL: return "bad_model";
        case MINICPM_STATUS_UNSUPPORTED: return "unsupported";
        case MINICPM_STATUS_OUT_OF_MEMORY: return "out_of_memory";
        case MINICPM_STATUS_NOT_FOUND: return "not_found";
        case MINICPM_STATUS_TOO_LARGE: return "too_large";
        case MINICPM_STATUS_ABI_MISMATCH: return "abi_mismatch";
        case MINICPM_STATUS_INTERNAL: return "internal";
        default: return "unknown";
    }
}

int32_t minicpm_system_info(char * buf, int32_t cap) {
    int32_t n = 0;
    const int32_t rc = guarded([&]() {
        n = copy_out(cpu_features(), buf, cap);
        return MINICPM_STATUS_OK;
    });
    return rc == MINICPM_STATUS_OK ? n : rc;
}

int64_t minicpm_time_us(void) {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// ---- model -------------------------------------------------------------------------------------------------

void minicpm_model_default_params(struct minicpm_model_params * out) {
    if (!out) return;
    std::memset(out, 0, sizeof(*out));
    out->size = sizeof(*out);
    out->n_threads = 0;
    out->use_mmap = 1;
    out->quantize = 0;
    out->quant_group_size = 0;
    out->quantize_head = 1;
    out->cuda_graphs = 1;
}

int32_t minicpm_model_load(const char * dir, const struct minicpm_model_params * params, minicpm_model_t ** out) {
    if (out) *out = nullptr;
    return guarded([&]() {
        MINICPM_CHECK_PARAMS(params, struct minicpm_model_params);
        require(out, "minicpm_model_load: out");
        require(dir, "minicpm_model_load: dir");
        struct minicpm_model_params p;
        minicpm_model_default_params(&p);
        if (params) p = *params;
        if (p.n_threads < 0)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "model params: n_threads " + std::to_string(p.n_threads) + " < 0");
        if (p.quantize != 0 && p.quantize != MINICPM_DTYPE_Q8 && p.quantize != MINICPM_DTYPE_Q4)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "model params: quantize " + std::to_string(p.quantize) +
                                                      " is not 0, MINICPM_DTYPE_Q8 or MINICPM_DTYPE_Q4");
        if (p.quant_group_size < 0 || p.quant_group_size % 32 != 0)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "model params: quant_group_size " +
                                                      std::to_string(p.quant_group_size) +
                                                      " must be 0 (default 128) or a positive multiple of 32");
        model_load_options lo;
        lo.use_mmap = p.use_mmap != 0;
        lo.backend = p.backend;
        lo.quantize = p.quantize;
        lo.quant_group_size = p.quant_group_size == 0 ? 128 : p.quant_group_size;
        lo.quantize_head = p.quantize_head != 0;
        lo.device_memory = p.device_memory;
        lo.cuda_graphs = p.cuda_graphs != 0;
        std::unique_ptr<minicpm_model> m(new minicpm_model());
        lo.sparse = p.sparse;
        m->impl = model::load(dir, lo);
        *out = m.release();
        return MINICPM_STATUS_OK;
    });
}

int32_t minicpm_model_info(const minicpm_model_t * model, struct minicpm_model_info * out) {
    return guarded([&]() {
        require(model, "minicpm_model_info: model");
        require(out, "minicpm_model_info: out");
        MINICPM_CHECK_PARAMS(out, struct minicpm_model_info);
        const model_config &  c = model->impl->config();
        const model_weights & w = model->impl->weights();
        struct minicpm_model_info info;
        std::memset(&info, 0, sizeof(info));
        info.size = sizeof(info);
        info.n_vocab = c.n_vocab;
        info.n_ctx_train = c.n_ctx_train;
        info.n_embd = c.n_embd;
        info.n_layer = c.n_layer;
        info.n_head = c.n_head;
        info.n_head_kv = c.n_head_kv;
        info.n_head_dim = c.n_head_dim;
        info.n_ff = c.n_ff;
        info.bos_token_id = c.bos_token_id;
        // The config parser refuses these; checked again because an overflow here would corrupt the caller.
        if (c.eos_token_ids.size() > MINICPM_MAX_EOS_IDS)
            fail(MINICPM_STATUS_UNSUPPORTED, "model info: " + std::to_string(c.eos_token_ids.size()) +
                                                 " eos ids, at most " + std::to_string(MINICPM_MAX_EOS_IDS) +
                                                 " (MINICPM_MAX_EOS_IDS)");
        info.n_eos = int32_t(c.eos_token_ids.size());
        std::copy(c.eos_token_ids.begin(), c.eos_token_ids.end(), info.eos_token_ids);
        info.weight_dtype = int32_t(w.weight_type);
        info.tied_head = w.head.data == w.embed.data ? 1 : 0;
        info.rms_norm_eps = c.rms_norm_eps;
        info.rope_theta = c.rope_theta;
        info.scale_emb = c.scale_emb;
        info.residual_scale = c.residual_scale();
        info.logit_divisor = c.logit_divisor();
        info.rope_mscale = c.rope_mscale();
        info.n_params = w.n_params;
        info.weight_bytes = w.n_bytes;
        // BF16 is the engine's default KV dtype; the compressed keys of sparse attention are included.
        info.kv_bytes_per_token = kv_pool::bytes_per_block(c, dtype::bf16) / MINICPM_KV_BLOCK_SIZE;
        info.backend = int32_t(model->impl->backend_type());
        info.sparse_config = c.sparse.present ? 1 : 0;
        info.sparse_attention = uint8_t(!c.sparse.enabled                          ? MINICPM_SPARSE_OFF
                                        : c.sparse.variant == sparse_variant::v2 ? MINICPM_SPARSE_V2
                                                                                 : MINICPM_SPARSE_HF);
        info.quantization_config = c.quant.present ? 1 : 0;
        std::snprintf(info.backend_name, sizeof(info.backend_name), "%s",
                      backend_kind_name(model->impl->backend_type()));
        const device_memory_info dm = model->impl->device_memory();
        info.device_memory_free = dm.device_free;
        info.device_memory_total = dm.device_total;
        info.device_arena_bytes = dm.arena;
        info.device_arena_free = dm.arena_free;
        *out = info;
        return MINICPM_STATUS_OK;
    });
}

int32_t minicpm_model_warnings(const minicpm_model_t * model, char * buf, int32_t cap) {
    int32_t n = 0;
    const int32_t rc = guarded([&]() {
        require(model, "minicpm_model_warnings: model");
        n = copy_out(model->impl->warnings(), buf, cap);
        return MINICPM_STATUS_OK;
    });
    return rc == MINICPM_STATUS_OK ? n : rc;
}

int32_t minicpm_model_save(const minicpm_model_t * model, const char * out_dir) {
    return guarded([&]() {
        require(model, "minicpm_model_save: model");
        require(out_dir, "minicpm_model_save: out_dir");
        model->impl->save(out_dir);
        return MINICPM_STATUS_OK;
    });
}

void minicpm_model_free(minicpm_model_t * model) { delete model; }

// ---- context -----------------------------------------------------------------------------------------------

void minicpm_context_default_params(struct minicpm_context_params * out) {
    if (!out) return;
    std::memset(out, 0, sizeof(*out));
    out->size = sizeof(*out);
    out->n_ctx = 0;
    out->n_seq_max = 1;
    out->n_threads = 0;
    out->kv_dtype = MINICPM_DTYPE_F32;
    out->n_chunk = 0;
    out->use_reference = 0;
    out->exact_kernels = 0;
}

int32_t minicpm_context_init(minicpm_model_t * model, const struct minicpm_context_params * params,
                             minicpm_context_t ** out) {
    if (out) *out = nullptr;
    return guarded([&]() {
        MINICPM_CHECK_PARAMS(params, struct minicpm_context_params);
        require(out, "minicpm_context_init: out");
        require(model, "minicpm_context_init: model");
        struct minicpm_context_params p;
        minicpm_context_default_params(&p);
        if (params) p = *params;
        std::unique_ptr<minicpm_context> c(new minicpm_context());
        c->impl.reset(new context(*model->impl, p));
        *out = c.release();
        return MINICPM_STATUS_OK;
    });
}

int32_t minicpm_context_eval(minicpm_context_t * ctx, const int32_t * tokens, const int32_t * seq_ids,
                             const uint8_t * output, int32_t n_tokens, float * logits, int64_t logits_cap) {
    return guarded([&]() {
        require(ctx, "minicpm_context_eval: ctx");
        return ctx->impl->eval(tokens, seq_ids, output, n_tokens, logits, logits_cap);
    });
}

int32_t minicpm_context_seq_len(const minicpm_context_t * ctx, int32_t seq_id) {
    return guarded([&]() {
        require(ctx, "minicpm_context_seq_len: ctx");
        return ctx->impl->seq_len(seq_id);
    });
}

int32_t minicpm_context_seq_truncate(minicpm_context_t * ctx, int32_t seq_id, int32_t n_keep) {
    return guarded([&]() {
        require(ctx, "minicpm_context_seq_truncate: ctx");
        ctx->impl->seq_truncate(seq_id, n_keep);
        return MINICPM_STATUS_OK;
    });
}

void minicpm_context_free(minicpm_context_t * ctx) { delete ctx; }
