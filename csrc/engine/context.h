// The synchronous context behind minicpm_context_*: a KV pool for n_seq_max sequences of up to n_ctx tokens,
// a thread pool, and eval() that appends a batch of tokens (any mix of sequences) and returns logit rows.
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

    int32_t n_ctx() const { return n_ctx_; }
    int32_t n_seq_max() const { return int32_t(seqs_.size()); }

  private:
    struct sequence {
        int32_t              n_tokens = 0;
        std::vector<int32_t> blocks;  // pool blocks for positions [64 i, 64 i + 64)
    };

    void check_seq(int32_t seq_id) const;
    void release_blocks_beyond(sequence & s, int32_t n_tokens);

    const model &         model_;
    const backend_ops &   ops_;
    int32_t               n_ctx_;
    int32_t               n_chunk_;
    thread_pool           pool_;
    kv_pool               kv_;
    std::vector<sequence> seqs_;

    // Reused across calls so steady-state eval does not allocate.
    std::vector<float>      scratch_;
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
