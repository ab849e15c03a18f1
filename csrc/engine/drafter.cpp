#include "engine/drafter.h"

#include "core/status.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace minicpm {

int32_t draft_tree_clip(draft_tree & t, int32_t n_vocab, int32_t max_nodes, int32_t max_depth) {
    const int32_t n = std::min<int32_t>(int32_t(std::min(t.tokens.size(), t.parents.size())), max_nodes);
    std::vector<int32_t> depth(size_t(std::max(n, 0)), 0);
    int32_t k = 0;
    for (; k < n; ++k) {
        const int32_t tok = t.tokens[size_t(k)], p = t.parents[size_t(k)];
        if (tok < 0 || tok >= n_vocab || p < -1 || p >= k) break;
        depth[size_t(k)] = p < 0 ? 1 : depth[size_t(p)] + 1;
        if (depth[size_t(k)] > max_depth) break;
    }
    k = std::max(k, 0);
    t.tokens.resize(size_t(k));
    t.parents.resize(size_t(k));
    t.scores.resize(size_t(k), 0.0f);
    return k;
}

bool draft_tree_layout(const draft_tree & t, int32_t n_past, uint64_t * mask, int32_t * pos) {
    bool chain = true;
    mask[0] = 0;
    pos[0] = n_past;
    for (int32_t i = 0; i < t.size(); ++i) {
        const int32_t p = t.parents[size_t(i)];  // node p is row p + 1; the root is row 0
        const int32_t prow = p + 1;
        chain = chain && p == i - 1;
        mask[i + 1] = mask[prow] | (uint64_t(1) << prow);
        pos[i + 1] = pos[prow] + 1;
    }
    return chain;
}

// ---------------------------------------------------------------------------------------------------------
// model_drafter

model_drafter::model_drafter(const model & draft, int32_t target_vocab, backend & be, dtype kv_type,
                             int32_t kv_blocks, const tree_shape & shape)
    : model_(draft), be_(be), kv_(be, draft.config(), kv_type, kv_blocks), shape_(shape),
      n_vocab_(draft.config().n_vocab) {
    if (n_vocab_ != target_vocab)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "draft model: vocabulary of " + std::to_string(n_vocab_) +
                                                  " tokens, the target has " + std::to_string(target_vocab) +
                                                  " (a draft LLM must share the target's tokenizer)");
    check_tree_shape(shape);
}

void check_tree_shape(const tree_shape & shape) {
    if (shape.num_iter < 1 || shape.top_k < 1 || shape.tree_size < 2 || shape.tree_size > k_max_tree_rows ||
        int64_t(shape.top_k) * (shape.num_iter - 1) > k_max_tree_rows)
        fail(MINICPM_STATUS_INVALID_ARGUMENT,
             "draft tree: num_iter >= 1, top_k >= 1, tree_size in [2, 64] and top_k * (num_iter - 1) <= 64, got " +
                 std::to_string(shape.num_iter) + " / " + std::to_string(shape.top_k) + " / " +
                 std::to_string(shape.tree_size));
}

model_drafter::~model_drafter() {
    for (auto & [id, st] : states_) kv_seq_free(kv_, st.kv);
    model_.release_workspace(be_, ws_);
}

void model_drafter::release(uint64_t id) {
    auto it = states_.find(id);
    if (it == states_.end()) return;
    kv_seq_free(kv_, it->second.kv);
    states_.erase(it);
}

bool model_drafter::run(state & st, const int32_t * tokens, const int32_t * pos, const uint64_t * mask, int32_t n,
                        const int32_t * logit_rows, int32_t n_logit_rows, float * logits) {
    const int32_t n_past = st.kv.n_tokens;
    if (!kv_seq_prepare(kv_, st.kv, n_past, n_past + n)) return false;
    kv_segment sg;
    sg.row_begin = 0;
    sg.n_rows = n;
    sg.n_past = n_past;
    sg.blocks = st.kv.blocks.data();
    sg.mask = mask;
    batch_view b;
    b.tokens = tokens;
    b.pos = pos;
    b.n_tokens = n;
    b.segs = &sg;
    b.n_segs = 1;
    b.logit_rows = logit_rows;
    b.n_logit_rows = n_logit_rows;
    try {
        model_.forward(be_, ws_, kv_, b, logits);
    } catch (...) {
        kv_seq_truncate(kv_, st.kv, n_past);
        throw;
    }
    if (!allowed_.empty()) {
        constexpr float neg_inf = -std::numeric_limits<float>::infinity();
        for (int32_t r = 0; r < n_logit_rows; ++r) {
            float * l = logits + size_t(r) * size_t(n_vocab_);
            for (int32_t i = 0; i < n_vocab_; ++i)
                if (!allowed_[size_t(i)]) l[i] = neg_inf;
        }
    }
    return true;
}

void model_drafter::restrict_vocab(const std::vector<int32_t> & ids, int32_t n) {
    n = std::min<int32_t>(n, int32_t(ids.size()));
    if (n <= 0) {
        allowed_.clear();
        n_allowed_ = 0;
        return;
    }
    std::vector<char> a(size_t(n_vocab_), 0);
    int32_t           k = 0;
    for (int32_t j = 0; j < n; ++j) {
        const int32_t id = ids[size_t(j)];
        if (id < 0 || id >= n_vocab_)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "draft vocabulary: entry " + std::to_string(j) + " = " +
                                                      std::to_string(id) + " is outside [0, " +
                                                      std::to_string(n_vocab_) + ")");
        k += !a[size_t(id)];
        a[size_t(id)] = 1;
    }
    allowed_.swap(a);
    n_allowed_ = k;
}

// The k best tokens of one logit row with their log-softmax, best first (ties: lower id).
void top_k_logprobs(const float * l, int32_t n, int32_t k, std::vector<std::pair<float, int32_t>> & out) {
    out.clear();
    auto worse = [](const std::pair<float, int32_t> & a, const std::pair<float, int32_t> & b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    float mx = -std::numeric_limits<float>::infinity();
    for (int32_t i = 0; i < n; ++i) mx = std::max(mx, l[i]);
    double z = 0.0;
    for (int32_t i = 0; i < n; ++i) z += std::exp(double(l[i] - mx));
    const float lse = mx + float(std::log(z));
    for (int32_t i = 0; i < n; ++i) {
        if (!(l[i] > -std::numeric_limits<float>::infinity())) continue;
        const std::pair<float, int32_t> c(l[i], i);
        if (int32_t(out.size()) < k) {
            out.push_back(c);
            std::push_heap(out.begin(), out.end(), worse);
        } else if (worse(c, out.front())) {
            std::pop_heap(out.begin(), out.end(), worse);
            out.back() = c;
            std::push_heap(out.begin(), out.end(), worse);
        }
    }
    std::sort_heap(out.begin(), out.end(), worse);
    for (auto & c : out) c.first -= lse;
}

void keep_best_children(const std::vector<tree_candidate> & cands, std::vector<int32_t> & children, int32_t k,
                        int32_t chain_child, std::vector<int32_t> & chain) {
    std::stable_sort(children.begin(), children.end(),
                     [&](int32_t a, int32_t b) { return cands[size_t(a)].score > cands[size_t(b)].score; });
    if (int32_t(children.size()) > k) children.resize(size_t(k));
    if (chain_child >= 0) {
        if (std::find(children.begin(), children.end(), chain_child) == children.end()) children.back() = chain_child;
        chain.push_back(chain_child);
    }
}

void select_draft_tree(const std::vector<tree_candidate> & cands, const std::vector<int32_t> & chain, int32_t S,
                       draft_tree & out) {
    std::vector<char>    kept(cands.size(), 0);
    std::vector<int32_t> sel;
    for (int32_t ci : chain) {
        if (int32_t(sel.size()) >= S) break;
        kept[size_t(ci)] = 1;
        sel.push_back(ci);
    }
    std::vector<int32_t> order(cands.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = int32_t(i);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        const tree_candidate & x = cands[size_t(a)];
        const tree_candidate & y = cands[size_t(b)];
        return x.score > y.score || (x.score == y.score && x.depth < y.depth);
    });
    for (int32_t ci : order) {
        if (int32_t(sel.size()) >= S) break;
        const tree_candidate & cd = cands[size_t(ci)];
        if (kept[size_t(ci)] || (cd.parent >= 0 && !kept[size_t(cd.parent)])) continue;
        kept[size_t(ci)] = 1;
        sel.push_back(ci);
    }
    std::stable_sort(sel.begin(), sel.end(), [&](int32_t a, int32_t b) {
        const tree_candidate & x = cands[size_t(a)];
        const tree_candidate & y = cands[size_t(b)];
        return x.depth < y.depth || (x.depth == y.depth && x.score > y.score);
    });
    std::vector<int32_t> node_of(cands.size(), -1);
    for (size_t i = 0; i < sel.size(); ++i) {
        const tree_candidate & cd = cands[size_t(sel[i])];
        node_of[size_t(sel[i])] = int32_t(i);
        out.add(cd.token, cd.parent >= 0 ? node_of[size_t(cd.parent)] : -1, cd.score);
    }
}

bool model_drafter::catch_up(uint64_t id, state & st, const int32_t * tokens, int32_t n) {
    // At least the last token is run again: its logits start the tree.
    const int32_t K = shape_.top_k;
    int32_t c = 0;
    const int32_t held = int32_t(st.tokens.size());
    while (c < held && c < n && st.tokens[size_t(c)] == tokens[c]) ++c;
    c = std::min(c, n - 1);
    kv_seq_truncate(kv_, st.kv, c);
    st.tokens.resize(size_t(c));
    logits_.resize(size_t(std::max(K, 1)) * size_t(n_vocab_));
    constexpr int32_t k_piece = 256;
    for (int32_t begin = c; begin < n; begin += k_piece) {
        const int32_t end = std::min(n, begin + k_piece);
        const int32_t last = end - begin - 1;
        if (!run(st, tokens + begin, nullptr, nullptr, end - begin, &last, end == n ? 1 : 0, logits_.data())) {
            release(id);  // the draft pool is dry: this request goes without drafts for now
            return false;
        }
        st.kv.n_tokens += end - begin;
        st.tokens.insert(st.tokens.end(), tokens + begin, tokens + end);
    }
    return true;
}

int32_t speculative_accept(std::vector<double> & p, std::vector<double> & q, const int32_t * children,
                           int32_t n_children, rng & r, int32_t * token) {
    const size_t n = p.size();
    for (int32_t c = 0; c < n_children; ++c) {
        const int32_t x = children[c];
        const double  px = p[size_t(x)], qx = q[size_t(x)];
        // A child q could not have drawn (qx = 0) is skipped: it carries no sample of q.
        if (qx > 0.0 && r.uniform() * qx < px) {
            *token = x;
            return c;
        }
        if (qx <= 0.0) continue;
        double zp = 0.0;
        for (size_t i = 0; i < n; ++i) zp += std::max(0.0, p[i] - q[i]);
        if (zp > 0.0) {
            for (size_t i = 0; i < n; ++i) p[i] = std::max(0.0, p[i] - q[i]) / zp;
        } else {  // p == q up to rounding: rejection had probability 0
            p[size_t(x)] = 0.0;
        }
        const double zq = 1.0 - q[size_t(x)];
        q[size_t(x)] = 0.0;
        if (zq > 0.0) {
            for (size_t i = 0; i < n; ++i) q[i] /= zq;
        }
    }
    double total = 0.0;
    for (size_t i = 0; i < n; ++i) total += p[i];
    double  u = r.uniform() * total;
    int32_t last = -1;
    for (size_t i = 0; i < n; ++i) {
        if (p[i] <= 0.0) continue;
        last = int32_t(i);
        u -= p[i];
        if (u < 0.0) break;
    }
    *token = last;
    return -1;
}

void model_drafter::draft_sampled(uint64_t id, const int32_t * tokens, int32_t n, int32_t max_nodes,
                                  int32_t max_depth, const minicpm_sampling_params & sp, draft_tree & out) {
    out.clear();
    const int32_t D = std::min(shape_.num_iter, max_depth);
    const int32_t S = std::min(shape_.tree_size - 1, max_nodes);
    const int32_t K = shape_.top_k;
    if (D <= 0 || S <= 0 || n <= 0 || int64_t(n) + D > model_.config().n_ctx_train) return;
    state & st = states_[id];
    if (!catch_up(id, st, tokens, n)) return;
    if (!st.smp) {
        minicpm_sampling_params p = sp;
        p.repetition_penalty = 1.0f, p.presence_penalty = 0.0f, p.frequency_penalty = 0.0f;
        p.logprobs = 0, p.n_top_logprobs = 0, p.ignore_eos = 1;
        p.seed = sp.seed ^ 0x9e3779b97f4a7c15ull;  // independent of the target's stream
        st.smp = std::make_unique<sampler>(p, n_vocab_, std::vector<int32_t>{}, nullptr, 0, nullptr, nullptr, 0,
                                           nullptr, 0);
    }
    // Fixed shape: level d holds width[d] children of the chain node of level d - 1 (the root for d = 1).
    const int32_t depth = std::min(D, S);
    std::vector<int32_t> width(size_t(depth), 1);
    int32_t extra = S - depth;
    for (int32_t d = 0; d < depth && extra > 0; ++d) {
        const int32_t add = std::min(extra, K - 1);
        width[size_t(d)] += add;
        extra -= add;
    }
    out.q.assign(size_t(S) + 1, {});
    int32_t chain_row = 0;  // row whose children level d draws
    for (int32_t d = 0; d < depth; ++d) {
        if (d > 0) {
            // Draft logits at the chain node of the previous level (kept in the draft KV until the end).
            const int32_t tok = out.tokens[size_t(chain_row - 1)];
            const int32_t pos = n + d - 1;
            const int32_t row = 0;
            if (!run(st, &tok, &pos, nullptr, 1, &row, 1, logits_.data())) break;
            st.kv.n_tokens++;
        }
        int32_t best = -1;
        const double total = st.smp->distribution(logits_.data(), scratch_, &best);
        if (!(total > 0.0)) break;
        std::vector<std::pair<int32_t, float>> & q = out.q[size_t(chain_row)];
        std::vector<double> w;
        q.reserve(scratch_.cand.size());
        for (const auto & c : scratch_.cand) {
            q.emplace_back(c.second, float(c.first / total));
            w.push_back(c.first);
        }
        // width[d] draws without replacement.
        const int32_t parent = chain_row - 1;
        double        left = total;
        int32_t       first = -1;
        for (int32_t j = 0; j < width[size_t(d)] && left > 0.0; ++j) {
            double u = st.smp->random().uniform() * left;
            size_t pick = w.size();
            for (size_t i = 0; i < w.size(); ++i) {
                if (w[i] <= 0.0) continue;
                pick = i;
                u -= w[i];
                if (u < 0.0) break;
            }
            if (pick == w.size()) break;
            left -= w[pick];
            w[pick] = 0.0;
            if (first < 0) first = out.size();
            out.add(q[pick].first, parent, float(std::log(std::max(1e-30, double(q[pick].second)))));
        }
        if (first < 0) break;
        chain_row = first + 1;
    }
    kv_seq_truncate(kv_, st.kv, n);  // the chain rows leave the draft KV again
    out.q.resize(size_t(out.size()) + 1);
}

void model_drafter::draft(uint64_t id, const int32_t * tokens, int32_t n, int32_t max_nodes, int32_t max_depth,
                          draft_tree & out) {
    out.clear();
    const int32_t D = std::min(shape_.num_iter, max_depth);
    const int32_t S = std::min(shape_.tree_size - 1, max_nodes);
    const int32_t K = shape_.top_k;
    if (D <= 0 || S <= 0 || n <= 0 || int64_t(n) + D > model_.config().n_ctx_train) return;
    state & st = states_[id];

    // 1. Roll back to the longest prefix the draft KV already holds and catch up.
    if (!catch_up(id, st, tokens, n)) return;

    // 2. EAGLE-2 dynamic tree: level 1 is the top-k of the last row; each further level expands the current
    //    frontier (top-k nodes by cumulative score) in one masked run and keeps the top-k of all children.
    std::vector<tree_candidate>            cands;
    std::vector<std::pair<float, int32_t>> top;
    top_k_logprobs(logits_.data(), n_vocab_, K, top);
    std::vector<int32_t> frontier, expanded, chain;
    for (const auto & [lp, tok] : top) {
        frontier.push_back(int32_t(cands.size()));
        cands.push_back({tok, -1, 1, lp});
    }
    if (cands.empty()) return;
    chain.push_back(0);  // the draft's greedy chain
    for (int32_t d = 2; d <= D; ++d) {
        std::vector<int32_t> batch = expanded;
        batch.insert(batch.end(), frontier.begin(), frontier.end());
        const int32_t nb = int32_t(batch.size());
        if (nb > k_max_tree_rows) break;
        std::vector<int32_t> row_of(cands.size(), -1);
        toks_.resize(size_t(nb));
        pos_.resize(size_t(nb));
        mask_.assign(size_t(nb), 0);
        rows_.clear();
        for (int32_t j = 0; j < nb; ++j) {
            const tree_candidate & cd = cands[size_t(batch[size_t(j)])];
            row_of[size_t(batch[size_t(j)])] = j;
            toks_[size_t(j)] = cd.token;
            pos_[size_t(j)] = n + cd.depth - 1;
            if (cd.parent >= 0) {
                const int32_t pr = row_of[size_t(cd.parent)];  // parents are expanded, hence earlier rows
                mask_[size_t(j)] = mask_[size_t(pr)] | (uint64_t(1) << pr);
            }
            if (j >= int32_t(expanded.size())) rows_.push_back(j);
        }
        logits_.resize(rows_.size() * size_t(n_vocab_));
        if (!run(st, toks_.data(), pos_.data(), mask_.data(), nb, rows_.data(), int32_t(rows_.size()), logits_.data()))
            break;
        kv_seq_truncate(kv_, st.kv, st.kv.n_tokens);  // the tree rows leave the draft KV again
        std::vector<int32_t> children;
        int32_t              chain_child = -1;
        for (size_t f = 0; f < frontier.size(); ++f) {
            const int32_t fi = frontier[f];
            top_k_logprobs(logits_.data() + f * size_t(n_vocab_), n_vocab_, K, top);
            for (size_t t = 0; t < top.size(); ++t) {
                if (fi == chain.back() && t == 0) chain_child = int32_t(cands.size());
                children.push_back(int32_t(cands.size()));
                cands.push_back({top[t].second, fi, d, cands[size_t(fi)].score + top[t].first});
            }
        }
        expanded.insert(expanded.end(), frontier.begin(), frontier.end());
        keep_best_children(cands, children, K, chain_child, chain);
        frontier = children;
    }

    // 3. Keep tree_size - 1 nodes: the greedy chain, then the best cumulative scores whose parent is kept.
    select_draft_tree(cands, chain, S, out);
}

}  // namespace minicpm
