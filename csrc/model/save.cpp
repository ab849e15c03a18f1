#include "model/save.h"

#include "core/json.h"
#include "core/status.h"
#include "cpu/qpack.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

namespace minicpm {

namespace {

struct out_tensor {
    std::string          name, dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
};

template <typename T> std::vector<uint8_t> as_bytes(const std::vector<T> & v) {
    std::vector<uint8_t> b(v.size() * sizeof(T));
    if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
    return b;
}

std::string json_escape(const std::string & s) {
    std::string o = "\"";
    for (const char ch : s) {
        const unsigned char u = (unsigned char) ch;
        if (ch == '"' || ch == '\\') o += '\\', o += ch;
        else if (u < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", u);
            o += buf;
        } else o += ch;
    }
    return o + "\"";
}

void json_write(std::ostringstream & o, const json_value & v, int indent) {
    const std::string pad(size_t(indent + 2), ' '), end(size_t(indent), ' ');
    switch (v.type) {
        case json_type::null: o << "null"; break;
        case json_type::boolean: o << (v.boolean ? "true" : "false"); break;
        case json_type::number:
            if (v.is_int) o << v.integer;
            else {
                char buf[32];
                std::snprintf(buf, sizeof buf, "%.17g", v.number);
                o << buf;
            }
            break;
        case json_type::string: o << json_escape(v.string); break;
        case json_type::array:
            o << "[";
            for (size_t i = 0; i < v.items.size(); i++) {
                o << (i ? ", " : "");
                json_write(o, v.items[i], indent + 2);
            }
            o << "]";
            break;
        case json_type::object:
            o << "{";
            for (size_t i = 0; i < v.members.size(); i++) {
                o << (i ? ",\n" : "\n") << pad << json_escape(v.members[i].first) << ": ";
                json_write(o, v.members[i].second, indent + 2);
            }
            o << (v.members.empty() ? "}" : "\n" + end + "}");
            break;
    }
}

json_value jv_str(const std::string & s) { json_value v; v.type = json_type::string; v.string = s; return v; }
json_value jv_int(int64_t i) { json_value v; v.type = json_type::number; v.is_int = true; v.integer = i; v.number = double(i); return v; }
json_value jv_bool(bool b) { json_value v; v.type = json_type::boolean; v.boolean = b; return v; }

const char * plain_dtype(dtype t) {
    switch (t) {
        case dtype::f32: return "F32";
        case dtype::f16: return "F16";
        case dtype::bf16: return "BF16";
        default: return nullptr;
    }
}

// A quantized matrix's stored rows: in place, or read back from the packed copy when the CPU backend dropped
// them (core/tensor.h); the packing is lossless, so the file is the same either way.
const uint8_t * stored_rows(const tensor_desc & d, std::vector<uint8_t> & tmp) {
    if (d.data != nullptr || d.packed == nullptr) return (const uint8_t *) d.data;
    tmp.resize(d.data_bytes());
    qunpack_rows(d, 0, d.rows, tmp.data());
    return tmp.data();
}

class writer {
  public:
    std::vector<out_tensor> tensors;
    dtype   fmt = dtype::f32;  // q8 or q4, from the first quantized matrix
    int32_t group = 0;         // quantization_config.group_size
    bool    any_zero_point_zero = false, all_sym = true, any_perm = false, head_quantized = false;

    void plain(const std::string & name, const tensor_desc & d, bool vector) {
        const char * dt = plain_dtype(d.type);
        if (dt == nullptr) fail(MINICPM_STATUS_UNSUPPORTED, name + ": cannot be written as a plain tensor");
        const size_t n = size_t(d.rows * d.cols) * dtype_size(d.type);
        out_tensor t{name, dt, vector ? std::vector<int64_t>{d.cols} : std::vector<int64_t>{d.rows, d.cols}, {}};
        t.bytes.assign((const uint8_t *) d.data, (const uint8_t *) d.data + n);
        tensors.push_back(std::move(t));
    }

    // A matrix: prefix.weight when plain, else the quantized parts of the model's format.
    void matrix(const std::string & prefix, const tensor_desc & d) {
        if (!d.quantized()) return plain(prefix + ".weight", d, false);
        if (fmt == dtype::f32) fmt = d.type, group = d.group_size;
        if (d.type != fmt)
            fail(MINICPM_STATUS_UNSUPPORTED, prefix + ": " + dtype_name(d.type) + " beside " + dtype_name(fmt) +
                                                 " matrices; one quantized format per checkpoint");
        if (d.scale_type != dtype::f16) fail(MINICPM_STATUS_UNSUPPORTED, prefix + ": scales are not f16");
        const int64_t N = d.rows, K = d.cols, G = d.n_groups();
        if (d.type == dtype::q8) return q8(prefix, d, N, K, G);
        q4(prefix, d, N, K, G);
    }

  private:
    void q8(const std::string & prefix, const tensor_desc & d, int64_t N, int64_t K, int64_t G) {
        if (d.perm != nullptr) fail(MINICPM_STATUS_UNSUPPORTED, prefix + ": q8 with a g_idx permutation");
        if (std::min<int64_t>(group, K) != d.group_size)
            fail(MINICPM_STATUS_UNSUPPORTED, prefix + ": group size " + std::to_string(d.group_size) +
                                                 " differs from the checkpoint's " + std::to_string(group));
        out_tensor q{prefix + ".qweight", "I8", {N, K}, {}};
        std::vector<uint8_t> tmp;
        const uint8_t *      data = stored_rows(d, tmp);
        q.bytes.assign(data, data + size_t(N * K));
        out_tensor s{prefix + ".scales", "F16", {N, G}, {}};
        s.bytes.assign((const uint8_t *) d.scales, (const uint8_t *) d.scales + size_t(N * G) * 2);
        tensors.push_back(std::move(q));
        tensors.push_back(std::move(s));
    }

    void q4(const std::string & prefix, const tensor_desc & d, int64_t N, int64_t K, int64_t G) {
        if (K % 8 != 0 || N % 8 != 0 || d.group_size != group || K % group != 0)
            fail(MINICPM_STATUS_UNSUPPORTED,
                 prefix + ": [" + std::to_string(N) + ", " + std::to_string(K) + "] with group " +
                     std::to_string(d.group_size) + " does not fit GPTQ (both multiples of 8, in features a multiple "
                     "of the checkpoint's group size " + std::to_string(group) + "); choose another --quant-group");
        // Row n's nibbles k8*8 .. k8*8+7 are, byte for byte, GPTQ's word [k8][n]: a transpose of 32-bit words.
        std::vector<uint8_t> tmp;
        const uint8_t *      nib = stored_rows(d, tmp);
        const int64_t        K8 = K / 8;
        std::vector<int32_t> qweight(size_t(K8 * N), 0);
        for (int64_t k0 = 0; k0 < K8; k0 += 32)
            for (int64_t n0 = 0; n0 < N; n0 += 32)
                for (int64_t n = n0; n < std::min(N, n0 + 32); ++n)
                    for (int64_t k8 = k0; k8 < std::min(K8, k0 + 32); ++k8)
                        std::memcpy(&qweight[size_t(k8 * N + n)], nib + (n * K8 + k8) * 4, 4);
        std::vector<uint16_t> scales(size_t(G * N));
        const uint16_t * s = (const uint16_t *) d.scales;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t g = 0; g < G; ++g) scales[size_t(g * N + n)] = s[n * G + g];
        // zero points as is for now; the stored form (v1: minus one) is decided once every tensor is seen
        std::vector<int32_t> zeros(size_t(G * N), 8);
        if (d.zeros != nullptr)
            for (int64_t n = 0; n < N; ++n)
                for (int64_t g = 0; g < G; ++g) {
                    const int32_t z = d.zeros[n * G + g];
                    zeros[size_t(g * N + n)] = z;
                    all_sym = all_sym && z == 8;
                    any_zero_point_zero = any_zero_point_zero || z == 0;
                }
        std::vector<int32_t> g_idx(static_cast<size_t>(K));
        for (int64_t k = 0; k < K; ++k) g_idx[size_t(k)] = d.perm ? d.perm[k] : int32_t(k / group);
        any_perm = any_perm || d.perm != nullptr;
        tensors.push_back({prefix + ".qweight", "I32", {K / 8, N}, as_bytes(qweight)});
        tensors.push_back({prefix + ".qzeros", "I32", {G, N}, as_bytes(zeros)});  // packed in finish()
        tensors.push_back({prefix + ".scales", "F16", {G, N}, as_bytes(scales)});
        tensors.push_back({prefix + ".g_idx", "I32", {K}, as_bytes(g_idx)});
    }

  public:
    // Packs the q4 zero points eight per int32 along N: v1 ("gptq", zero - 1) unless a zero point is 0, which v1
    // cannot hold (it would read back as 16); then gptq_v2 (as is).
    void finish() {
        if (fmt != dtype::q4) return;
        const int32_t minus = any_zero_point_zero ? 0 : 1;
        for (out_tensor & t : tensors) {
            if (t.name.size() < 7 || t.name.compare(t.name.size() - 7, 7, ".qzeros") != 0) continue;
            const int64_t G = t.shape[0], N = t.shape[1];
            const int32_t * z = (const int32_t *) t.bytes.data();
            std::vector<int32_t> packed(size_t(G * (N / 8)), 0);
            for (int64_t g = 0; g < G; ++g)
                for (int64_t n = 0; n < N; ++n)
                    packed[size_t(g * (N / 8) + n / 8)] |= int32_t(uint32_t(z[g * N + n] - minus) << (4 * (n % 8)));
            t.shape = {G, N / 8};
            t.bytes = as_bytes(packed);
        }
    }

    json_value quantization_config() const {
        json_value q;
        q.type = json_type::object;
        if (fmt == dtype::q8) {
            q.members = {{"quant_method", jv_str("minicpm_q8")}, {"bits", jv_int(8)}, {"group_size", jv_int(group)},
                         {"sym", jv_bool(true)}, {"lm_head", jv_bool(head_quantized)}};
        } else {
            q.members = {{"quant_method", jv_str("gptq")}, {"bits", jv_int(4)}, {"group_size", jv_int(group)},
                         {"desc_act", jv_bool(any_perm)}, {"sym", jv_bool(all_sym)}, {"static_groups", jv_bool(false)},
                         {"true_sequential", jv_bool(true)}, {"lm_head", jv_bool(head_quantized)},
                         {"checkpoint_format", jv_str(any_zero_point_zero ? "gptq_v2" : "gptq")}};
        }
        return q;
    }

    void write_safetensors(const std::string & path) const {
        std::ostringstream h;
        h << "{\"__metadata__\":{\"format\":\"pt\",\"quantized_by\":\"minicpm-edge\"}";
        uint64_t off = 0;
        for (const out_tensor & t : tensors) {
            h << "," << json_escape(t.name) << ":{\"dtype\":\"" << t.dtype << "\",\"shape\":[";
            for (size_t i = 0; i < t.shape.size(); i++) h << (i ? "," : "") << t.shape[i];
            h << "],\"data_offsets\":[" << off << "," << off + t.bytes.size() << "]}";
            off += t.bytes.size();
        }
        h << "}";
        std::string header = h.str();
        while ((header.size() + 8) % 64 != 0) header += ' ';  // aligned data section
        std::ofstream f(path, std::ios::binary | std::ios::trunc);
        if (!f) fail(MINICPM_STATUS_IO, path + ": cannot create: " + std::strerror(errno));
        const uint64_t n = header.size();
        uint8_t len[8];
        for (int i = 0; i < 8; i++) len[i] = uint8_t(n >> (8 * i));
        f.write((const char *) len, 8);
        f.write(header.data(), std::streamsize(header.size()));
        for (const out_tensor & t : tensors) f.write((const char *) t.bytes.data(), std::streamsize(t.bytes.size()));
        if (!f.flush()) fail(MINICPM_STATUS_IO, path + ": write failed: " + std::strerror(errno));
    }
};

std::string read_all(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(MINICPM_STATUS_IO, path + ": cannot open: " + std::strerror(errno));
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

}  // namespace

void save_quantized(const model_weights & w, const model_config & c, const std::string & src_dir,
                    const std::string & out_dir) {
    writer wr;
    const bool tied = w.head.data == w.embed.data;
    for (size_t l = 0; l < w.layers.size(); ++l) {
        const layer_weights & L = w.layers[l];
        const std::string     p = "model.layers." + std::to_string(l) + ".";
        wr.plain(p + "input_layernorm.weight", L.attn_norm, true);
        wr.plain(p + "post_attention_layernorm.weight", L.ffn_norm, true);
        wr.matrix(p + "self_attn.q_proj", L.wq);
        wr.matrix(p + "self_attn.k_proj", L.wk);
        wr.matrix(p + "self_attn.v_proj", L.wv);
        wr.matrix(p + "self_attn.o_proj", L.wo);
        wr.matrix(p + "mlp.gate_proj", L.w_gate);
        wr.matrix(p + "mlp.up_proj", L.w_up);
        wr.matrix(p + "mlp.down_proj", L.w_down);
    }
    if (wr.fmt == dtype::f32)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "save: the model's projections are not quantized; load it with "
                                              "quantize q8 or q4 first");
    wr.matrix("model.embed_tokens", w.embed);  // quantized when tied and the head was quantized
    wr.plain("model.norm.weight", w.norm, true);
    if (!tied) wr.matrix("lm_head", w.head);
    wr.head_quantized = w.head.quantized();
    wr.finish();

    const std::string cfg_path = src_dir + "/config.json";
    const std::string text = read_all(cfg_path);
    json_value root = json_parse(text.data(), text.size(), cfg_path);
    bool replaced = false;
    for (auto & m : root.members)
        if (m.first == "quantization_config") m.second = wr.quantization_config(), replaced = true;
    if (!replaced) root.members.emplace_back("quantization_config", wr.quantization_config());
    (void) c;
    wr.write_safetensors(out_dir + "/model.safetensors");
    std::ostringstream o;
    json_write(o, root, 0);
    o << "\n";
    std::ofstream f(out_dir + "/config.json", std::ios::binary | std::ios::trunc);
    if (!f || !(f << o.str()) || !f.flush())
        fail(MINICPM_STATUS_IO, out_dir + "/config.json: cannot write: " + std::strerror(errno));
}

}  // namespace minicpm
