// An EAGLE draft head for MiniCPM4 in the published MiniCPM4-8B-Eagle-FRSpec layout (ENGINE_REFERENCE 4.1),
// as CPM.cu's MiniCPM4EagleImpl runs it:
//   f   = fc([norm1(embed(token) * scale_emb) ; norm2(h)]) + fc.bias      (fc.weight [H, 2H], embedding half first)
//   x   = f + s * attn(input_layernorm(f));  x = x + s * ffn(post_attention_layernorm(x))   (layers.0.*)
//   out = x (the feature: the next level's h), logits = lm_head(x)
// h is the target's final-norm output (before the 1 / (H / dim_model_base) divisor) at the previous position,
// s = scale_depth / sqrt(L + 1) with L the target's layers. The embedding, the RoPE table and the LM head are
// the target's; as in CPM.cu the head gets neither a final norm nor the target's logit divisor. With FR-Spec
// (restrict_vocab) the LM head is a compact copy of N of the target's rows, so the projection costs N rows.
#pragma once

#include "core/backend.h"
#include "model/kv-cache.h"
#include "model/minicpm4.h"

#include <memory>
#include <string>
#include <vector>

namespace minicpm {

struct eagle_weights {
    tensor_desc   fc;             // [H, 2H]
    tensor_desc   norm1, norm2;   // [H]
    layer_weights layer;
    tensor_desc   head;           // the target's LM head, or its FR-Spec rows
};

// What eagle_head::forward needs between calls of one owner: activations on the owner's backend.
struct eagle_workspace {
    buffer               buf;
    std::vector<int32_t> idx;
};

class eagle_head {
  public:
    // Reads dir/config.json and dir/model.safetensors (or its index) and checks every tensor against the
    // target's shape. Throws _BAD_MODEL / _IO / _UNSUPPORTED naming the file, the field or the tensor.
    static std::unique_ptr<eagle_head> load(const std::string & dir, const model & target, bool use_mmap);
    ~eagle_head();

    // The head's own KV layout (one layer), for its kv_pool.
    const model_config & config() const { return cfg_; }
    const model &        target() const { return target_; }
    float                residual_scale() const { return rscale_; }
    const eagle_weights & weights() const { return w_; }

    // FR-Spec: the head scores only the first n ids of ids (n <= 0 or more than the list: the whole list);
    // an empty list restores the full vocabulary. Gathers those rows of the target's LM head into a compact
    // matrix. Throws _INVALID_ARGUMENT for an id out of range or repeated.
    void    restrict_vocab(const std::vector<int32_t> & ids, int32_t n);
    int32_t vocab_size() const { return remap_.empty() ? cfg_.n_vocab : int32_t(remap_.size()); }
    // Target token id of head logit column j.
    int32_t token_of(int32_t j) const { return remap_.empty() ? j : remap_[size_t(j)]; }

    // Runs T rows of one sequence (segment sg over the head's kv, rows 0..T-1 of the batch): token ids
    // tokens[T] (validated by the caller), target or draft features hidden[T, H] and positions pos[T], all host
    // memory. Writes the output features of every row into feat[T, H] and, for the ascending rows logit_rows[R],
    // vocab_size() logits each into logits (host).
    void forward(backend & be, eagle_workspace & ws, kv_pool & kv, const kv_segment & sg, const int32_t * tokens,
                 const float * hidden, const int32_t * pos, int32_t T, float * feat, const int32_t * logit_rows,
                 int32_t R, float * logits) const;
    void release_workspace(backend & be, eagle_workspace & ws) const { be.release(ws.buf); }

  private:
    explicit eagle_head(const model & target) : target_(target) {}

    const model &                target_;
    model_config                 cfg_;
    float                        rscale_ = 1.0f;
    eagle_weights                w_;
    std::shared_ptr<void>        files_;    // the mapped checkpoint
    std::unique_ptr<backend>     loader_;   // owns the placed weights
    std::vector<buffer>          placed_;
    buffer                       bias_;     // fc.bias as f32
    buffer                       fr_head_;  // the compact FR-Spec head
    buffer                       fr_prepared_;  // its prepared copy (x86: packed panels), if the backend makes one
    std::vector<int32_t>         remap_;
};

}  // namespace minicpm
