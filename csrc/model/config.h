// MiniCPM4 hyper-parameters parsed from a hub config.json, with the defaults the published configs rely on.
#pragma once

#include "core/sparse-attn.h"

#include <cstdint>
#include <string>
#include <vector>

namespace minicpm {

struct model_config {
    int32_t n_vocab = 0;        // vocab_size
    int32_t n_embd = 0;         // hidden_size
    int32_t n_layer = 0;        // num_hidden_layers
    int32_t n_head = 0;         // num_attention_heads
    int32_t n_head_kv = 0;      // num_key_value_heads (default n_head)
    int32_t n_head_dim = 0;     // head_dim, or hidden_size / num_attention_heads when absent
    int32_t n_ff = 0;           // intermediate_size
    int32_t n_ctx_train = 0;    // max_position_embeddings
    float   rms_norm_eps = 1e-6f;
    float   rope_theta = 10000.0f;      // absent in the 0.5B config -> 10000
    float   scale_emb = 1.0f;
    float   scale_depth = 1.0f;
    int32_t dim_model_base = 0;         // 0 when absent -> logit divisor 1
    bool    tie_word_embeddings = true; // absent in the 0.5B config -> tied
    int32_t bos_token_id = -1;
    std::vector<int32_t> eos_token_ids; // eos_token_id may be an int or a list

    // LongRoPE (rope_scaling.rope_type == "longrope"); empty factors = plain RoPE.
    std::vector<float> rope_long_factor;
    std::vector<float> rope_short_factor;
    int32_t n_ctx_orig = 0;             // rope_scaling.original_max_position_embeddings

    // InfLLM v2 sparse attention (config.json "sparse_config", MINICPM4.md 3a); present = false when absent.
    struct sparse_attention {
        bool    present = false;
        int32_t kernel_size = 32, kernel_stride = 16, init_blocks = 1, block_size = 64;
        int32_t window_size = 2048, topk = 64, dense_len = 8192;
        bool    use_nope = false;
        // Whether the engine runs it, and how: on by default when config.json has a sparse_config; a load
        // option (minicpm_model_params.sparse) can turn it off, or on with the model card's values.
        bool           enabled = false;
        sparse_variant variant = sparse_variant::hf;
        sparse_lse     lse = sparse_lse::c1;  // "c1" for hf, "c2" for v2 (INFLLM_V2.md D2)
        sparse_attn_params params() const;
    } sparse;

    // Weight quantization declared by config.json "quantization_config" (GPTQ and kin).
    struct quantization {
        bool        present = false;
        std::string method;  // quant_method, e.g. "gptq"
        int32_t     bits = 0, group_size = 0;
        bool        sym = true, desc_act = false;
        std::string checkpoint_format = "gptq";  // "gptq" (v1: zero points stored minus one) or "gptq_v2"
    } quant;

    // Lines about configuration the engine reads but does not honour yet, each naming what runs instead.
    std::string warnings;

    // Derived, exactly as MINICPM4.md section 1 gives them.
    float residual_scale() const;       // scale_depth / sqrt(n_layer)
    float logit_divisor() const;        // hidden_size / dim_model_base (1 when dim_model_base is absent)
    float rope_mscale() const;          // sqrt(1 + ln(max/orig) / ln(orig)) when max > orig, else 1
};

// Applies a load-time sparse override (enum minicpm_sparse_mode): AUTO keeps config.json, OFF runs dense,
// HF / V2 run InfLLM v2 with that variant (with the model card's sparse_config when config.json has none).
// Throws _INVALID_ARGUMENT for an unknown mode, _UNSUPPORTED when the shape cannot run it.
void apply_sparse_mode(model_config & c, int32_t mode, const std::string & source);
const char * sparse_variant_name(sparse_variant v);

// Parses and validates config.json text; throws minicpm::error(MINICPM_STATUS_BAD_MODEL / _UNSUPPORTED)
// naming the field. `source` is the path used in messages.
model_config parse_config(const std::string & json_text, const std::string & source);
// AutoGPTQ's quantize_config.json (read when config.json has no quantization_config) into c.quant.
void parse_quantize_config(const std::string & json_text, const std::string & source, model_config & c);

}  // namespace minicpm
