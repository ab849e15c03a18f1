// Test helpers shared by the native tests: a writer of tiny random-weight MiniCPM4 checkpoints in the exact hub
// layout (config.json + model.safetensors, or shards + model.safetensors.index.json; or the same as torch.save
// pytorch_model.bin files, tests/torch-bin.h), a raw safetensors writer
// for hand-made bad files, temp dirs, and CHECK macros that print every comparison and count failures.
//
//   minicpm_test::tiny_model_spec spec;              // defaults: vocab 512, hidden 64, 2 layers, bf16, tied
//   spec.n_shards = 2;
//   std::string dir = minicpm_test::make_temp_dir("loader");
//   minicpm_test::write_tiny_model(dir, spec);
//   CHECK(x == 3, "x = %d", x);
//   return minicpm_test::finish();                    // non-zero when any CHECK failed
#pragma once

#include "core/backend.h"
#include "core/dtype.h"
#include "core/status.h"
#include "core/tensor.h"
#include "tests/torch-bin.h"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

namespace minicpm_test {

// ---------------------------------------------------------------------------------------------------------------
// checks

inline int & n_checks() { static int n = 0; return n; }
inline int & n_failures() { static int n = 0; return n; }

__attribute__((format(printf, 5, 6)))
inline bool check_impl(bool ok, const char * expr, const char * file, int line, const char * fmt, ...) {
    n_checks()++;
    std::printf("%s ", ok ? "ok  " : "FAIL");
    va_list ap;
    va_start(ap, fmt);
    std::vprintf(fmt, ap);
    va_end(ap);
    if (!ok) {
        n_failures()++;
        std::printf("   [%s:%d: %s]", file, line, expr);
    }
    std::printf("\n");
    std::fflush(stdout);
    return ok;
}

// CHECK(cond, fmt, ...): prints "ok" or "FAIL" with the message (put the measured values in it) and counts failures.
#define CHECK(cond, ...) ::minicpm_test::check_impl(bool(cond), #cond, __FILE__, __LINE__, __VA_ARGS__)

// Prints the summary; use as `return minicpm_test::finish();`.
inline int finish() {
    std::printf("%d checks, %d failed\n", n_checks(), n_failures());
    return n_failures() == 0 && n_checks() > 0 ? 0 : 1;
}

// Shared by the engine tests (test-engine, test-prefix, test-spec): the plain reference ops (those tests check
// scheduling, not kernels), greedy sampling of a fixed length (the random model may produce an EOS id anywhere),
// and the first tokens of a list for messages.
inline minicpm::backend_options reference_ops() {
    minicpm::backend_options o;
    o.reference = true;
    return o;
}

inline minicpm_sampling_params greedy(int32_t n_max_tokens) {
    minicpm_sampling_params s;
    minicpm_sampling_default_params(&s);
    s.temperature = 0.0f;
    s.n_max_tokens = n_max_tokens;
    s.ignore_eos = 1;
    return s;
}

inline std::string str(const std::vector<int32_t> & t) {
    std::string s;
    for (size_t i = 0; i < t.size() && i < 8; ++i) s += (i ? " " : "") + std::to_string(t[i]);
    return s + (t.size() > 8 ? " ..." : "");
}

// Runs fn, which must throw minicpm::error with `status` and a message containing every needle; prints the message.
template <typename F>
bool expect_error(const char * label, int32_t status, std::initializer_list<const char *> needles, F && fn) {
    try {
        fn();
    } catch (const minicpm::error & e) {
        bool has_all = true;
        for (const char * n : needles) has_all = has_all && std::string(e.what()).find(n) != std::string::npos;
        return check_impl(e.status() == status && has_all, "status and message", __FILE__, __LINE__,
                          "%s: status %d (want %d): %s", label, e.status(), status, e.what());
    } catch (const std::exception & e) {
        return check_impl(false, "minicpm::error", __FILE__, __LINE__, "%s: wrong exception type: %s", label, e.what());
    }
    return check_impl(false, "throws", __FILE__, __LINE__, "%s: no error was raised", label);
}

// Element i of a loaded tensor as f32, whatever its dtype.
inline float tensor_value(const minicpm::tensor_desc & t, int64_t i) {
    const uint8_t * p = (const uint8_t *) t.data + size_t(i) * minicpm::dtype_size(t.type);
    if (t.type == minicpm::dtype::f32) {
        float f;
        std::memcpy(&f, p, 4);
        return f;
    }
    const uint16_t h = uint16_t(p[0] | (p[1] << 8));
    return t.type == minicpm::dtype::f16 ? minicpm::f16_to_f32(h) : minicpm::bf16_to_f32(h);
}

// ---------------------------------------------------------------------------------------------------------------
// files

inline std::string make_temp_dir(const std::string & tag) {
    std::string tmpl = (std::filesystem::temp_directory_path() / ("minicpm-" + tag + "-XXXXXX")).string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
    return std::string(buf.data());
}

inline void remove_dir(const std::string & dir) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
}

inline void write_file(const std::string & path, const std::string & bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), std::streamsize(bytes.size()));
    if (!f) throw std::runtime_error("cannot write " + path);
}

inline std::string read_file(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot read " + path);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Adds an InfLLM v2 sparse_config (kernels 32 / 16, one init block, 64-slot blocks) to a generated checkpoint.
inline void add_sparse_config(const std::string & dir, int32_t window, int32_t topk, int32_t dense_len) {
    std::string cfg = read_file(dir + "/config.json");
    cfg.insert(cfg.rfind('}'), ",\n  \"sparse_config\": {\"kernel_size\": 32, \"kernel_stride\": 16, "
                               "\"init_blocks\": 1, \"block_size\": 64, \"window_size\": " + std::to_string(window) +
                               ", \"topk\": " + std::to_string(topk) + ", \"use_nope\": false, \"dense_len\": " +
                               std::to_string(dense_len) + "}\n");
    write_file(dir + "/config.json", cfg);
}

// ---------------------------------------------------------------------------------------------------------------
// raw safetensors writer (for hand-made good and bad files)

struct raw_tensor {
    std::string          name;
    std::string          dtype;  // as written in the header: "BF16", "F16", "F32", "I64", ...
    std::vector<int64_t> shape;
    std::string          bytes;  // little-endian data, normally prod(shape) * element size
};

inline std::string json_escape(const std::string & s) {
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out;
}

// One header entry: the data of consecutive entries is laid out back to back.
struct header_entry {
    std::string          name;
    std::string          dtype;
    std::vector<int64_t> shape;
    uint64_t             nbytes;
};

// The header JSON, padded with spaces so the data section starts at a multiple of 8, as the safetensors library
// does. `metadata` (a JSON object) goes in "__metadata__" when given.
inline std::string safetensors_header_json(const std::vector<header_entry> & entries, const std::string & metadata = "") {
    std::string h = "{";
    if (!metadata.empty()) h += "\"__metadata__\":" + metadata;
    uint64_t off = 0;
    for (const header_entry & e : entries) {
        if (h.size() > 1) h += ",";
        h += "\"" + json_escape(e.name) + "\":{\"dtype\":\"" + e.dtype + "\",\"shape\":[";
        for (size_t i = 0; i < e.shape.size(); i++) h += (i ? "," : "") + std::to_string(e.shape[i]);
        h += "],\"data_offsets\":[" + std::to_string(off) + "," + std::to_string(off + e.nbytes) + "]}";
        off += e.nbytes;
    }
    h += "}";
    while ((8 + h.size()) % 8 != 0) h += ' ';
    return h;
}

inline std::string le64(uint64_t n) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; i++) out[size_t(i)] = char((n >> (8 * i)) & 0xff);
    return out;
}

// 8-byte little-endian header length + header + data.
inline std::string safetensors_bytes(const std::vector<raw_tensor> & tensors, const std::string & metadata = "") {
    std::vector<header_entry> entries;
    for (const raw_tensor & t : tensors) entries.push_back({t.name, t.dtype, t.shape, t.bytes.size()});
    const std::string h = safetensors_header_json(entries, metadata);
    std::string out = le64(h.size()) + h;
    for (const raw_tensor & t : tensors) out += t.bytes;
    return out;
}

// ---------------------------------------------------------------------------------------------------------------
// tiny MiniCPM4 checkpoints

struct tiny_model_spec {
    int32_t n_vocab = 512;
    int32_t n_embd = 64;
    int32_t n_layer = 2;
    int32_t n_head = 4;
    int32_t n_head_kv = 2;
    int32_t n_ff = 128;
    int32_t n_ctx_train = 4096;       // max_position_embeddings
    int32_t n_ctx_orig = 0;           // rope_scaling.original_max_position_embeddings; 0 = n_ctx_train
    float   rms_norm_eps = 1e-5f;
    float   rope_theta = 10000.0f;
    bool    write_rope_theta = true;  // false: omit the key, like the 0.5B config
    float   scale_emb = 12.0f;
    float   scale_depth = 1.4f;
    int32_t dim_model_base = 16;      // logit divisor = n_embd / dim_model_base = 4, as in the 0.5B
    bool    tie_word_embeddings = true;
    bool    write_tie = false;        // false: omit tie_word_embeddings when tied (0.5B style); untied always writes it
    bool    longrope = true;          // rope_scaling longrope with factors of length head_dim / 2
    int32_t bos_token_id = 1;
    std::vector<int32_t> eos_token_ids = {2, 3};

    minicpm::dtype weight_type = minicpm::dtype::bf16;  // embedding, projections, head
    minicpm::dtype norm_type = minicpm::dtype::bf16;    // RMSNorm gains (set f32 for the mixed layout)
    int32_t  n_shards = 1;            // 1: model.safetensors; N > 1: model-0000i-of-0000N.safetensors + index
    bool     torch_bin = false;       // pytorch_model.bin (+ pytorch_model-0000i-of-0000N.bin and its index) instead
    uint64_t seed = 1234;
    float    weight_std = 0.04f;      // matrices; norm gains are 1 +- 0.1
    float    embed_std = 0.04f;

    int32_t head_dim() const { return n_embd / n_head; }
};

// LongRoPE factors of length head_dim / 2, rising from 1 like the shipped ones; deterministic.
inline std::vector<float> tiny_rope_factors(const tiny_model_spec & s) {
    int32_t half = s.head_dim() / 2;
    std::vector<float> f(size_t(half > 0 ? half : 0));
    for (int32_t i = 0; i < half; i++) {
        float t = half > 1 ? float(i) / float(half - 1) : 0.0f;
        f[size_t(i)] = 1.0f + 15.0f * t * t;
    }
    return f;
}

inline std::string tiny_config_json(const tiny_model_spec & s) {
    char buf[64];
    auto num = [&](float v) {  // shortest text that reads back as the same float (1e-05, not 9.99999975e-06)
        for (int prec = 6; prec <= 9; prec++) {
            std::snprintf(buf, sizeof(buf), "%.*g", prec, double(v));
            if (std::strtof(buf, nullptr) == v) break;
        }
        return std::string(buf);
    };
    auto list = [&](const std::vector<float> & v) {
        std::string out = "[";
        for (size_t i = 0; i < v.size(); i++) out += (i ? ", " : "") + num(v[i]);
        return out + "]";
    };
    std::string j = "{\n";
    j += "  \"architectures\": [\"MiniCPMForCausalLM\"],\n";
    j += "  \"model_type\": \"minicpm\",\n";
    j += "  \"bos_token_id\": " + std::to_string(s.bos_token_id) + ",\n";
    j += "  \"eos_token_id\": [";
    for (size_t i = 0; i < s.eos_token_ids.size(); i++) j += (i ? ", " : "") + std::to_string(s.eos_token_ids[i]);
    j += "],\n";
    j += "  \"hidden_act\": \"silu\",\n";
    j += "  \"hidden_size\": " + std::to_string(s.n_embd) + ",\n";
    j += "  \"intermediate_size\": " + std::to_string(s.n_ff) + ",\n";
    j += "  \"max_position_embeddings\": " + std::to_string(s.n_ctx_train) + ",\n";
    j += "  \"num_attention_heads\": " + std::to_string(s.n_head) + ",\n";
    j += "  \"num_hidden_layers\": " + std::to_string(s.n_layer) + ",\n";
    j += "  \"num_key_value_heads\": " + std::to_string(s.n_head_kv) + ",\n";
    j += "  \"rms_norm_eps\": " + num(s.rms_norm_eps) + ",\n";
    if (s.longrope) {
        std::vector<float> f = tiny_rope_factors(s);
        j += "  \"rope_scaling\": {\"rope_type\": \"longrope\", \"long_factor\": " + list(f) + ", \"short_factor\": " +
             list(f) + ", \"original_max_position_embeddings\": " +
             std::to_string(s.n_ctx_orig > 0 ? s.n_ctx_orig : s.n_ctx_train) + "},\n";
    }
    if (s.write_rope_theta) j += "  \"rope_theta\": " + num(s.rope_theta) + ",\n";
    if (!s.tie_word_embeddings || s.write_tie)
        j += std::string("  \"tie_word_embeddings\": ") + (s.tie_word_embeddings ? "true" : "false") + ",\n";
    j += "  \"torch_dtype\": \"bfloat16\",\n";
    j += "  \"vocab_size\": " + std::to_string(s.n_vocab) + ",\n";
    j += "  \"scale_emb\": " + num(s.scale_emb) + ",\n";
    j += "  \"scale_depth\": " + num(s.scale_depth) + ",\n";
    j += "  \"dim_model_base\": " + std::to_string(s.dim_model_base) + "\n";
    j += "}\n";
    return j;
}

enum class tiny_kind { matrix, embed, norm };

struct tiny_tensor_desc {
    std::string          name;
    std::vector<int64_t> shape;
    tiny_kind            kind;
    minicpm::dtype       type;
};

// Every tensor of the checkpoint, in HF order.
inline std::vector<tiny_tensor_desc> tiny_tensor_list(const tiny_model_spec & s) {
    const int64_t H = s.n_embd, I = s.n_ff, V = s.n_vocab, hd = s.head_dim();
    const int64_t q = int64_t(s.n_head) * hd, kv = int64_t(s.n_head_kv) * hd;
    std::vector<tiny_tensor_desc> out;
    out.push_back({"model.embed_tokens.weight", {V, H}, tiny_kind::embed, s.weight_type});
    for (int32_t l = 0; l < s.n_layer; l++) {
        std::string p = "model.layers." + std::to_string(l) + ".";
        out.push_back({p + "input_layernorm.weight", {H}, tiny_kind::norm, s.norm_type});
        out.push_back({p + "self_attn.q_proj.weight", {q, H}, tiny_kind::matrix, s.weight_type});
        out.push_back({p + "self_attn.k_proj.weight", {kv, H}, tiny_kind::matrix, s.weight_type});
        out.push_back({p + "self_attn.v_proj.weight", {kv, H}, tiny_kind::matrix, s.weight_type});
        out.push_back({p + "self_attn.o_proj.weight", {H, q}, tiny_kind::matrix, s.weight_type});
        out.push_back({p + "post_attention_layernorm.weight", {H}, tiny_kind::norm, s.norm_type});
        out.push_back({p + "mlp.gate_proj.weight", {I, H}, tiny_kind::matrix, s.weight_type});
        out.push_back({p + "mlp.up_proj.weight", {I, H}, tiny_kind::matrix, s.weight_type});
        out.push_back({p + "mlp.down_proj.weight", {H, I}, tiny_kind::matrix, s.weight_type});
    }
    out.push_back({"model.norm.weight", {H}, tiny_kind::norm, s.norm_type});
    if (!s.tie_word_embeddings) out.push_back({"lm_head.weight", {V, H}, tiny_kind::embed, s.weight_type});
    return out;
}

inline const char * tiny_dtype_tag(minicpm::dtype t) {
    return t == minicpm::dtype::f32 ? "F32" : t == minicpm::dtype::f16 ? "F16" : "BF16";
}

// Deterministic values for one tensor: seeded by the spec seed and the tensor name, so a tensor's contents do not
// depend on the sharding or the order. Uniform noise scaled to the wanted std (uniform keeps activations bounded).
inline void tiny_tensor_values(const tiny_model_spec & s, const tiny_tensor_desc & d, std::vector<float> & out) {
    uint64_t state = s.seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    for (char c : d.name) state = (state ^ uint8_t(c)) * 0x100000001b3ull;
    auto next = [&state]() {  // splitmix64
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    };
    int64_t n = 1;
    for (int64_t v : d.shape) n *= v;
    out.resize(size_t(n));
    const float std = d.kind == tiny_kind::matrix ? s.weight_std : s.embed_std;
    const float amp = std * std::sqrt(3.0f);  // uniform on [-a, a] has std a / sqrt(3)
    for (int64_t i = 0; i < n; i++) {
        float u = float(next() >> 40) / float(1ull << 24) * 2.0f - 1.0f;  // [-1, 1)
        out[size_t(i)] = d.kind == tiny_kind::norm ? 1.0f + 0.1f * u : amp * u;
    }
}

inline std::string tiny_encode(const std::vector<float> & v, minicpm::dtype t) {
    std::string out(v.size() * minicpm::dtype_size(t), '\0');
    for (size_t i = 0; i < v.size(); i++) {
        if (t == minicpm::dtype::f32) {
            std::memcpy(&out[i * 4], &v[i], 4);
        } else {
            uint16_t h = t == minicpm::dtype::f16 ? minicpm::f32_to_f16(v[i]) : minicpm::f32_to_bf16(v[i]);
            out[i * 2] = char(h & 0xff);
            out[i * 2 + 1] = char(h >> 8);
        }
    }
    return out;
}

// The whole checkpoint as raw tensors in HF order, for tests that edit or corrupt it before writing it with
// safetensors_bytes().
inline std::vector<raw_tensor> tiny_raw_tensors(const tiny_model_spec & s) {
    std::vector<raw_tensor> out;
    std::vector<float> vals;
    for (const tiny_tensor_desc & d : tiny_tensor_list(s)) {
        tiny_tensor_values(s, d, vals);
        out.push_back({d.name, tiny_dtype_tag(d.type), d.shape, tiny_encode(vals, d.type)});
    }
    return out;
}

inline std::string tiny_shard_name(int32_t i, int32_t n, bool torch_bin = false) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), torch_bin ? "pytorch_model-%05d-of-%05d.bin" : "model-%05d-of-%05d.safetensors",
                  i + 1, n);
    return buf;
}

// Writes config.json and the weights into dir (which must exist). Tensors are streamed one at a time, so a
// full-size (e.g. 0.5B-shaped) checkpoint can be written without holding it in memory. Within a file the
// tensors are ordered by element size (largest first), then name, as the safetensors library does, which keeps
// every tensor aligned to its element size.
inline void write_tiny_model(const std::string & dir, const tiny_model_spec & s) {
    write_file(dir + "/config.json", tiny_config_json(s));
    std::vector<tiny_tensor_desc> all = tiny_tensor_list(s);
    const int32_t n_shards = s.n_shards < 1 ? 1 : s.n_shards;
    std::vector<std::vector<tiny_tensor_desc>> shards((size_t) n_shards);
    for (size_t i = 0; i < all.size(); i++) shards[i * size_t(n_shards) / all.size()].push_back(all[i]);

    std::string weight_map;
    uint64_t total = 0;
    std::vector<float> vals;
    for (int32_t k = 0; k < n_shards; k++) {
        std::vector<tiny_tensor_desc> & ts = shards[size_t(k)];
        std::stable_sort(ts.begin(), ts.end(), [](const tiny_tensor_desc & a, const tiny_tensor_desc & b) {
            size_t sa = minicpm::dtype_size(a.type), sb = minicpm::dtype_size(b.type);
            return sa != sb ? sa > sb : a.name < b.name;
        });
        const std::string file = n_shards == 1 ? (s.torch_bin ? "pytorch_model.bin" : "model.safetensors")
                                               : tiny_shard_name(k, n_shards, s.torch_bin);
        std::vector<header_entry> entries;
        for (const tiny_tensor_desc & d : ts) {
            int64_t n = 1;
            for (int64_t v : d.shape) n *= v;
            entries.push_back({d.name, tiny_dtype_tag(d.type), d.shape, uint64_t(n) * minicpm::dtype_size(d.type)});
            total += entries.back().nbytes;
            if (!weight_map.empty()) weight_map += ",\n";
            weight_map += "    \"" + d.name + "\": \"" + file + "\"";
        }
        if (s.torch_bin) {  // one storage per tensor, keys counting from 0 as torch.save numbers them
            torch_bin_writer w(dir + "/" + file, file.substr(0, file.size() - 4));
            for (size_t i = 0; i < ts.size(); ++i) {
                tiny_tensor_values(s, ts[i], vals);
                w.storage(std::to_string(i), tiny_encode(vals, ts[i].type));
                w.tensor({ts[i].name, tiny_dtype_tag(ts[i].type), ts[i].shape, std::to_string(i)});
            }
            w.finish();
            continue;
        }
        const std::string h = safetensors_header_json(entries);

        std::ofstream f(dir + "/" + file, std::ios::binary | std::ios::trunc);
        const std::string len = le64(h.size());
        f.write(len.data(), 8);
        f.write(h.data(), std::streamsize(h.size()));
        for (const tiny_tensor_desc & d : ts) {
            tiny_tensor_values(s, d, vals);
            std::string b = tiny_encode(vals, d.type);
            f.write(b.data(), std::streamsize(b.size()));
        }
        if (!f) throw std::runtime_error("cannot write " + dir + "/" + file);
    }
    if (n_shards > 1) {
        write_file(dir + (s.torch_bin ? "/pytorch_model.bin.index.json" : "/model.safetensors.index.json"), "{\n  \"metadata\": {\"total_size\": " +
                                                              std::to_string(total) + "},\n  \"weight_map\": {\n" +
                                                              weight_map + "\n  }\n}\n");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// EAGLE heads in the published MiniCPM4-8B-Eagle-FRSpec layout (model/eagle.h), random weights

struct tiny_eagle_spec {
    int32_t        n_embd = 64;     // must equal the target's hidden size (tests set other values on purpose)
    int32_t        n_head = 4;
    int32_t        n_head_kv = 2;
    int32_t        n_ff = 128;
    float          rms_norm_eps = 1e-5f;
    minicpm::dtype weight_type = minicpm::dtype::bf16;
    uint64_t       seed = 99;
    float          weight_std = 0.04f;
    int32_t head_dim() const { return n_embd / n_head; }
};

inline std::string tiny_eagle_config_json(const tiny_model_spec & t, const tiny_eagle_spec & e) {
    char eps[32], depth[32];
    std::snprintf(eps, sizeof(eps), "%.9g", double(e.rms_norm_eps));
    std::snprintf(depth, sizeof(depth), "%.9g", double(t.scale_depth));
    return "{\n  \"architectures\": [\"MiniCPMEagle\"],\n  \"model_type\": \"minicpm\",\n"
           "  \"hidden_size\": " + std::to_string(e.n_embd) + ",\n  \"intermediate_size\": " + std::to_string(e.n_ff) +
           ",\n  \"num_attention_heads\": " + std::to_string(e.n_head) + ",\n  \"num_key_value_heads\": " +
           std::to_string(e.n_head_kv) + ",\n  \"num_hidden_layers\": 1,\n  \"rms_norm_eps\": " + eps +
           ",\n  \"vocab_size\": " + std::to_string(t.n_vocab) + ",\n  \"scale_depth\": " + depth + ",\n  \"dim_model_base\": " + std::to_string(t.dim_model_base) + "\n}\n";
}

// fc (with bias), input_norm1/2 and layers.0.*, as the published checkpoint names them (no embedding, no head).
inline std::vector<tiny_tensor_desc> tiny_eagle_tensor_list(const tiny_eagle_spec & e) {
    const int64_t H = e.n_embd, I = e.n_ff, hd = e.head_dim();
    const int64_t q = int64_t(e.n_head) * hd, kv = int64_t(e.n_head_kv) * hd;
    const minicpm::dtype w = e.weight_type;
    return {{"fc.weight", {H, 2 * H}, tiny_kind::matrix, w},
            {"fc.bias", {H}, tiny_kind::matrix, w},
            {"input_norm1.weight", {H}, tiny_kind::norm, w},
            {"input_norm2.weight", {H}, tiny_kind::norm, w},
            {"layers.0.input_layernorm.weight", {H}, tiny_kind::norm, w},
            {"layers.0.self_attn.q_proj.weight", {q, H}, tiny_kind::matrix, w},
            {"layers.0.self_attn.k_proj.weight", {kv, H}, tiny_kind::matrix, w},
            {"layers.0.self_attn.v_proj.weight", {kv, H}, tiny_kind::matrix, w},
            {"layers.0.self_attn.o_proj.weight", {H, q}, tiny_kind::matrix, w},
            {"layers.0.post_attention_layernorm.weight", {H}, tiny_kind::norm, w},
            {"layers.0.mlp.gate_proj.weight", {I, H}, tiny_kind::matrix, w},
            {"layers.0.mlp.up_proj.weight", {I, H}, tiny_kind::matrix, w},
            {"layers.0.mlp.down_proj.weight", {H, I}, tiny_kind::matrix, w}};
}

inline std::vector<raw_tensor> tiny_eagle_raw_tensors(const tiny_eagle_spec & e) {
    tiny_model_spec s;  // only the seed and the spread matter for the values
    s.seed = e.seed;
    s.weight_std = e.weight_std;
    std::vector<raw_tensor> out;
    std::vector<float>      vals;
    for (const tiny_tensor_desc & d : tiny_eagle_tensor_list(e)) {
        tiny_tensor_values(s, d, vals);
        out.push_back({d.name, tiny_dtype_tag(d.type), d.shape, tiny_encode(vals, d.type)});
    }
    return out;
}

// Writes dir/config.json and dir/model.safetensors, or dir/pytorch_model.bin (dir must exist); the tensors are
// held in memory.
inline void write_tiny_eagle(const std::string & dir, const tiny_model_spec & target, const tiny_eagle_spec & e,
                             bool torch_bin = false) {
    write_file(dir + "/config.json", tiny_eagle_config_json(target, e));
    if (!torch_bin) return write_file(dir + "/model.safetensors", safetensors_bytes(tiny_eagle_raw_tensors(e)));
    torch_bin_writer w(dir + "/pytorch_model.bin", "pytorch_model");
    const std::vector<raw_tensor> ts = tiny_eagle_raw_tensors(e);
    for (size_t i = 0; i < ts.size(); ++i) {
        w.storage(std::to_string(i), ts[i].bytes);
        w.tensor({ts[i].name, ts[i].dtype, ts[i].shape, std::to_string(i)});
    }
    w.finish();
}

// The fuzz tests' generator (an LCG step with a murmur-style finaliser): the same inputs on every platform.
struct rng {
    uint64_t s;
    uint64_t next() {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t z = s;
        z = (z ^ (z >> 33)) * 0xff51afd7ed558ccdull;
        return z ^ (z >> 29);
    }
    size_t below(size_t n) { return n == 0 ? 0 : size_t(next() % n); }
};

}  // namespace minicpm_test
