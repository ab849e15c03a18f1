// The model's tensors, mapped from safetensors files (or torch.save pytorch_model.bin) and checked against the config.
#pragma once

#include "core/tensor.h"
#include "model/config.h"
#include "model/quantize.h"

#include <deque>

#include <memory>
#include <string>
#include <vector>

namespace minicpm {

struct layer_weights {
    tensor_desc attn_norm;  // [n_embd]
    tensor_desc wq;         // [n_head * n_head_dim, n_embd]
    tensor_desc wk;         // [n_head_kv * n_head_dim, n_embd]
    tensor_desc wv;         // [n_head_kv * n_head_dim, n_embd]
    tensor_desc wo;         // [n_embd, n_head * n_head_dim]
    tensor_desc ffn_norm;   // [n_embd]
    tensor_desc w_gate;     // [n_ff, n_embd]
    tensor_desc w_up;       // [n_ff, n_embd]
    tensor_desc w_down;     // [n_embd, n_ff]
};

struct model_weights {
    tensor_desc                embed;   // model.embed_tokens.weight [n_vocab, n_embd]
    std::vector<layer_weights> layers;
    tensor_desc                norm;    // model.norm.weight [n_embd]
    tensor_desc                head;    // lm_head.weight, or embed when tied
    dtype                      weight_type = dtype::bf16; // format of the first projection matrix
    uint64_t                   n_params = 0;
    uint64_t                   n_bytes = 0;
};

// Owns the mapped files; the tensor views in `weights` point into them.
class model_files {
  public:
    virtual ~model_files() = default;
    model_config  config;
    model_weights weights;
    // Host memory of converted tensors (GPTQ unpacked, on-the-fly quantized); descriptors point into them.
    std::deque<quantized_tensor> converted;
    // The n bytes at p (a tensor's data) are not read again: a converted tensor's rows are freed; pages inside a
    // mapped file are dropped from this process (they read back from the file if touched); anything else stays.
    virtual void release_data(const void * p, size_t n);
};

// Loads dir/config.json and dir/model.safetensors or the shards named by dir/model.safetensors.index.json
// (or pytorch_model.bin / pytorch_model.bin.index.json, read as model/torch-pickle.h describes).
// Throws minicpm::error with a message naming the file, the tensor and the problem.
std::unique_ptr<model_files> load_model_files(const std::string & dir, bool use_mmap);

// The tensors of a checkpoint directory that is not a MiniCPM model (an EAGLE head): mapped, by name, from the
// same files load_model_files reads.
class tensor_files {
  public:
    virtual ~tensor_files() = default;
    virtual bool has(const std::string & name) const = 0;
    // A BF16 / F16 / F32 tensor of exactly this shape; throws _BAD_MODEL naming the file, the tensor, and the
    // shape found (or that it is missing).
    virtual tensor_desc bind(const std::string & name, const std::vector<int64_t> & shape) = 0;
    // CPM.cu's Marlin repack of a projection fused along N (the parts Ns) with K in features: prefix.qweight and
    // prefix.scales, the group count read from the scales' shape; q4 tensors owned by this object.
    virtual std::vector<tensor_desc> bind_marlin(const std::string & prefix, const std::vector<int64_t> & Ns, int64_t K) = 0;
    // A tensor converted by the caller, owned by this object from now on.
    virtual tensor_desc keep(quantized_tensor && q) = 0;
    virtual const std::vector<std::string> & names() const = 0;
    virtual const std::string &              listing() const = 0;  // the file named in messages
};
std::unique_ptr<tensor_files> open_tensor_files(const std::string & dir, bool use_mmap);

// Parses one safetensors header (the 8-byte length + JSON) against a file of file_size bytes.
// Exposed for the fuzz test. Each entry: name, dtype, shape, byte range relative to the data section.
struct safetensors_entry {
    std::string          name;
    std::string          dtype;   // "BF16", "F16", "F32", ... as written in the file
    std::vector<int64_t> shape;
    uint64_t             begin = 0;
    uint64_t             end = 0;
};
struct safetensors_header {
    uint64_t                       data_offset = 0;  // 8 + header length
    std::vector<safetensors_entry> entries;
};
safetensors_header parse_safetensors_header(const uint8_t * data, uint64_t file_size, const std::string & source);

}  // namespace minicpm
