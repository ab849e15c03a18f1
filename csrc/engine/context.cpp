#include "engine/context.h"

#include "core/status.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>

namespace minicpm {

static constexpr int32_t BLOCK = MINICPM_KV_BLOCK_SIZE;

static int32_t blocks_for(int64_t n_tokens) { return int32_t((n_tokens + BLOCK - 1) / BLOCK); }

// Validates the params that size the KV pool; returns the effective n_ctx.
static int32_t checked_n_ctx(const model & m, const minicpm_context_params & p) {
    const int32_t n_train = m.config().n_ctx_train;
    if (p.n_ctx < 0 || p.n_ctx > n_train)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "context: n_ctx " + std::to_string(p.n_ctx) + " must be in [0, " +
                                                  std::to_string(n_train) +
                                                  "] (0 = the model's max_position_embeddings)");
    if (p.n_seq_max <= 0)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "context: n_seq_max " + std::to_string(p.n_seq_max) + " must be >= 1");
    if (p.n_threads < 0)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "context: n_threads " + std::to_string(p.n_threads) + " must be >= 0");
    if (p.n_chunk < 0)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "context: n_chunk " + std::to_string(p.n_chunk) + " must be >= 0");
    if (p.kv_dtype != MINICPM_DTYPE_F32 && p.kv_dtype != MINICPM_DTYPE_F16 && p.kv_dtype != MINICPM_DTYPE_BF16)
        fail(MINICPM_STATUS_INVALID_ARGUMENT,
             "context: kv_dtype " + std::to_string(p.kv_dtype) + " is not a minicpm_dtype");
    const int32_t n_ctx = p.n_ctx == 0 ? n_train : p.n_ctx;
    if (int64_t(blocks_for(n_ctx)) * p.n_seq_max > INT32_MAX)
        fail(MINICPM_STATUS_TOO_LARGE, "context: n_seq_max " + std::to_string(p.n_seq_max) + " x n_ctx " +
                                           std::to_string(n_ctx) + " is too many KV blocks");
    return n_ctx;
}

static int32_t pool_blocks(const minicpm_context_params & p, int32_t n_ctx) { return blocks_for(n_ctx) * p.n_seq_max; }

context::context(const model & m, const minicpm_context_params & p)
    : model_(m),
      ops_(p.use_reference ? cpu_reference_ops() : cpu_fast_ops()),
      n_ctx_(checked_n_ctx(m, p)),
      n_chunk_(p.n_chunk),
      pool_(p.n_threads),
      kv_(m.config(), dtype(p.kv_dtype), pool_blocks(p, n_ctx_)),
      seqs_(size_t(p.n_seq_max)) {
    // Block tables never reallocate, so segment pointers into them stay valid during an eval.
    for (sequence & s : seqs_) s.blocks.reserve(size_t(blocks_for(n_ctx_)));
}

void context::check_seq(int32_t seq_id) const {
    if (seq_id < 0 || seq_id >= int32_t(seqs_.size()))
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "seq id " + std::to_string(seq_id) + " is out of range [0, " +
                                                  std::to_string(seqs_.size()) + ")");
}

void context::release_blocks_beyond(sequence & s, int32_t n_tokens) {
    const size_t keep = size_t(blocks_for(n_tokens));
    while (s.blocks.size() > keep) {
        kv_.release(s.blocks.back());
        s.blocks.pop_back();
    }
}

int32_t context::seq_len(int32_t seq_id) const {
    check_seq(seq_id);
    return seqs_[size_t(seq_id)].n_tokens;
}

void context::seq_truncate(int32_t seq_id, int32_t n_keep) {
    check_seq(seq_id);
    if (n_keep < 0) fail(MINICPM_STATUS_INVALID_ARGUMENT, "seq_truncate: n_keep " + std::to_string(n_keep) + " < 0");
    sequence & s = seqs_[size_t(seq_id)];
    if (n_keep >= s.n_tokens) return;
    s.n_tokens = n_keep;
    release_blocks_beyond(s, n_keep);
}

int32_t context::eval(const int32_t * tokens, const int32_t * seq_ids, const uint8_t * output, int32_t n,
                      float * logits, int64_t logits_cap) {
    const int32_t n_vocab = model_.config().n_vocab;
    const int32_t n_seq = int32_t(seqs_.size());

    // 1. Validate everything; nothing has changed yet.
    if (n <= 0) fail(MINICPM_STATUS_INVALID_ARGUMENT, "eval: n_tokens " + std::to_string(n) + " must be >= 1");
    if (!tokens) fail(MINICPM_STATUS_INVALID_ARGUMENT, "eval: tokens is NULL");
    seg_count_.assign(size_t(n_seq), 0);
    int32_t n_out = 0;
    for (int32_t i = 0; i < n; ++i) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "eval: token id " + std::to_string(tokens[i]) + " at index " +
                                                      std::to_string(i) + " is out of range [0, " +
                                                      std::to_string(n_vocab) + ")");
        const int32_t s = seq_ids ? seq_ids[i] : 0;
        if (s < 0 || s >= n_seq)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "eval: seq id " + std::to_string(s) + " at index " +
                                                      std::to_string(i) + " is out of range [0, " +
                                                      std::to_string(n_seq) + ")");
        ++seg_count_[size_t(s)];
        if (output ? output[i] != 0 : i == n - 1) ++n_out;
    }
    for (int32_t s = 0; s < n_seq; ++s) {
        const int64_t after = int64_t(seqs_[size_t(s)].n_tokens) + seg_count_[size_t(s)];
        if (seg_count_[size_t(s)] > 0 && after > n_ctx_)
            fail(MINICPM_STATUS_TOO_LARGE, "eval: sequence " + std::to_string(s) + " holds " +
                                               std::to_string(seqs_[size_t(s)].n_tokens) + " tokens; " +
                                               std::to_string(seg_count_[size_t(s)]) + " more exceed n_ctx " +
                                               std::to_string(n_ctx_));
    }
    if (n_out > 0 && !logits) fail(MINICPM_STATUS_INVALID_ARGUMENT, "eval: logits is NULL but rows are requested");
    if (logits_cap < int64_t(n_out) * n_vocab)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "eval: logits capacity " + std::to_string(logits_cap) + " floats < " +
                                                  std::to_string(n_out) + " rows x " + std::to_string(n_vocab));

    // 2. Group the tokens by sequence (stable, so each sequence keeps its order): a counting sort.
    seg_off_.assign(size_t(n_seq), 0);
    for (int32_t s = 1; s < n_seq; ++s) seg_off_[size_t(s)] = seg_off_[size_t(s - 1)] + seg_count_[size_t(s - 1)];
    order_.resize(size_t(n));
    tokens_.resize(size_t(n));
    out_rank_.assign(size_t(n), -1);
    cursor_.assign(seg_off_.begin(), seg_off_.end());
    for (int32_t i = 0, rank = 0; i < n; ++i) {
        const int32_t row = cursor_[size_t(seq_ids ? seq_ids[i] : 0)]++;
        order_[size_t(row)] = i;
        tokens_[size_t(row)] = tokens[i];
        if (output ? output[i] != 0 : i == n - 1) out_rank_[size_t(i)] = rank++;
    }
    rows_.clear();
    dest_.clear();
    bool direct = true;  // the wanted rows come out in batch order: write straight into the caller's buffer
    for (int32_t row = 0; row < n; ++row) {
        const int32_t r = out_rank_[size_t(order_[size_t(row)])];
        if (r < 0) continue;
        direct = direct && r == int32_t(rows_.size());
        rows_.push_back(row);
        dest_.push_back(r);
    }

    // 3. Blocks for the new positions (the pool holds n_seq_max * n_ctx tokens, so this cannot run dry).
    auto rollback = [&]() {
        for (int32_t s = 0; s < n_seq; ++s) release_blocks_beyond(seqs_[size_t(s)], seqs_[size_t(s)].n_tokens);
    };
    for (int32_t s = 0; s < n_seq; ++s) {
        sequence & sq = seqs_[size_t(s)];
        const size_t need = size_t(blocks_for(int64_t(sq.n_tokens) + seg_count_[size_t(s)]));
        while (sq.blocks.size() < need) {
            const int32_t b = kv_.alloc();
            if (b < 0) {
                rollback();
                fail(MINICPM_STATUS_INTERNAL, "eval: KV pool exhausted");
            }
            sq.blocks.push_back(b);
        }
    }

    // 4. Forward in pieces of n_chunk rows; a piece may cut a sequence anywhere, its n_past follows.
    float * out = direct ? logits : nullptr;
    if (!direct) {
        logits_tmp_.resize(size_t(n_out) * size_t(n_vocab));
        out = logits_tmp_.data();
    }
    try {
        const int32_t chunk = n_chunk_ > 0 ? n_chunk_ : n;
        size_t        k = 0;  // next entry of rows_
        for (int32_t begin = 0; begin < n; begin += chunk) {
            const int32_t end = std::min(n, begin + chunk);
            segs_.clear();
            for (int32_t s = 0; s < n_seq; ++s) {
                const int32_t lo = std::max(begin, seg_off_[size_t(s)]);
                const int32_t hi = std::min(end, seg_off_[size_t(s)] + seg_count_[size_t(s)]);
                if (lo >= hi) continue;
                kv_segment sg;
                sg.row_begin = lo - begin;
                sg.n_rows = hi - lo;
                sg.n_past = seqs_[size_t(s)].n_tokens + (lo - seg_off_[size_t(s)]);
                sg.blocks = seqs_[size_t(s)].blocks.data();
                segs_.push_back(sg);
            }
            local_rows_.clear();
            const size_t k0 = k;
            for (; k < rows_.size() && rows_[k] < end; ++k) local_rows_.push_back(rows_[k] - begin);

            batch_view b;
            b.tokens = tokens_.data() + begin;
            b.n_tokens = end - begin;
            b.segs = segs_.data();
            b.n_segs = int32_t(segs_.size());
            b.logit_rows = local_rows_.data();
            b.n_logit_rows = int32_t(local_rows_.size());
            model_.forward(ops_, pool_, kv_, b, out ? out + k0 * size_t(n_vocab) : nullptr, scratch_);
        }
    } catch (...) {
        rollback();
        throw;
    }
    for (int32_t s = 0; s < n_seq; ++s) seqs_[size_t(s)].n_tokens += seg_count_[size_t(s)];

    if (!direct)
        for (size_t j = 0; j < rows_.size(); ++j)
            std::memcpy(logits + size_t(dest_[j]) * size_t(n_vocab), logits_tmp_.data() + j * size_t(n_vocab),
                        size_t(n_vocab) * sizeof(float));
    return n_out;
}

}  // namespace minicpm
