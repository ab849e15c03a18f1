#include "engine/context.h"

#include "core/status.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>

namespace minicpm {

static int32_t blocks_for(int64_t n_tokens) { return kv_blocks_for(n_tokens); }

static backend_options options_of(const minicpm_context_params & p) {
    backend_options o;
    o.n_threads = p.n_threads;
    o.reference = p.use_reference != 0;
    if (p.exact_kernels != 0 && !o.reference) o.kernels = "exact";
    return o;
}

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
      be_(m.make_backend(options_of(p))),
      n_ctx_(checked_n_ctx(m, p)),
      n_chunk_(p.n_chunk),
      kv_(*be_, m.config(), dtype(p.kv_dtype), pool_blocks(p, n_ctx_)),
      seqs_(size_t(p.n_seq_max)) {
    // Block tables never reallocate, so segment pointers into them stay valid during an eval.
    for (kv_seq & s : seqs_) s.blocks.reserve(size_t(blocks_for(n_ctx_)));
}

context::~context() { model_.release_workspace(*be_, ws_); }

void context::check_seq(int32_t seq_id) const {
    if (seq_id < 0 || seq_id >= int32_t(seqs_.size()))
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "seq id " + std::to_string(seq_id) + " is out of range [0, " +
                                                  std::to_string(seqs_.size()) + ")");
}

int32_t context::seq_len(int32_t seq_id) const {
    check_seq(seq_id);
    return seqs_[size_t(seq_id)].n_tokens;
}

void context::seq_truncate(int32_t seq_id, int32_t n_keep) {
    check_seq(seq_id);
    if (n_keep < 0) fail(MINICPM_STATUS_INVALID_ARGUMENT, "seq_truncate: n_keep " + std::to_string(n_keep) + " < 0");
    kv_seq_truncate(kv_, seqs_[size_t(seq_id)], n_keep);
}

void context::seq_fork(int32_t src, int32_t dst, int32_t n) {
    check_seq(src);
    check_seq(dst);
    if (src == dst) fail(MINICPM_STATUS_INVALID_ARGUMENT, "seq_fork: source and destination are the same");
    if (n < 0 || n > seqs_[size_t(src)].n_tokens)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "seq_fork: prefix of " + std::to_string(n) + " tokens, source holds " +
                                                  std::to_string(seqs_[size_t(src)].n_tokens));
    kv_seq_free(kv_, seqs_[size_t(dst)]);
    kv_seq_fork(kv_, seqs_[size_t(src)], n, seqs_[size_t(dst)]);
}

void context::seq_compact(int32_t seq_id, const int32_t * src_slots, const int32_t * dst_slots, int32_t n,
                          int32_t n_keep) {
    check_seq(seq_id);
    kv_seq & s = seqs_[size_t(seq_id)];
    int32_t lo = s.n_tokens;
    for (int32_t i = 0; i < n; ++i) {
        if (src_slots[i] < 0 || src_slots[i] >= s.n_tokens || dst_slots[i] < 0 || dst_slots[i] >= s.n_tokens)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "seq_compact: slot outside the sequence's " +
                                                      std::to_string(s.n_tokens) + " tokens");
        lo = std::min(lo, dst_slots[i]);
    }
    if (!kv_seq_prepare(kv_, s, lo, s.n_tokens)) fail(MINICPM_STATUS_OUT_OF_MEMORY, "seq_compact: KV pool exhausted");
    kv_seq_copy_rows(kv_, s, src_slots, dst_slots, n);
    kv_seq_truncate(kv_, s, n_keep);
}

void context::eval_tree(int32_t seq_id, const int32_t * tokens, const int32_t * pos, const uint64_t * mask,
                        int32_t n, float * logits) {
    check_seq(seq_id);
    const int32_t n_vocab = model_.config().n_vocab;
    if (n <= 0 || n > k_max_tree_rows || !tokens || !pos || !logits)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "eval_tree: 1.." + std::to_string(k_max_tree_rows) +
                                                  " rows with tokens, positions and a logits buffer");
    for (int32_t i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "eval_tree: token id " + std::to_string(tokens[i]) + " out of range");
    kv_seq & s = seqs_[size_t(seq_id)];
    if (int64_t(s.n_tokens) + n > n_ctx_)
        fail(MINICPM_STATUS_TOO_LARGE, "eval_tree: " + std::to_string(n) + " rows exceed n_ctx " + std::to_string(n_ctx_));
    if (!kv_seq_prepare(kv_, s, s.n_tokens, s.n_tokens + n))
        fail(MINICPM_STATUS_OUT_OF_MEMORY, "eval_tree: KV pool exhausted");
    kv_segment sg;
    sg.row_begin = 0;
    sg.n_rows = n;
    sg.n_past = s.n_tokens;
    sg.blocks = s.blocks.data();
    sg.mask = mask;
    local_rows_.resize(size_t(n));
    for (int32_t i = 0; i < n; ++i) local_rows_[size_t(i)] = i;
    batch_view b;
    b.tokens = tokens;
    b.pos = pos;
    b.n_tokens = n;
    b.segs = &sg;
    b.n_segs = 1;
    b.logit_rows = local_rows_.data();
    b.n_logit_rows = n;
    try {
        model_.forward(*be_, ws_, kv_, b, logits);
    } catch (...) {
        kv_seq_truncate(kv_, s, s.n_tokens);
        throw;
    }
    s.n_tokens += n;
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

    // 3. Writable blocks for the new slots (shared ones are copied first).
    auto rollback = [&]() {
        for (int32_t s = 0; s < n_seq; ++s) kv_seq_truncate(kv_, seqs_[size_t(s)], seqs_[size_t(s)].n_tokens);
    };
    for (int32_t s = 0; s < n_seq; ++s) {
        kv_seq & sq = seqs_[size_t(s)];
        if (seg_count_[size_t(s)] == 0) continue;
        if (!kv_seq_prepare(kv_, sq, sq.n_tokens, sq.n_tokens + seg_count_[size_t(s)])) {
            rollback();
            fail(MINICPM_STATUS_OUT_OF_MEMORY, "eval: KV pool exhausted (shared blocks need copies)");
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
            model_.forward(*be_, ws_, kv_, b, out ? out + k0 * size_t(n_vocab) : nullptr);
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
