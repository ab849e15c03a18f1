#include "engine/eagle-drafter.h"

#include "core/status.h"

#include <algorithm>
#include <chrono>

namespace minicpm {

eagle_drafter::eagle_drafter(std::unique_ptr<eagle_head> head, backend & be, dtype kv_type, int32_t kv_blocks,
                             const tree_shape & shape)
    : owned_(std::move(head)), head_(*owned_), be_(be), kv_(be, head_.config(), kv_type, kv_blocks), shape_(shape),
      H_(head_.config().n_embd) {
    check_tree_shape(shape);
}

eagle_drafter::~eagle_drafter() {
    for (auto & [id, st] : states_) kv_seq_free(kv_, st.kv);
    head_.release_workspace(be_, ws_);
}

void eagle_drafter::release(uint64_t id) {
    auto it = states_.find(id);
    if (it == states_.end()) return;
    kv_seq_free(kv_, it->second.kv);
    states_.erase(it);
}

void eagle_drafter::observe(uint64_t id, int32_t pos, const float * hidden, int32_t n) {
    if (n <= 0) return;
    state &       st = states_[id];
    const int32_t next = st.base < 0 ? pos : st.base + st.kv.n_tokens + pending_rows(st);
    if (pos > next || st.base < 0) {  // first rows, or a gap (a prefix-cache hit after preemption): start over
        kv_seq_free(kv_, st.kv);
        st.base = pos;
        st.pending.clear();
        st.last.clear();
    }
    const int32_t skip = std::max(0, next - pos);  // rows sent again after preemption are already held
    if (skip >= n) return;
    st.pending.insert(st.pending.end(), hidden + size_t(skip) * size_t(H_), hidden + size_t(n) * size_t(H_));
}

bool eagle_drafter::run(state & st, const int32_t * tokens, const float * hidden, const int32_t * pos,
                        const uint64_t * mask, int32_t n, const int32_t * logit_rows, int32_t n_logit_rows) {
    const int32_t n_past = st.kv.n_tokens;
    if (!kv_seq_prepare(kv_, st.kv, n_past, n_past + n)) return false;
    kv_segment sg;
    sg.n_rows = n;
    sg.n_past = n_past;
    sg.blocks = st.kv.blocks.data();
    sg.mask = mask;
    feat_.resize(size_t(n) * size_t(H_));
    logits_.resize(size_t(std::max(n_logit_rows, 1)) * size_t(head_.vocab_size()));
    const auto t0 = std::chrono::steady_clock::now();
    try {
        head_.forward(be_, ws_, kv_, sg, tokens, hidden, pos, n, feat_.data(), logit_rows, n_logit_rows, logits_.data());
    } catch (...) {
        kv_seq_truncate(kv_, st.kv, n_past);
        throw;
    }
    head_us_ += std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
    return true;
}

void eagle_drafter::draft(uint64_t id, const int32_t * tokens, int32_t n, int32_t max_nodes, int32_t max_depth,
                          draft_tree & out) {
    out.clear();
    const int32_t D = std::min(shape_.num_iter, max_depth);
    const int32_t S = std::min(shape_.tree_size - 1, max_nodes);
    const int32_t K = shape_.top_k, H = H_, NV = head_.vocab_size();
    if (D <= 0 || S <= 0 || n < 2 || int64_t(n) + D > head_.config().n_ctx_train) return;
    auto it = states_.find(id);
    if (it == states_.end() || it->second.base < 0) return;
    state & st = it->second;

    // 1. Catch up: the rows p = base + kv.n_tokens .. n - 2 (h_p with token p + 1) go into the head's KV; the
    //    last one's feature and logits start the tree. With nothing new, the last row runs again.
    int32_t from = st.base + st.kv.n_tokens;
    if (pending_rows(st) == 0) {
        if (st.kv.n_tokens == 0 || st.last.empty()) return;
        kv_seq_truncate(kv_, st.kv, st.kv.n_tokens - 1);
        st.pending = st.last;
        from -= 1;
    }
    const int32_t last_p = n - 2;
    if (from > last_p || from + pending_rows(st) - 1 < last_p) return;  // rows out of step with the tokens
    constexpr int32_t k_piece = 256;
    for (int32_t begin = from; begin <= last_p; begin += k_piece) {
        const int32_t end = std::min(last_p + 1, begin + k_piece), m = end - begin;
        toks_.resize(size_t(m));
        pos_.resize(size_t(m));
        for (int32_t j = 0; j < m; ++j) toks_[size_t(j)] = tokens[begin + j + 1], pos_[size_t(j)] = begin + j;
        const int32_t lr = m - 1;
        const float * h = st.pending.data() + size_t(begin - from) * size_t(H);
        if (!run(st, toks_.data(), h, pos_.data(), nullptr, m, &lr, end == last_p + 1 ? 1 : 0)) {
            release(id);  // the head's pool is dry: this request goes without drafts for now
            return;
        }
        st.kv.n_tokens += m;
    }
    const size_t used = size_t(last_p + 1 - from) * size_t(H);
    st.last.assign(st.pending.begin() + ptrdiff_t(used - size_t(H)), st.pending.begin() + ptrdiff_t(used));
    st.pending.erase(st.pending.begin(), st.pending.begin() + ptrdiff_t(used));
    const int32_t n_committed = st.kv.n_tokens;

    // 2. EAGLE-2 dynamic tree: level 1 is the top-k of the last row; each further level runs the frontier (with
    //    the expanded nodes before it, for the mask) and keeps the top-k of all children by cumulative score.
    //    Candidate c enters the head as (its token, cin[c]): the feature of the row that proposed it.
    std::vector<tree_candidate>            cands;
    std::vector<float>                     cin;
    std::vector<std::pair<float, int32_t>> top;
    const std::vector<float> f_last(feat_.end() - ptrdiff_t(H), feat_.end());
    top_k_logprobs(logits_.data(), NV, K, top);
    std::vector<int32_t> frontier, expanded, chain;
    for (const auto & [lp, col] : top) {
        frontier.push_back(int32_t(cands.size()));
        cands.push_back({head_.token_of(col), -1, 1, lp});
        cin.insert(cin.end(), f_last.begin(), f_last.end());
    }
    if (cands.empty()) return;
    chain.push_back(0);  // the head's greedy chain stays in the tree (see model_drafter)
    for (int32_t d = 2; d <= D; ++d) {
        std::vector<int32_t> batch = expanded;
        batch.insert(batch.end(), frontier.begin(), frontier.end());
        const int32_t nb = int32_t(batch.size());
        if (nb > k_max_tree_rows) break;
        std::vector<int32_t> row_of(cands.size(), -1);
        toks_.resize(size_t(nb));
        pos_.resize(size_t(nb));
        in_.resize(size_t(nb) * size_t(H));
        mask_.assign(size_t(nb), 0);
        rows_.clear();
        for (int32_t j = 0; j < nb; ++j) {
            const int32_t          ci = batch[size_t(j)];
            const tree_candidate & cd = cands[size_t(ci)];
            row_of[size_t(ci)] = j;
            toks_[size_t(j)] = cd.token;
            pos_[size_t(j)] = last_p + cd.depth;
            std::copy_n(cin.begin() + ptrdiff_t(size_t(ci) * size_t(H)), H, in_.begin() + ptrdiff_t(size_t(j) * size_t(H)));
            if (cd.parent >= 0) {
                const int32_t pr = row_of[size_t(cd.parent)];  // parents are expanded, hence earlier rows
                mask_[size_t(j)] = mask_[size_t(pr)] | (uint64_t(1) << pr);
            }
            if (j >= int32_t(expanded.size())) rows_.push_back(j);
        }
        const bool ok = run(st, toks_.data(), in_.data(), pos_.data(), mask_.data(), nb, rows_.data(),
                            int32_t(rows_.size()));
        kv_seq_truncate(kv_, st.kv, n_committed);  // the tree rows leave the head's KV again
        if (!ok) break;
        std::vector<int32_t> children;
        int32_t              chain_child = -1;
        for (size_t f = 0; f < frontier.size(); ++f) {
            const int32_t fi = frontier[f];
            const float * feat = feat_.data() + size_t(rows_[f]) * size_t(H);
            top_k_logprobs(logits_.data() + f * size_t(NV), NV, K, top);
            for (size_t t = 0; t < top.size(); ++t) {
                if (fi == chain.back() && t == 0) chain_child = int32_t(cands.size());
                children.push_back(int32_t(cands.size()));
                cands.push_back({head_.token_of(top[t].second), fi, d, cands[size_t(fi)].score + top[t].first});
                cin.insert(cin.end(), feat, feat + H);
            }
        }
        expanded.insert(expanded.end(), frontier.begin(), frontier.end());
        keep_best_children(cands, children, K, chain_child, chain);
        frontier = children;
    }

    // 3. tree_size - 1 nodes: the chain, then the best cumulative scores whose parent is kept.
    select_draft_tree(cands, chain, S, out);
}

}  // namespace minicpm
