// Speculative decoding: drafters propose a token tree that the scheduler verifies in one target step.
//
// A draft tree hangs below the request's last known token (the root, which the step runs anyway). Node i has a
// token and a parent: -1 for the root, otherwise an earlier node (< i), so parents come before children. The
// scheduler runs the root and every node as one masked segment (a node sees the committed tokens, the root and
// its ancestors), walks from the root sampling each visited row with the request's sampler and follows the
// child whose token equals the sample, keeps that path plus the sample after it (KV rows compacted into
// consecutive slots), truncates the rest and rolls the sampler back. Each emitted token is a sample of the
// target's own distribution, so greedy output equals plain greedy decoding token for token, and sampled output
// follows the target distribution. Drafters that draw their nodes (draft_sampled, out.q) are verified by
// speculative rejection sampling instead: same distribution, better acceptance, other tokens for a seed.
//
// Drafters run on the scheduler thread, without the engine lock, one request at a time.
#pragma once

#include "core/backend.h"
#include "model/kv-cache.h"
#include "model/minicpm4.h"
#include "engine/sampler.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

namespace minicpm {

struct draft_tree {
    std::vector<int32_t> tokens;
    std::vector<int32_t> parents;  // -1 = the root
    std::vector<float>   scores;   // optional: the drafter's cumulative log-probability of each node
    // Optional, for sampled drafts: q[r] is the (token, probability) distribution the children of row r (the
    // root is row 0, node i is row i + 1) were drawn from, without replacement, in node order. Verification
    // then accepts them by speculative rejection sampling (speculative_accept). An empty q[r] (or q) means the
    // children were chosen, not drawn (q one-hot at each child): verification matches tokens, which is the same
    // rule in distribution.
    std::vector<std::vector<std::pair<int32_t, float>>> q;

    void    clear() { tokens.clear(), parents.clear(), scores.clear(), q.clear(); }
    int32_t size() const { return int32_t(tokens.size()); }
    void    add(int32_t token, int32_t parent, float score = 0.0f) {
        tokens.push_back(token), parents.push_back(parent), scores.push_back(score);
    }
    // depth of node i (1 for a child of the root)
    int32_t depth(int32_t i) const {
        int32_t d = 1;
        for (int32_t p = parents[size_t(i)]; p >= 0; p = parents[size_t(p)]) ++d;
        return d;
    }
};

// Keeps the valid prefix of a tree: nodes [0, k) where node k is the first with an out-of-range token, a parent
// that is not an earlier node, or a depth above max_depth; then at most max_nodes nodes. Returns the size kept.
int32_t draft_tree_clip(draft_tree & t, int32_t n_vocab, int32_t max_nodes, int32_t max_depth);

// Ancestor masks and positions of the verify segment (root + nodes, n = 1 + nodes rows): mask[j] has bit i set
// when row i is a strict ancestor of row j (the root is row 0); pos[j] = n_past + depth (root: n_past).
// Returns true when the tree is a chain (mask not needed: causal).
bool draft_tree_layout(const draft_tree & t, int32_t n_past, uint64_t * mask, int32_t * pos);

// Multi-draft speculative sampling at one tree row (Leviathan et al.; recursive rejection sampling for drafts
// drawn without replacement). p: the target's processed distribution, q: the distribution the children were
// drawn from, both dense over the vocabulary and summing to 1 (both are overwritten). For each child x in draw
// order: accept with probability min(1, p(x) / q(x)); otherwise p = norm(max(0, p - q)), q = norm(q without x)
// and the next child is tried. Returns the index of the accepted child, or -1 with *token drawn from the final
// residual p. The output token follows p exactly, whatever q is.
int32_t speculative_accept(std::vector<double> & p, std::vector<double> & q, const int32_t * children,
                           int32_t n_children, rng & r, int32_t * token);

class drafter {
  public:
    virtual ~drafter() = default;
    // As draft() below, for a request sampling with sp (temperature > 0): a drafter may draw its nodes from its
    // own processed distribution and record it in out.q. The default drafts as for greedy.
    virtual void draft_sampled(uint64_t id, const int32_t * tokens, int32_t n, int32_t max_nodes, int32_t max_depth,
                               const minicpm_sampling_params & /*sp*/, draft_tree & out) {
        draft(id, tokens, n, max_nodes, max_depth, out);
    }
    // Proposes continuations of tokens[0, n) (a decoding request's prompt + generated tokens): at most max_nodes
    // nodes, depth at most max_depth (the scheduler clips what exceeds them).
    virtual void draft(uint64_t id, const int32_t * tokens, int32_t n, int32_t max_nodes, int32_t max_depth,
                       draft_tree & out) = 0;
    // The request ended (finished, cancelled or failed): per-request state can go.
    virtual void release(uint64_t /*id*/) {}
    // True when the drafter reads the target's hidden states: the scheduler then has forward() return the
    // final-norm output of every row and calls observe() with the rows it commits.
    virtual bool wants_hidden() const { return false; }
    // The target's final-norm output (before the logit divisor) for request id at positions [pos, pos + n):
    // hidden[n, n_embd], host memory valid during the call. Rows come in position order; a preempted request
    // sends its rows again, and rows a prefix-cache hit skipped never come.
    virtual void observe(uint64_t /*id*/, int32_t /*pos*/, const float * /*hidden*/, int32_t /*n*/) {}
};

// EAGLE-2 tree bookkeeping shared by the drafters: one candidate node of the dynamic tree.
struct tree_candidate {
    int32_t token, parent, depth;  // parent: candidate index, -1 = root
    float   score;                 // cumulative log-probability
};

// The k best columns of one logit row with their log-softmax, best first (ties: lower column).
void top_k_logprobs(const float * logits, int32_t n, int32_t k, std::vector<std::pair<float, int32_t>> & out);

// The next frontier of a tree level: children (candidate indices) sorted by cumulative score, the best k kept;
// a chain child (the greedy path, >= 0) stays in place of the last one when it fell out, and joins chain.
void keep_best_children(const std::vector<tree_candidate> & cands, std::vector<int32_t> & children, int32_t k,
                        int32_t chain_child, std::vector<int32_t> & chain);

// Keeps max_nodes candidates as the draft tree: the chain (candidate indices, root child first), then the
// best cumulative scores whose parent is kept; parents before children (by depth, then score).
void select_draft_tree(const std::vector<tree_candidate> & cands, const std::vector<int32_t> & chain, int32_t max_nodes,
                       draft_tree & out);

// The shape of an EAGLE-2 dynamic tree (ENGINE_REFERENCE 4.1): num_iter levels, top_k children per expanded
// node and top_k expanded nodes per level, tree_size - 1 nodes kept by cumulative log-probability. The CLI
// defaults of CPM.cu are 2 / 10 / 12.
struct tree_shape {
    int32_t num_iter = 2;
    int32_t top_k = 10;
    int32_t tree_size = 12;
};
// Throws INVALID_ARGUMENT for a shape the tree batch cannot hold (k_max_tree_rows rows).
void check_tree_shape(const tree_shape & shape);

// A plain small MiniCPM model as the drafter (e.g. 0.5B drafting for 8B; or the target itself: every draft is
// then accepted under greedy decoding). It keeps its own KV per request on the engine's backend, resumes from
// the longest prefix it already holds (so rejected drafts and preemptions roll back by truncation), and grows an
// EAGLE-2 dynamic tree: the greedy chain of the draft is always part of the tree (CPM.cu keeps only the best
// cumulative scores; with flat draft distributions that drops the chain past depth 1).
class model_drafter final : public drafter {
  public:
    // be: the engine's backend (the drafter runs on the scheduler thread between steps). kv_blocks: the draft's
    // own KV budget in 64-token blocks. Throws _INVALID_ARGUMENT when the vocabularies differ or the shape is
    // out of range.
    model_drafter(const model & draft, int32_t target_vocab, backend & be, dtype kv_type, int32_t kv_blocks,
                  const tree_shape & shape);
    ~model_drafter() override;

    void draft(uint64_t id, const int32_t * tokens, int32_t n, int32_t max_nodes, int32_t max_depth,
               draft_tree & out) override;
    // Sampled requests: a tree of fixed shape (the chain of first draws, num_iter deep; the other tree_size
    // slots as further draws at the root, then at the chain nodes, at most top_k per node), each node's children
    // drawn without replacement from the draft's distribution under the request's temperature / top-k / top-p /
    // min-p (no penalties), recorded in out.q. The shape does not depend on the drawn tokens, as losslessness
    // requires.
    void draft_sampled(uint64_t id, const int32_t * tokens, int32_t n, int32_t max_nodes, int32_t max_depth,
                       const minicpm_sampling_params & sp, draft_tree & out) override;
    void release(uint64_t id) override;

    const tree_shape & shape() const { return shape_; }

    // FR-Spec (ENGINE_REFERENCE 4.2): the draft only proposes the first n ids of ids (a frequency-ranked list,
    // load_token_list); the target still verifies over the whole vocabulary, so output is unchanged. n <= 0 or
    // an empty list: the whole vocabulary again. Throws _INVALID_ARGUMENT for an id out of range. For now the
    // other logits are masked after the full head (same drafts as a gathered n x H head, not its saving).
    void restrict_vocab(const std::vector<int32_t> & ids, int32_t n);
    int32_t vocab_size() const { return allowed_.empty() ? n_vocab_ : n_allowed_; }

  private:
    struct state {
        kv_seq               kv;
        std::vector<int32_t> tokens;  // what kv holds
        std::unique_ptr<sampler> smp; // sampled drafts: the request's processing, its own seed
    };
    // Rolls the draft KV back to the longest held prefix of tokens[0, n - 1) and runs the rest; logits_ then
    // holds the last row. False when the draft pool is dry (the state is released).
    bool catch_up(uint64_t id, state & st, const int32_t * tokens, int32_t n);
    // Evaluates rows (causal when mask is null) after the sequence's committed tokens; logits for the rows
    // listed. Returns false when the KV pool is dry (the sequence is left as it was).
    bool run(state & st, const int32_t * tokens, const int32_t * pos, const uint64_t * mask, int32_t n,
             const int32_t * logit_rows, int32_t n_logit_rows, float * logits);

    const model &           model_;
    backend &               be_;
    kv_pool                 kv_;
    forward_workspace       ws_;
    tree_shape              shape_;
    int32_t                 n_vocab_;
    std::unordered_map<uint64_t, state> states_;
    std::vector<float>      logits_;
    std::vector<int32_t>    rows_, pos_, toks_;
    std::vector<uint64_t>   mask_;
    sampler_scratch         scratch_;
    std::vector<char>       allowed_;  // FR-Spec subset; empty = all
    int32_t                 n_allowed_ = 0;
};

}  // namespace minicpm
