// The MiniCPM4 forward pass, written once over backend_ops (MINICPM4.md sections 3-4).
#pragma once

#include "core/backend.h"
#include "model/kv-cache.h"
#include "model/weights.h"

#include <memory>
#include <string>
#include <vector>

namespace minicpm {

// Optional debug hook: called after each named intermediate of forward() with its f32 [rows, cols] data
// (valid only during the call). il is the layer, -1 outside the layers. Names, in order: "inp_scaled";
// per layer "attn_norm", "q_rope", "k_rope", "v", "attn_out", "attn_proj", "ffn_inp", "ffn_norm", "ffn_act",
// "ffn_out", "l_out"; then for the logit rows "result_norm" (before the divisor) and "result_output".
using forward_hook = void (*)(void * user, const char * name, int32_t il, const float * data, int64_t rows,
                              int64_t cols);

// One batch for forward(): T tokens grouped into segments (one per sequence, see kv_segment). Each segment's
// KV blocks for positions [0, n_past + n_rows) must already be allocated. logit_rows lists the batch rows
// (ascending) whose logits are wanted.
struct batch_view {
    const int32_t *    tokens = nullptr;  // [T], validated by the caller (0 <= id < n_vocab)
    int64_t            n_tokens = 0;
    const kv_segment * segs = nullptr;
    int32_t            n_segs = 0;
    const int32_t *    logit_rows = nullptr;
    int32_t            n_logit_rows = 0;
    forward_hook       hook = nullptr;  // optional, see forward_hook
    void *             hook_user = nullptr;
};

// The cos/sin table for positions [0, n_ctx_train) (layout as backend_ops::rope), built the way HF builds its
// first LongRoPE cache (MINICPM4.md section 4). Exposed for tests on the real configs.
std::vector<float> build_rope_table(const model_config & cfg);

class model {
  public:
    static std::unique_ptr<model> load(const std::string & dir, bool use_mmap);

    const model_config &  config() const { return files_->config; }
    const model_weights & weights() const { return files_->weights; }

    // Writes n_logit_rows x n_vocab f32 logits (already divided by the logit divisor) into logits.
    // Scratch buffers are grown as needed and reused across calls by the same owner.
    void forward(const backend_ops & ops, thread_pool & tp, kv_pool & kv, const batch_view & batch,
                 float * logits, std::vector<float> & scratch) const;

    // cos/sin table row for position p (hd floats, see backend_ops::rope); covers [0, n_ctx_train).
    const float * rope_table() const { return rope_.data(); }

  private:
    std::unique_ptr<model_files> files_;
    std::vector<float>           rope_;
};

}  // namespace minicpm

// The public handle (minicpm_model_t in minicpm.h): the C API owns a model through it; the engine and the
// context reach the model as handle->impl.
struct minicpm_model {
    std::unique_ptr<minicpm::model> impl;
};
