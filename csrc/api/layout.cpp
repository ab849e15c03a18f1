// minicpm_struct_size and minicpm_struct_offset: the layout of every ABI struct, so bindings can check each
// field. The lists below name every field in declaration order; the static_asserts prove each list complete
// and each struct free of implicit padding, so a field added to minicpm.h without its list (or a gap the
// compiler fills) breaks the build instead of the bindings.
#include "minicpm.h"

#include <cstddef>
#include <cstring>
#include <iterator>
#include <utility>

namespace {

struct field {
    const char * name;
    size_t       offset;
    size_t       size;
};

// Each field follows the previous one with no gap, and the last one ends at sizeof.
template <size_t N> constexpr bool packed(const field (&fields)[N], size_t size) {
    size_t end = 0;
    for (const field & f : fields) {
        if (f.offset != end) return false;
        end += f.size;
    }
    return end == size;
}

#define MODEL_PARAMS(F, T)                                                                                            \
    F(T, size) F(T, n_threads) F(T, backend) F(T, use_mmap) F(T, pad_) F(T, quantize) F(T, quant_group_size)           \
    F(T, quantize_head) F(T, pad1_) F(T, sparse) F(T, device_memory) F(T, cuda_graphs) F(T, pad2_)
#define MODEL_INFO(F, T)                                                                                              \
    F(T, size) F(T, n_vocab) F(T, n_ctx_train) F(T, n_embd) F(T, n_layer) F(T, n_head) F(T, n_head_kv)                \
    F(T, n_head_dim) F(T, n_ff) F(T, bos_token_id) F(T, n_eos) F(T, eos_token_ids) F(T, weight_dtype)                 \
    F(T, tied_head) F(T, pad_) F(T, rms_norm_eps) F(T, rope_theta) F(T, scale_emb) F(T, residual_scale)               \
    F(T, logit_divisor) F(T, rope_mscale) F(T, pad1_) F(T, n_params) F(T, weight_bytes)                               \
    F(T, kv_bytes_per_token) F(T, backend) F(T, sparse_config) F(T, quantization_config) F(T, sparse_attention)       \
    F(T, pad2_) F(T, backend_name) F(T, device_memory_free) F(T, device_memory_total) F(T, device_arena_bytes)     \
    F(T, device_arena_free)
#define CONTEXT_PARAMS(F, T)                                                                                          \
    F(T, size) F(T, n_ctx) F(T, n_seq_max) F(T, n_threads) F(T, kv_dtype) F(T, n_chunk) F(T, use_reference)           \
    F(T, exact_kernels) F(T, pad_)
#define ENGINE_PARAMS(F, T)                                                                                           \
    F(T, size) F(T, n_threads) F(T, n_batch_max) F(T, n_chunk) F(T, n_ctx) F(T, n_queue_max) F(T, kv_dtype)           \
    F(T, prefix_cache) F(T, exact_kernels) F(T, pad_) F(T, kv_bytes) F(T, draft_model) F(T, draft_num_iter) F(T, draft_top_k)          \
    F(T, draft_tree_size) F(T, pad1_) F(T, draft_kv_bytes) F(T, draft_head) F(T, draft_vocab) F(T, draft_vocab_size) \
    F(T, pad2_)
#define SAMPLING_PARAMS(F, T)                                                                                         \
    F(T, size) F(T, temperature) F(T, top_p) F(T, min_p) F(T, top_k) F(T, repetition_penalty)                         \
    F(T, presence_penalty) F(T, frequency_penalty) F(T, penalty_last_n) F(T, n_max_tokens)                            \
    F(T, n_top_logprobs) F(T, logprobs) F(T, ignore_eos) F(T, speculative) F(T, masked) F(T, seed)
#define EVENT(F, T)                                                                                                   \
    F(T, token) F(T, finish_reason) F(T, logprob) F(T, n_top) F(T, top_tokens) F(T, top_logprobs) F(T, t_us)            \
    F(T, n_spec_verifies) F(T, n_spec_accepted)
#define REQUEST_INFO(F, T)                                                                                            \
    F(T, size) F(T, state) F(T, n_prompt) F(T, n_prefilled) F(T, n_generated) F(T, n_cached) F(T, t_submit_us)            \
    F(T, t_admit_us) F(T, t_first_token_us) F(T, t_end_us)
#define ENGINE_STATS(F, T)                                                                                            \
    F(T, size) F(T, n_running) F(T, n_waiting) F(T, n_undrained) F(T, kv_tokens_used) F(T, kv_tokens_total)           \
    F(T, backend) F(T, backend_name) F(T, pad_) F(T, n_steps) F(T, n_prompt_tokens) F(T, n_generated_tokens)          \
    F(T, n_errors) F(T, n_prefix_query_tokens) F(T, n_prefix_hit_tokens) F(T, n_prefix_evictions)                   \
    F(T, kv_tokens_cached) F(T, prefix_cache) F(T, pad1_) F(T, n_spec_verifies) F(T, n_spec_drafted)                \
    F(T, n_spec_accepted) F(T, n_spec_at_depth) F(T, t_forward_us)          \
    F(T, t_attention_us) F(T, n_graph_captures) F(T, n_graph_replays) F(T, n_graph_fallbacks)

#define FIELD(T, f) {#f, offsetof(T, f), sizeof(std::declval<T &>().f)},
#define ABI_STRUCT(name, LIST)                                                                                        \
    constexpr field name##_fields[] = {LIST(FIELD, struct minicpm_##name)};                                           \
    static_assert(packed(name##_fields, sizeof(struct minicpm_##name)),                                               \
                  "struct minicpm_" #name                                                                             \
                  ": implicit padding, or its field list in layout.cpp is incomplete or out of order");

ABI_STRUCT(model_params, MODEL_PARAMS)
ABI_STRUCT(model_info, MODEL_INFO)
ABI_STRUCT(context_params, CONTEXT_PARAMS)
ABI_STRUCT(engine_params, ENGINE_PARAMS)
ABI_STRUCT(sampling_params, SAMPLING_PARAMS)
ABI_STRUCT(event, EVENT)
ABI_STRUCT(request_info, REQUEST_INFO)
ABI_STRUCT(engine_stats, ENGINE_STATS)

struct abi_struct {
    const char *  name;
    uint32_t      size;
    const field * fields;
    size_t        n_fields;
};

#define STRUCT_ENTRY(name) {#name, sizeof(struct minicpm_##name), name##_fields, std::size(name##_fields)}

constexpr abi_struct k_structs[] = {
    STRUCT_ENTRY(model_params),    STRUCT_ENTRY(model_info), STRUCT_ENTRY(context_params),
    STRUCT_ENTRY(engine_params),   STRUCT_ENTRY(sampling_params), STRUCT_ENTRY(event),
    STRUCT_ENTRY(request_info),    STRUCT_ENTRY(engine_stats),
};

const abi_struct * find_struct(const char * name) {
    if (name == nullptr) return nullptr;
    for (const abi_struct & s : k_structs)
        if (std::strcmp(s.name, name) == 0) return &s;
    return nullptr;
}

}  // namespace

uint32_t minicpm_struct_size(const char * name) {
    const abi_struct * s = find_struct(name);
    return s ? s->size : 0;
}

int32_t minicpm_struct_offset(const char * name, const char * field) {
    const abi_struct * s = find_struct(name);
    if (s == nullptr || field == nullptr) return -1;
    for (size_t i = 0; i < s->n_fields; ++i)
        if (std::strcmp(s->fields[i].name, field) == 0) return int32_t(s->fields[i].offset);
    return -1;
}
