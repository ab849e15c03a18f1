// The synchronous context behind minicpm_context_*: a backend (with its threads), a KV pool for n_seq_max
// sequences of up to n_ctx tokens, and eval() that appends a batch of tokens (any mix of sequences) and
// returns logit rows. eval_tree() and the seq_* edits are the internal seam that speculative decoding and
// prefix reuse build on (tested natively).
#pragma once

#include "minicpm.h"
#include "model/minicpm4.h"

#include <cstdint>
#include <memory>
#include <vector>

namespace minicpm {

class context {
  public:
    // Validates params (n_ctx <= the model's positions, n_seq_max >= 1, kv dtype) and allocates the KV pool.
    context(const model & m, const minicpm_context_params & params);

    // See minicpm_context_eval in minicpm.h. Validates everything before touching any sequence.
    int32_t eval(const int32_t * tokens, const int32_t * seq_ids, const uint8_t * output, int32_t n_tokens,
                 float * logits, int64_t logits_cap);

    int32_t seq_len(int32_t seq_id) const;
    void    seq_truncate(int32_t seq_id, int32_t n_keep);
    // dst (emptied first) becomes the first n tokens of src, sharing its KV blocks.
    void    seq_fork(int32_t src, int32_t dst, int32_t n);
    // Moves KV slots src_slots[i] -> dst_slots[i] (in order) inside a sequence, then keeps n_keep tokens.
    void    seq_compact(int32_t seq_id, const int32_t * src_slots, const int32_t * dst_slots, int32_t n,
                        int32_t n_keep);

    // Appends n rows to one sequence as a token tree: row j has position pos[j] and sees the sequence's
    // committed tokens, itself, and the rows i < j whose bit i is set in mask[j] (mask NULL: causal). Writes
    // n x n_vocab logits. All n rows are committed (the sequence grows by n); keep a path with seq_compact.
    void    eval_tree(int32_t seq_id, const int32_t * tokens, const int32_t * pos, const uint64_t * mask, int32_t n,
                      float * logits);

    backend & backend_ref() { return *be_; }
    kv_pool & kv() { return kv_; }

    int32_t n_ctx() const { return n_ctx_; }
    int32_t n_seq_max() const { return int32_t(seqs_.size()); }

    ~context();

  private:
    void check_seq(int32_t seq_id) const;

    const model &            model_;
    std::unique_ptr<backend> be_;
    int32_t                  n_ctx_;
    int32_t                  n_chunk_;
    kv_pool                  kv_;
    std::vector<kv_seq>      seqs_;

    // Reused across calls so steady-state eval does not allocate.
    forward_workspace       ws_;
    std::vector<float>      logits_tmp_;
    std::vector<int32_t>    seg_count_, seg_off_;    // per sequence: tokens in this batch, first grouped row
    std::vector<int32_t>    cursor_;                 // per sequence: next grouped row while grouping
    std::vector<int32_t>    order_, tokens_;         // grouped row -> batch index, token of that row
    std::vector<int32_t>    out_rank_;               // batch index -> output row in batch order (-1: none)
    std::vector<int32_t>    rows_, dest_;            // wanted grouped rows (ascending), their output rows
    std::vector<int32_t>    local_rows_;             // the wanted rows of one n_chunk piece, piece-relative
    std::vector<kv_segment> segs_;
};

}  // namespace minicpm

// The public handle (minicpm_context_t in minicpm.h).
struct minicpm_context {
    std::unique_ptr<minicpm::context> impl;
};
