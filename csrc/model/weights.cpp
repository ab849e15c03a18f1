// load_model_files: config.json + one safetensors file or the shards of model.safetensors.index.json, mapped
// and checked tensor by tensor against the config (MINICPM4.md section 2).
#include "model/weights.h"

#include "core/json.h"
#include "core/status.h"
#include "model/marlin.h"
#include "model/safetensors.h"
#include "model/torch-pickle.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <sstream>
#include <sys/stat.h>

namespace minicpm {

namespace {

class loaded_model_files : public model_files {
  public:
    std::vector<std::unique_ptr<mapped_file>> files;
    std::vector<std::unique_ptr<uint8_t, decltype(&std::free)>> realigned;  // copies of misaligned tensors

    void release_data(const void * p, size_t n) override {
        model_files::release_data(p, n);
        for (const auto & f : files) f->drop_pages(p, n);
    }
};

bool file_exists(const std::string & path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0;
}

std::string read_text(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(MINICPM_STATUS_IO, path + ": cannot open: " + std::strerror(errno));
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) fail(MINICPM_STATUS_IO, path + ": read failed");
    return ss.str();
}

std::string show_shape(const std::vector<int64_t> & s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); i++) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

struct located {
    const mapped_file *       file;
    const safetensors_entry * entry;
    uint64_t                  data_offset;
};

// Resolves expected tensor names to views, checking presence, dtype and shape.
class tensor_binder {
  public:
    tensor_binder(loaded_model_files & out, std::map<std::string, located> && table, const std::string & listing)
        : out_(out), table_(std::move(table)), listing_(listing) {}

    bool has(const std::string & name) const { return table_.count(name) != 0; }

    // A raw tensor of the given safetensors dtype and shape (quantization parts): its bytes, aligned.
    const uint8_t * raw(const std::string & name, const char * want_dtype, std::vector<int64_t> want) {
        const auto it = table_.find(name);
        if (it == table_.end()) fail(MINICPM_STATUS_BAD_MODEL, listing_ + ": missing tensor '" + name + "'");
        const located &           loc = it->second;
        const safetensors_entry & e = *loc.entry;
        const std::string         where = loc.file->path() + ": tensor '" + name + "'";
        if (e.dtype != want_dtype)
            fail(MINICPM_STATUS_BAD_MODEL, where + " has dtype " + e.dtype + ", expected " + want_dtype);
        if (e.shape != want)
            fail(MINICPM_STATUS_BAD_MODEL, where + " has shape " + show_shape(e.shape) + ", expected " + show_shape(want));
        const uint8_t * p = loc.file->data() + loc.data_offset + e.begin;
        if (uintptr_t(p) % 4 != 0) {
            const size_t n = size_t(e.end - e.begin);
            uint8_t *    copy = (uint8_t *) std::aligned_alloc(64, (n + 63) / 64 * 64);
            if (copy == nullptr) fail(MINICPM_STATUS_OUT_OF_MEMORY, where + ": cannot allocate an aligned copy");
            std::memcpy(copy, p, n);
            out_.realigned.emplace_back(copy, &std::free);
            p = copy;
        }
        return p;
    }

    // A linear layer [N, K]: prefix.weight (plain) or, in a GPTQ checkpoint, prefix.qweight / .qzeros / .scales /
    // .g_idx, unpacked into the engine's q4 layout (core/tensor.h).
    tensor_desc bind_linear(const std::string & prefix, int64_t N, int64_t K, const model_config & c) {
        if (has(prefix + ".weight") || !has(prefix + ".qweight")) return bind(prefix + ".weight", {N, K});
        if (!c.quant.present)
            fail(MINICPM_STATUS_BAD_MODEL, listing_ + ": '" + prefix + ".qweight' but config.json has no quantization_config");
        if (c.quant.method == "minicpm_q8") return bind_q8(prefix, N, K, c.quant.group_size);
        const int32_t group = c.quant.group_size == -1 ? int32_t(K) : c.quant.group_size;
        if (K % 8 != 0 || N % 8 != 0 || K % group != 0)
            fail(MINICPM_STATUS_BAD_MODEL, listing_ + ": '" + prefix + "' has shape [" + std::to_string(N) + ", " +
                                               std::to_string(K) + "]: GPTQ needs both multiples of 8 and in features "
                                               "a multiple of the group size " + std::to_string(group));
        const int64_t G = K / group;
        const auto *  qweight = (const int32_t *) raw(prefix + ".qweight", "I32", {K / 8, N});
        const auto *  qzeros = (const int32_t *) raw(prefix + ".qzeros", "I32", {G, N / 8});
        const auto *  scales = (const uint16_t *) raw(prefix + ".scales", "F16", {G, N});
        const int32_t * g_idx = has(prefix + ".g_idx") ? (const int32_t *) raw(prefix + ".g_idx", "I32", {K}) : nullptr;
        if (c.quant.desc_act && g_idx == nullptr)
            fail(MINICPM_STATUS_BAD_MODEL, listing_ + ": missing tensor '" + prefix + ".g_idx' (desc_act is true)");
        out_.converted.push_back(gptq_to_q4(qweight, qzeros, scales, g_idx, N, K, group, listing_ + ": " + prefix,
                                            c.quant.checkpoint_format == "gptq_v2"));
        const tensor_desc d = out_.converted.back().desc();
        out_.weights.n_params += uint64_t(N * K);
        out_.weights.n_bytes += d.bytes();
        return d;
    }

    // minicpm_q8 (model/save.h): prefix.qweight I8 [N, K] and prefix.scales F16 [N, ceil(K / g)], g = min(group, K),
    // mapped as they are (the engine's q8 layout).
    tensor_desc bind_q8(const std::string & prefix, int64_t N, int64_t K, int32_t group) {
        tensor_desc d;
        d.type = dtype::q8;
        d.rows = N;
        d.cols = K;
        d.group_size = int32_t(std::min<int64_t>(group, K));
        d.scale_type = dtype::f16;
        d.data = raw(prefix + ".qweight", "I8", {N, K});
        d.scales = raw(prefix + ".scales", "F16", {N, d.n_groups()});
        const uint16_t * s = (const uint16_t *) d.scales;
        for (int64_t i = 0; i < N * d.n_groups(); ++i)
            if (!std::isfinite(f16_to_f32(s[i])))
                fail(MINICPM_STATUS_BAD_MODEL, listing_ + ": '" + prefix + ".scales' holds a non-finite scale");
        out_.weights.n_params += uint64_t(N * K);
        out_.weights.n_bytes += d.bytes();
        return d;
    }

    // CPM.cu's Marlin repack (model/marlin.h): prefix.qweight I32 [K/16, 2N] and prefix.scales F16 [G, N] of a
    // projection fused along N (qkv_proj, gate_up_proj) or single; unpacked and split into the parts of Ns.
    std::vector<tensor_desc> bind_marlin(const std::string & prefix, const std::vector<int64_t> & Ns, int64_t K,
                                         const model_config & c) {
        if (!c.quant.present || c.quant.method != "gptq" || !c.quant.sym || c.quant.desc_act)
            fail(MINICPM_STATUS_BAD_MODEL, listing_ + ": Marlin tensors need a symmetric GPTQ quantization_config "
                                                      "without desc_act in config.json");
        const int64_t G = c.quant.group_size == -1 ? 1 : K / c.quant.group_size;
        if (c.quant.group_size != -1 && K % c.quant.group_size != 0)
            fail(MINICPM_STATUS_BAD_MODEL, listing_ + ": '" + prefix + "' in features " + std::to_string(K) +
                                               " are not a multiple of group_size " + std::to_string(c.quant.group_size));
        return bind_marlin(prefix, Ns, K, G);
    }

    // The same with the group count G given (an EAGLE head: from its scales' shape).
    std::vector<tensor_desc> bind_marlin(const std::string & prefix, const std::vector<int64_t> & Ns, int64_t K, int64_t G) {
        int64_t N = 0;
        for (int64_t n : Ns) N += n;
        const auto * qweight = (const int32_t *) raw(prefix + ".qweight", "I32", {K / 16, 2 * N});
        const auto * scales = (const uint16_t *) raw(prefix + ".scales", "F16", {G, N});
        quantized_tensor fused = marlin_to_q4(qweight, scales, N, K, G, listing_ + ": " + prefix);
        std::vector<tensor_desc> out;
        int64_t n0 = 0;
        for (int64_t n : Ns) {
            out.push_back(keep(Ns.size() == 1 ? std::move(fused) : q4_rows(fused, n0, n0 + n)));
            n0 += n;
        }
        return out;
    }

    // Shape of a listed tensor (empty when absent).
    std::vector<int64_t> shape(const std::string & name) const {
        const auto it = table_.find(name);
        return it == table_.end() ? std::vector<int64_t>{} : it->second.entry->shape;
    }

    // A converted tensor, owned with the files from now on.
    tensor_desc keep(quantized_tensor && q) {
        out_.converted.push_back(std::move(q));
        const tensor_desc d = out_.converted.back().desc();
        out_.weights.n_params += uint64_t(d.rows * d.cols);
        out_.weights.n_bytes += d.bytes();
        return d;
    }

    tensor_desc bind(const std::string & name, std::vector<int64_t> want) {
        const auto it = table_.find(name);
        if (it == table_.end()) fail(MINICPM_STATUS_BAD_MODEL, listing_ + ": missing tensor '" + name + "'");
        const located &           loc = it->second;
        const safetensors_entry & e = *loc.entry;
        const std::string         where = loc.file->path() + ": tensor '" + name + "'";
        tensor_desc               v;
        if (e.dtype == "BF16") v.type = dtype::bf16;
        else if (e.dtype == "F16") v.type = dtype::f16;
        else if (e.dtype == "F32") v.type = dtype::f32;
        else fail(MINICPM_STATUS_UNSUPPORTED, where + " has dtype " + e.dtype + "; only BF16, F16 and F32 are supported");
        if (e.shape != want) {
            fail(MINICPM_STATUS_BAD_MODEL, where + " has shape " + show_shape(e.shape) + ", expected " + show_shape(want));
        }
        v.rows = want.size() == 2 ? want[0] : 1;
        v.cols = want.back();
        const uint8_t * p = loc.file->data() + loc.data_offset + e.begin;
        const size_t    esize = dtype_size(v.type);
        if (uintptr_t(p) % esize != 0) {
            // A valid but oddly laid out file: kernels read whole elements, so give them an aligned copy.
            const size_t n = size_t(e.end - e.begin);
            uint8_t *    copy = (uint8_t *) std::aligned_alloc(64, (n + 63) / 64 * 64);
            if (copy == nullptr) fail(MINICPM_STATUS_OUT_OF_MEMORY, where + ": cannot allocate an aligned copy");
            std::memcpy(copy, p, n);
            out_.realigned.emplace_back(copy, &std::free);
            p = copy;
        }
        v.data = p;
        out_.weights.n_params += uint64_t(v.rows * v.cols);
        out_.weights.n_bytes += v.bytes();
        return v;
    }

  private:
    loaded_model_files &            out_;
    std::map<std::string, located> table_;
    std::string                     listing_;
};

// Shard names come from a file we do not control: keep them inside the model directory.
bool plain_file_name(const std::string & s) {
    return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos && s.find('\0') == std::string::npos;
}

// Maps the checkpoint's weight files into out->files and lists every tensor by name in table (pointing into
// headers, which must outlive it). Looked for in this order: model.safetensors.index.json and its shards,
// model.safetensors, CPM.cu's model_gptq.safetensors, pytorch_model.bin.index.json and its shards,
// pytorch_model.bin (torch.save zip archives, their tensors mapped in place like safetensors ones).
void open_weight_files(const std::string & dir, bool use_mmap, loaded_model_files & out,
                       std::deque<safetensors_header> & headers, std::map<std::string, located> & table,
                       std::string & listing) {
    // file name -> tensors the index assigns to it (single-file checkpoints list no names: take all)
    std::map<std::string, std::vector<std::string>> assigned;
    std::string index_path;  // the first of these present wins (a repository may ship both formats)
    for (const char * name : {"model.safetensors.index.json", "model.safetensors", "model_gptq.safetensors",
                              "pytorch_model.bin.index.json", "pytorch_model.bin"}) {
        if (!index_path.empty() || !listing.empty() || !file_exists(dir + "/" + name)) continue;
        const std::string n = name;
        if (n.size() > 11 && n.compare(n.size() - 11, 11, ".index.json") == 0) {
            index_path = dir + "/" + n;
        } else {
            listing = dir + "/" + n;
            assigned[n];
        }
    }
    const bool sharded = !index_path.empty();
    if (sharded) {
        listing = index_path;
        const std::string text = read_text(index_path);
        const json_value  index = json_parse(text.data(), text.size(), index_path);
        const json_value * map = index.is_object() ? index.find("weight_map") : nullptr;
        if (map == nullptr || !map->is_object()) {
            fail(MINICPM_STATUS_BAD_MODEL, index_path + ": 'weight_map' is missing or not an object");
        }
        for (const auto & m : map->members) {
            if (!m.second.is_string() || !plain_file_name(m.second.string)) {
                fail(MINICPM_STATUS_BAD_MODEL,
                     index_path + ": weight_map entry '" + m.first + "' must name a file in the model directory");
            }
            assigned[m.second.string].push_back(m.first);
        }
    } else if (listing.empty()) {
        fail(MINICPM_STATUS_IO, dir + ": no weights: none of model.safetensors, model.safetensors.index.json, "
                                      "pytorch_model.bin, pytorch_model.bin.index.json exists");
    }

    for (const auto & a : assigned) {
        const std::string path = dir + "/" + a.first;
        out.files.push_back(std::make_unique<mapped_file>(path, use_mmap));
        const mapped_file & f = *out.files.back();
        const bool torch_zip = path.size() > 4 && path.compare(path.size() - 4, 4, ".bin") == 0;
        headers.push_back(torch_zip ? parse_torch_checkpoint(f.data(), f.size(), path)
                                    : parse_safetensors_header(f.data(), f.size(), path));
        const safetensors_header & h = headers.back();
        std::map<std::string, const safetensors_entry *> in_file;
        for (const safetensors_entry & e : h.entries) in_file[e.name] = &e;
        if (!sharded) {
            for (const auto & e : in_file) table[e.first] = located{&f, e.second, h.data_offset};
            continue;
        }
        for (const std::string & name : a.second) {
            const auto it = in_file.find(name);
            if (it == in_file.end()) {
                fail(MINICPM_STATUS_BAD_MODEL, index_path + " puts tensor '" + name + "' in " + a.first +
                                                   ", but that file has no such tensor");
            }
            table[name] = located{&f, it->second, h.data_offset};
        }
    }
}

class loaded_tensor_files final : public tensor_files {
  public:
    loaded_tensor_files(const std::string & dir, bool use_mmap) {
        std::map<std::string, located> table;
        std::string                    listing;
        open_weight_files(dir, use_mmap, files_, headers_, table, listing);
        for (const auto & t : table) names_.push_back(t.first);
        binder_ = std::make_unique<tensor_binder>(files_, std::move(table), listing);
        listing_ = listing;
    }
    bool has(const std::string & name) const override { return binder_->has(name); }
    tensor_desc bind(const std::string & name, const std::vector<int64_t> & shape) override {
        return binder_->bind(name, shape);
    }
    std::vector<tensor_desc> bind_marlin(const std::string & prefix, const std::vector<int64_t> & Ns, int64_t K) override {
        const std::vector<int64_t> s = binder_->shape(prefix + ".scales");
        if (s.size() != 2 || s[0] < 1 || K % s[0] != 0)
            fail(MINICPM_STATUS_BAD_MODEL, listing_ + ": '" + prefix + ".scales' must be [groups, out features] with "
                                                      "the groups dividing the in features " + std::to_string(K));
        return binder_->bind_marlin(prefix, Ns, K, s[0]);
    }
    tensor_desc keep(quantized_tensor && q) override { return binder_->keep(std::move(q)); }
    const std::vector<std::string> & names() const override { return names_; }
    const std::string &              listing() const override { return listing_; }

  private:
    loaded_model_files              files_;
    std::deque<safetensors_header>  headers_;
    std::unique_ptr<tensor_binder>  binder_;
    std::vector<std::string>        names_;
    std::string                     listing_;
};

}  // namespace

std::unique_ptr<tensor_files> open_tensor_files(const std::string & dir, bool use_mmap) {
    return std::make_unique<loaded_tensor_files>(dir, use_mmap);
}

void model_files::release_data(const void * p, size_t n) {
    (void) n;
    for (quantized_tensor & q : converted)
        if (!q.data.empty() && q.data.data() == p) std::vector<uint8_t>().swap(q.data);
}

std::unique_ptr<model_files> load_model_files(const std::string & dir, bool use_mmap) {
    auto out = std::make_unique<loaded_model_files>();
    const std::string config_path = dir + "/config.json";
    out->config = parse_config(read_text(config_path), config_path);
    if (!out->config.quant.present && file_exists(dir + "/quantize_config.json"))
        parse_quantize_config(read_text(dir + "/quantize_config.json"), dir + "/quantize_config.json", out->config);
    const model_config & c = out->config;

    std::deque<safetensors_header> headers;  // kept alive: the table points into them
    std::map<std::string, located> table;
    std::string                    listing;
    open_weight_files(dir, use_mmap, *out, headers, table, listing);

    tensor_binder b(*out, std::move(table), listing);
    model_weights & w = out->weights;
    const int64_t H = c.n_embd, I = c.n_ff, V = c.n_vocab;
    const int64_t q = int64_t(c.n_head) * c.n_head_dim, kv = int64_t(c.n_head_kv) * c.n_head_dim;
    w.embed = b.bind_linear("model.embed_tokens", V, H, c);  // quantized when saved with a quantized tied head
    w.layers.resize(size_t(c.n_layer));
    for (int32_t l = 0; l < c.n_layer; l++) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        layer_weights &   L = w.layers[size_t(l)];
        L.attn_norm = b.bind(p + "input_layernorm.weight", {H});
        L.ffn_norm = b.bind(p + "post_attention_layernorm.weight", {H});
        if (b.has(p + "self_attn.qkv_proj.qweight")) {  // Marlin repack: fused qkv and gate_up
            const auto qkv = b.bind_marlin(p + "self_attn.qkv_proj", {q, kv, kv}, H, c);
            const auto gu = b.bind_marlin(p + "mlp.gate_up_proj", {I, I}, H, c);
            L.wq = qkv[0], L.wk = qkv[1], L.wv = qkv[2], L.w_gate = gu[0], L.w_up = gu[1];
            L.wo = b.bind_marlin(p + "self_attn.o_proj", {H}, q, c)[0];
            L.w_down = b.bind_marlin(p + "mlp.down_proj", {H}, I, c)[0];
            continue;
        }
        L.wq = b.bind_linear(p + "self_attn.q_proj", q, H, c);
        L.wk = b.bind_linear(p + "self_attn.k_proj", kv, H, c);
        L.wv = b.bind_linear(p + "self_attn.v_proj", kv, H, c);
        L.wo = b.bind_linear(p + "self_attn.o_proj", H, q, c);
        L.w_gate = b.bind_linear(p + "mlp.gate_proj", I, H, c);
        L.w_up = b.bind_linear(p + "mlp.up_proj", I, H, c);
        L.w_down = b.bind_linear(p + "mlp.down_proj", H, I, c);
    }
    w.norm = b.bind("model.norm.weight", {H});
    if (c.tie_word_embeddings) {
        w.head = w.embed;  // any lm_head.weight in the file is ignored, as HF does when tied
    } else {
        if (!b.has("lm_head.weight") && !b.has("lm_head.qweight")) {
            fail(MINICPM_STATUS_BAD_MODEL,
                 listing + ": missing tensor 'lm_head.weight' (config.json sets tie_word_embeddings to false)");
        }
        w.head = b.bind_linear("lm_head", V, H, c);
    }

    // Formats may differ between tensors (an LM head in BF16 beside other projections); info reports the first
    // projection's.
    w.weight_type = w.layers[0].wq.type;
    return out;
}

}  // namespace minicpm
