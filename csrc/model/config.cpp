#include "model/config.h"

#include "core/json.h"
#include "minicpm.h"
#include "core/status.h"

#include <cmath>
#include <limits>

namespace minicpm {

namespace {

constexpr size_t k_max_eos_ids = MINICPM_MAX_EOS_IDS;  // what minicpm_model_info can report

class config_reader {
  public:
    config_reader(const json_value & root, const std::string & source) : root_(root), source_(source) {}

    [[noreturn]] void bad(const std::string & field, const std::string & what,
                          int32_t status = MINICPM_STATUS_BAD_MODEL) const {
        fail(status, source_ + ": '" + field + "' " + what);
    }

    static std::string show(const json_value & v) {
        if (v.is_number()) {
            char buf[32];
            std::snprintf(buf, sizeof(buf), "%.17g", v.number);
            return buf;
        }
        if (v.is_string()) return "\"" + v.string + "\"";
        return json_type_name(v.type);
    }

    // A required (or defaulted) integer in [lo, hi].
    int32_t integer(const json_value * v, const std::string & field, int64_t lo, int64_t hi) const {
        if (v == nullptr) bad(field, "is missing");
        if (!v->is_number() || !v->is_int) bad(field, "must be an integer, got " + show(*v));
        if (v->integer < lo || v->integer > hi) {
            bad(field, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + show(*v));
        }
        return int32_t(v->integer);
    }
    int32_t positive(const std::string & field) const {
        return integer(root_.find(field), field, 1, std::numeric_limits<int32_t>::max());
    }
    int32_t positive_or(const std::string & field, int32_t dflt) const {
        const json_value * v = root_.find(field);
        return v == nullptr || v->is_null() ? dflt : integer(v, field, 1, std::numeric_limits<int32_t>::max());
    }

    float positive_real(const json_value * v, const std::string & field) const {
        if (!v->is_number()) bad(field, "must be a number, got " + show(*v));
        const float f = float(v->number);
        if (!(f > 0.0f) || !std::isfinite(f)) bad(field, "must be a positive finite number, got " + show(*v));
        return f;
    }
    float positive_real_or(const std::string & field, float dflt) const {
        const json_value * v = root_.find(field);
        return v == nullptr || v->is_null() ? dflt : positive_real(v, field);
    }

    // An optional string that must equal `want` when present.
    void string_is(const std::string & field, const char * want) const {
        const json_value * v = root_.find(field);
        if (v == nullptr || v->is_null()) return;
        if (!v->is_string()) bad(field, "must be a string, got " + show(*v));
        if (v->string != want) {
            bad(field, "is " + show(*v) + ", only \"" + want + "\" is supported", MINICPM_STATUS_UNSUPPORTED);
        }
    }

    std::vector<float> factors(const json_value & rs, const std::string & key, int32_t want) const {
        const std::string field = "rope_scaling." + key;
        const json_value * v = rs.find(key);
        if (v == nullptr || !v->is_array()) bad(field, v == nullptr ? "is missing" : "must be an array");
        if (int64_t(v->items.size()) != want) {
            bad(field, "has " + std::to_string(v->items.size()) + " factors, expected head_dim / 2 = " +
                           std::to_string(want));
        }
        std::vector<float> out;
        for (size_t i = 0; i < v->items.size(); i++) {
            out.push_back(positive_real(&v->items[i], field + "[" + std::to_string(i) + "]"));
        }
        return out;
    }

    void check_sparse(const model_config & c) const;

  private:
    const json_value &  root_;
    const std::string & source_;
};

// The sparse_config fields every run of InfLLM v2 needs, whether they come from config.json or from the model
// card's values (a load override). `where` prefixes messages.
void check_sparse_impl(const model_config & c, const std::string & where) {
    const model_config::sparse_attention & s = c.sparse;
    auto bad = [&](const std::string & field, const std::string & what, int32_t status) {
        fail(status, where + ": 'sparse_config." + field + "' " + what);
    };
    if (s.block_size != MINICPM_KV_BLOCK_SIZE)
        bad("block_size", "is " + std::to_string(s.block_size) + "; the KV cache blocks are " +
                              std::to_string(MINICPM_KV_BLOCK_SIZE) + " tokens",
            MINICPM_STATUS_UNSUPPORTED);
    if (s.kernel_stride > s.kernel_size)
        bad("kernel_stride", "(" + std::to_string(s.kernel_stride) + ") exceeds kernel_size (" +
                                 std::to_string(s.kernel_size) + ")",
            MINICPM_STATUS_BAD_MODEL);
    if (s.window_size % s.block_size != 0)
        bad("window_size", "(" + std::to_string(s.window_size) + ") must be a multiple of block_size",
            MINICPM_STATUS_BAD_MODEL);
    if (s.block_size % s.kernel_stride != 0)
        bad("kernel_stride", "(" + std::to_string(s.kernel_stride) + ") must divide block_size (" +
                                 std::to_string(s.block_size) + "): the block max-pool is kernels per block + 1",
            MINICPM_STATUS_UNSUPPORTED);
    if (s.use_nope)
        bad("use_nope", "is true: compressing keys without RoPE is not supported (MiniCPM4 uses false)",
            MINICPM_STATUS_UNSUPPORTED);
}

// sparse_config: every field is validated; present means InfLLM v2 runs ("hf" variant) unless a load option
// turns it off.
void config_reader::check_sparse(const model_config & c) const { check_sparse_impl(c, source_); }

void parse_sparse_config(const config_reader & r, const json_value & root, model_config & c) {
    const json_value * sc = root.find("sparse_config");
    if (sc == nullptr || sc->is_null()) return;
    if (!sc->is_object()) r.bad("sparse_config", "must be an object or null");
    model_config::sparse_attention & s = c.sparse;
    s.present = true;
    auto field = [&](const char * key, int32_t & out, int64_t lo) {
        const json_value * v = sc->find(key);
        if (v != nullptr && !v->is_null())
            out = r.integer(v, std::string("sparse_config.") + key, lo, std::numeric_limits<int32_t>::max());
    };
    field("kernel_size", s.kernel_size, 1);
    field("kernel_stride", s.kernel_stride, 1);
    field("init_blocks", s.init_blocks, 0);
    field("block_size", s.block_size, 1);
    field("window_size", s.window_size, 0);
    field("topk", s.topk, 1);
    field("dense_len", s.dense_len, 0);
    if (const json_value * v = sc->find("use_nope"); v != nullptr && !v->is_null()) {
        if (!v->is_bool()) r.bad("sparse_config.use_nope", "must be true or false, got " + config_reader::show(*v));
        s.use_nope = v->boolean;
    }
    r.check_sparse(c);
    s.enabled = true;
}

// quantization_config (config.json) or quantize_config.json: GPTQ int4 (AutoGPTQ layout, checkpoint_format
// "gptq" = v1 zero points stored minus one, or "gptq_v2"), symmetric or not, group size or -1 (per channel),
// desc_act with g_idx. Anything else is refused naming the field. The tensors are checked by the loader.
void parse_quant_object(const config_reader & r, const json_value & qc, const std::string & where, model_config & c) {
    if (!qc.is_object()) r.bad(where, "must be an object or null");
    model_config::quantization & q = c.quant;
    q.present = true;
    const std::string f = where + ".";
    if (const json_value * m = qc.find("quant_method"); m != nullptr && !m->is_null()) {
        if (!m->is_string()) r.bad(f + "quant_method", "must be a string, got " + config_reader::show(*m));
        q.method = m->string;
    }
    if (q.method.empty()) q.method = "gptq";  // quantize_config.json of AutoGPTQ names no method
    if (const json_value * b = qc.find("bits"); b != nullptr && !b->is_null())
        q.bits = r.integer(b, f + "bits", 1, 16);
    if (const json_value * g = qc.find("group_size"); g != nullptr && !g->is_null())
        q.group_size = r.integer(g, f + "group_size", -1, std::numeric_limits<int32_t>::max());
    if (const json_value * v = qc.find("sym"); v != nullptr && !v->is_null()) {
        if (!v->is_bool()) r.bad(f + "sym", "must be true or false, got " + config_reader::show(*v));
        q.sym = v->boolean;
    }
    if (const json_value * v = qc.find("desc_act"); v != nullptr && !v->is_null()) {
        if (!v->is_bool()) r.bad(f + "desc_act", "must be true or false, got " + config_reader::show(*v));
        q.desc_act = v->boolean;
    }
    if (const json_value * v = qc.find("checkpoint_format"); v != nullptr && !v->is_null()) {
        if (!v->is_string()) r.bad(f + "checkpoint_format", "must be a string, got " + config_reader::show(*v));
        q.checkpoint_format = v->string;
    }
    if (q.method == "minicpm_q8") {  // the project's own int8 (model/save.h)
        if (q.bits != 8)
            r.bad(f + "bits", "is " + std::to_string(q.bits) + "; minicpm_q8 is 8-bit", MINICPM_STATUS_UNSUPPORTED);
        if (q.group_size <= 0) r.bad(f + "group_size", "must be positive for minicpm_q8");
        return;
    }
    if (q.method != "gptq")
        r.bad(f + "quant_method", "is \"" + q.method + "\"; only \"gptq\" (4-bit, AutoGPTQ layout) and \"minicpm_q8\" are supported",
              MINICPM_STATUS_UNSUPPORTED);
    if (q.bits != 4)
        r.bad(f + "bits", "is " + std::to_string(q.bits) + "; only 4-bit GPTQ checkpoints are supported",
              MINICPM_STATUS_UNSUPPORTED);
    if (q.group_size == 0 || q.group_size < -1)
        r.bad(f + "group_size", "must be -1 (per channel) or positive, got " + std::to_string(q.group_size));
    if (q.checkpoint_format != "gptq" && q.checkpoint_format != "gptq_v2")
        r.bad(f + "checkpoint_format", "is \"" + q.checkpoint_format + "\"; \"gptq\" or \"gptq_v2\" are supported",
              MINICPM_STATUS_UNSUPPORTED);
}

void parse_quantization_config(const config_reader & r, const json_value & root, model_config & c) {
    const json_value * qc = root.find("quantization_config");
    if (qc == nullptr || qc->is_null()) return;
    parse_quant_object(r, *qc, "quantization_config", c);
}

}  // namespace

model_config parse_config(const std::string & json_text, const std::string & source) {
    const json_value root = json_parse(json_text.data(), json_text.size(), source);
    if (!root.is_object()) fail(MINICPM_STATUS_BAD_MODEL, source + ": the top level must be a JSON object");
    config_reader r(root, source);
    model_config c;

    if (const json_value * a = root.find("architectures"); a != nullptr && !a->is_null()) {
        bool found = false;
        if (!a->is_array()) r.bad("architectures", "must be an array of strings");
        for (const json_value & s : a->items) found = found || (s.is_string() && s.string == "MiniCPMForCausalLM");
        if (!found) r.bad("architectures", "does not list MiniCPMForCausalLM", MINICPM_STATUS_UNSUPPORTED);
    }
    r.string_is("model_type", "minicpm");
    r.string_is("hidden_act", "silu");

    // Sizes are bounded before anything is allocated from them: a hostile config.json (num_hidden_layers 1e9,
    // max_position_embeddings 2^31-1) is refused naming the field instead of failing later as "out of memory".
    // The bounds are far above any MiniCPM (8B: 32 layers, 4096 wide, 73448 vocab, 32768 positions).
    auto sized = [&](const char * field, int64_t hi) { return r.integer(root.find(field), field, 1, hi); };
    c.n_vocab = sized("vocab_size", int64_t(1) << 22);
    c.n_embd = sized("hidden_size", int64_t(1) << 16);
    c.n_layer = sized("num_hidden_layers", 1024);
    c.n_head = sized("num_attention_heads", 1024);
    if (const json_value * kv = root.find("num_key_value_heads"); kv == nullptr || kv->is_null()) {
        c.n_head_kv = c.n_head;
    } else {
        c.n_head_kv = r.integer(kv, "num_key_value_heads", 1, 1024);
    }
    c.n_ff = sized("intermediate_size", int64_t(1) << 18);
    c.n_ctx_train = sized("max_position_embeddings", int64_t(1) << 21);
    if (c.n_head % c.n_head_kv != 0) {
        r.bad("num_key_value_heads", "(" + std::to_string(c.n_head_kv) + ") must divide num_attention_heads (" +
                                         std::to_string(c.n_head) + ")");
    }
    if (root.find("head_dim") != nullptr && !root.find("head_dim")->is_null()) {
        c.n_head_dim = r.positive("head_dim");
    } else {
        if (c.n_embd % c.n_head != 0) {
            r.bad("hidden_size", "(" + std::to_string(c.n_embd) + ") is not a multiple of num_attention_heads (" +
                                     std::to_string(c.n_head) + ") and head_dim is not given");
        }
        c.n_head_dim = c.n_embd / c.n_head;
    }
    if (c.n_head_dim % 2 != 0) {
        r.bad("head_dim", "must be even for rotary embeddings, got " + std::to_string(c.n_head_dim));
    }

    c.rms_norm_eps = r.positive_real_or("rms_norm_eps", c.rms_norm_eps);
    c.rope_theta = r.positive_real_or("rope_theta", c.rope_theta);
    c.scale_emb = r.positive_real_or("scale_emb", c.scale_emb);
    c.scale_depth = r.positive_real_or("scale_depth", c.scale_depth);
    c.dim_model_base = r.positive_or("dim_model_base", 0);

    if (const json_value * t = root.find("tie_word_embeddings"); t != nullptr && !t->is_null()) {
        if (!t->is_bool()) r.bad("tie_word_embeddings", "must be true or false, got " + config_reader::show(*t));
        c.tie_word_embeddings = t->boolean;
    }

    if (const json_value * b = root.find("bos_token_id"); b != nullptr && !b->is_null()) {
        c.bos_token_id = r.integer(b, "bos_token_id", 0, c.n_vocab - 1);
    }
    if (const json_value * e = root.find("eos_token_id"); e != nullptr && !e->is_null()) {
        if (e->is_array()) {
            if (e->items.size() > k_max_eos_ids) {
                r.bad("eos_token_id",
                      "lists " + std::to_string(e->items.size()) + " ids, at most " + std::to_string(k_max_eos_ids) +
                          " (MINICPM_MAX_EOS_IDS) are supported",
                      MINICPM_STATUS_UNSUPPORTED);
            }
            for (size_t i = 0; i < e->items.size(); i++) {
                c.eos_token_ids.push_back(
                    r.integer(&e->items[i], "eos_token_id[" + std::to_string(i) + "]", 0, c.n_vocab - 1));
            }
        } else {
            c.eos_token_ids.push_back(r.integer(e, "eos_token_id", 0, c.n_vocab - 1));
        }
    }

    if (const json_value * rs = root.find("rope_scaling"); rs != nullptr && !rs->is_null()) {
        if (!rs->is_object()) r.bad("rope_scaling", "must be an object or null");
        const json_value * type = rs->find("rope_type");
        if (type == nullptr) type = rs->find("type");  // older transformers spelling
        if (type == nullptr || !type->is_string()) r.bad("rope_scaling.rope_type", "is missing or not a string");
        if (type->string == "longrope") {
            const int32_t half = c.n_head_dim / 2;
            c.rope_long_factor = r.factors(*rs, "long_factor", half);
            c.rope_short_factor = r.factors(*rs, "short_factor", half);
            c.n_ctx_orig = r.integer(rs->find("original_max_position_embeddings"),
                                     "rope_scaling.original_max_position_embeddings", 1,
                                     std::numeric_limits<int32_t>::max());
        } else if (type->string != "default") {
            r.bad("rope_scaling.rope_type", "is \"" + type->string + "\", only \"longrope\" is supported",
                  MINICPM_STATUS_UNSUPPORTED);
        }
    }
    parse_sparse_config(r, root, c);
    parse_quantization_config(r, root, c);
    return c;
}

void parse_quantize_config(const std::string & json_text, const std::string & source, model_config & c) {
    const json_value root = json_parse(json_text.data(), json_text.size(), source);
    config_reader    r(root, source);
    parse_quant_object(r, root, "quantize_config", c);
}

void check_sparse_fields(const model_config & c, const std::string & where) { check_sparse_impl(c, where); }

const char * sparse_variant_name(sparse_variant v) { return v == sparse_variant::v2 ? "v2" : "hf"; }

sparse_attn_params model_config::sparse_attention::params() const {
    sparse_attn_params p;
    p.kernel_size = kernel_size;
    p.kernel_stride = kernel_stride;
    p.init_blocks = init_blocks;
    p.window_blocks = window_size / block_size;
    p.topk = topk;
    p.dense_len = dense_len;
    p.variant = variant;
    p.lse = lse;
    return p;
}

void apply_sparse_mode(model_config & c, int32_t mode, const std::string & source) {
    model_config::sparse_attention & s = c.sparse;
    switch (mode) {
        case MINICPM_SPARSE_AUTO: return;
        case MINICPM_SPARSE_OFF: s.enabled = false; return;
        case MINICPM_SPARSE_HF:
        case MINICPM_SPARSE_V2: break;
        default:
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "model params: sparse must be a minicpm_sparse_mode (0 auto, 1 off, "
                                                  "2 hf, 3 v2), got " + std::to_string(mode));
    }
    // Without a sparse_config the model card's values apply (MINICPM4.md 3a); they are the struct defaults.
    check_sparse_fields(c, source + " (sparse attention requested at load)");
    s.enabled = true;
    s.variant = mode == MINICPM_SPARSE_V2 ? sparse_variant::v2 : sparse_variant::hf;
    s.lse = mode == MINICPM_SPARSE_V2 ? sparse_lse::c2 : sparse_lse::c1;
}

float model_config::residual_scale() const { return float(double(scale_depth) / std::sqrt(double(n_layer))); }

float model_config::logit_divisor() const {
    return dim_model_base > 0 ? float(double(n_embd) / double(dim_model_base)) : 1.0f;
}

float model_config::rope_mscale() const {
    if (n_ctx_orig <= 1 || n_ctx_train <= n_ctx_orig) return 1.0f;
    const double s = double(n_ctx_train) / double(n_ctx_orig);
    return float(std::sqrt(1.0 + std::log(s) / std::log(double(n_ctx_orig))));
}

}  // namespace minicpm
