// The MiniCPM4 forward pass, written once over the backend's ops (MINICPM4.md sections 3-4).
#pragma once

#include "core/backend.h"
#include "model/kv-cache.h"
#include "model/weights.h"

#include <memory>
#include <string>
#include <vector>

namespace minicpm {

// Optional debug hook: called after each named intermediate of forward() with a host copy of its f32
// [rows, cols] data (valid only during the call; copying costs time, so only tests and tools set one). il is the layer, -1 outside the layers. Names, in order: "inp_scaled";
// per layer "attn_norm", "q_rope", "k_rope", "v", "attn_out", "attn_proj", "ffn_inp", "ffn_norm", "ffn_act",
// "ffn_out", "l_out"; then for the logit rows "result_norm" (before the divisor) and "result_output".
using forward_hook = void (*)(void * user, const char * name, int32_t il, const float * data, int64_t rows,
                              int64_t cols);

// One batch for forward(): T rows grouped into segments (one per sequence, see kv_segment), each row with its
// token and its explicit position. Each segment's blocks for slots [0, n_past + n_rows) must be held by its
// sequence alone where rows are written (kv_seq_prepare). logit_rows lists the batch rows (ascending) whose
// logits are wanted. All arrays are host memory.
struct batch_view {
    const int32_t *    tokens = nullptr;  // [T], validated by the caller (0 <= id < n_vocab)
    const int32_t *    pos = nullptr;     // [T] positions; nullptr = n_past + j for row j of each segment
    int64_t            n_tokens = 0;
    const kv_segment * segs = nullptr;
    int32_t            n_segs = 0;
    const int32_t *    logit_rows = nullptr;
    int32_t            n_logit_rows = 0;
    // Optional [T, n_embd] host array: receives the final-norm output of every row (before the logit divisor),
    // the input of an EAGLE draft head.
    float *            hidden = nullptr;
    forward_hook       hook = nullptr;  // optional, see forward_hook
    void *             hook_user = nullptr;
    // A device backend leaves the logits in the workspace (forward_workspace::logits) instead of copying
    // them to the host: for callers that sample on the device. Ignored on a host-memory backend.
    bool               logits_on_device = false;
};

// The cos/sin table for positions [0, n_ctx_train) (layout as backend::rope), built the way HF builds its
// first LongRoPE cache (MINICPM4.md section 4). Exposed for tests on the real configs.
std::vector<float> build_rope_table(const model_config & cfg);

// What forward() needs between calls of one owner (a context or an engine): one activation buffer on the
// owner's backend, grown to the largest batch seen, and host staging for positions.
struct forward_workspace {
    buffer               buf;
    std::vector<int32_t> pos;
    std::vector<float>   hook_copy;
    // InfLLM v2 batch metadata (host): the batch split into dense and sparse rows, the segments whose
    // compressed keys are maintained and the first stale slot of each.
    std::vector<kv_segment> dense_segs, sparse_segs, comp_segs;
    std::vector<int32_t>    comp_from;
    // After a forward with batch.logits_on_device on a device backend: its [n_logit_rows, n_vocab] logits,
    // in the backend's memory, at byte logits_offset of buf; nullptr otherwise.
    const float * logits = nullptr;
    size_t        logits_offset = 0;
    // Wall time spent in attention ops (dense and sparse, incl. compression) by forward(), accumulated.
    int64_t attn_us = 0;
};

// InfLLM v2 bookkeeping over the pool's side_valid (kv-cache.h), for the rows of segment sg (no tree mask):
// the first slot whose compressed kernels must be recomputed (every kernel whose last slot is >= it), and,
// once every layer has been compressed, the marking of slots [0, n_past + n_rows) as described.
int32_t sparse_stale_from(const kv_pool & kv, const kv_segment & sg);
void    sparse_mark_valid(kv_pool & kv, const kv_segment & sg, int32_t from);

struct model_load_options {
    bool    use_mmap = true;
    int32_t backend = MINICPM_BACKEND_AUTO;  // enum minicpm_backend
    int32_t quantize = 0;                    // 0, MINICPM_DTYPE_Q8 or MINICPM_DTYPE_Q4 (see minicpm_model_params)
    int32_t quant_group_size = 128;
    bool    quantize_head = true;
    int32_t sparse = 0;  // enum minicpm_sparse_mode: InfLLM v2 as config.json says, or forced on / off
    uint64_t device_memory = 0;  // CUDA: the device arena's size (backend_options::memory_limit)
    bool     cuda_graphs = true; // CUDA: small steps replayed as step graphs (backend_options::step_graphs)
};

class model {
  public:
    // Loads the directory and places the weights on the requested backend (enum minicpm_backend).
    static std::unique_ptr<model> load(const std::string & dir, const model_load_options & opts);
    static std::unique_ptr<model> load(const std::string & dir, bool use_mmap, int32_t backend_request,
                                       int32_t sparse_mode = 0) {
        model_load_options o;
        o.use_mmap = use_mmap;
        o.backend = backend_request;
        o.sparse = sparse_mode;
        return load(dir, o);
    }
    ~model();

    const model_config &  config() const { return files_->config; }
    const model_weights & weights() const { return files_->weights; }
    backend_kind          backend_type() const { return kind_; }
    // Configuration in config.json that is not honoured, one line each, naming what runs instead.
    const std::string &   warnings() const { return warnings_; }
    // Writes the (quantized) weights and config as a hub-layout directory (model/save.h); CPU backend only.
    void save(const std::string & out_dir) const;

    // A backend for a context or an engine: same kind as the weights, its own threads and buffers.
    std::unique_ptr<backend> make_backend(const backend_options & opts) const;
    // Bytes of the forward workspace of a batch of T rows with R logit rows on a device backend.
    size_t workspace_bytes(int64_t T, int32_t R) const;
    // The device arena as the model's backend sees it (all zero on the CPU).
    device_memory_info device_memory() const { return loader_->device_memory(); }

    // Writes n_logit_rows x n_vocab f32 logits (already divided by the logit divisor) into the host array
    // logits. be must come from make_backend(); ws is grown on be as needed. Validates the batch (segments,
    // masks, positions) before running anything.
    void forward(backend & be, forward_workspace & ws, kv_pool & kv, const batch_view & batch, float * logits) const;
    void release_workspace(backend & be, forward_workspace & ws) const;

    // cos/sin table for positions [0, n_ctx_train) in backend memory (hd floats per position, see
    // backend::rope).
    const float * rope_table() const { return (const float *) rope_.data; }

  private:
    model() = default;
    void place_weights();
    void quantize_weights(const model_load_options & opts);

    std::unique_ptr<model_files>   files_;
    std::string                    dir_;
    backend_kind                   kind_ = backend_kind::cpu;
    std::unique_ptr<backend>       loader_;   // owns the weight buffers and the RoPE table
    std::vector<buffer>            imported_;
    buffer                         rope_;
    std::string                    warnings_;
    bool                           step_graphs_ = true;  // backends made for contexts and engines record steps
};

}  // namespace minicpm

// The public handle (minicpm_model_t in minicpm.h): the C API owns a model through it; the engine and the
// context reach the model as handle->impl.
struct minicpm_model {
    std::unique_ptr<minicpm::model> impl;
};
