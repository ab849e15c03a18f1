// The EAGLE head as a drafter (model/eagle.h): EAGLE-2 dynamic trees from the target's own hidden states.
//
// Draft row p pairs the target's final-norm output h_p with token p + 1 and predicts token p + 2 (the EAGLE
// shift by one). The head keeps its own KV per request: one committed row per position the target has
// committed, fed by observe(); tree rows are appended while drafting and truncated again, so a rejected draft
// never reaches the head's KV (its rollback is the truncation). Positions before the first observed row
// (a prefix-cache hit) are not seen by the head: its drafts are then weaker, the output is unchanged.
#pragma once

#include "engine/drafter.h"
#include "model/eagle.h"

#include <memory>
#include <unordered_map>

namespace minicpm {

class eagle_drafter final : public drafter {
  public:
    // Owns the head. be: the engine's backend; kv_blocks: the head's own KV budget in 64-token blocks. Throws
    // _INVALID_ARGUMENT for a tree shape out of range (as model_drafter).
    eagle_drafter(std::unique_ptr<eagle_head> head, backend & be, dtype kv_type, int32_t kv_blocks,
                  const tree_shape & shape);
    ~eagle_drafter() override;

    void draft(uint64_t id, const int32_t * tokens, int32_t n, int32_t max_nodes, int32_t max_depth,
               draft_tree & out) override;
    void release(uint64_t id) override;
    bool wants_hidden() const override { return true; }
    void observe(uint64_t id, int32_t pos, const float * hidden, int32_t n) override;

    const tree_shape & shape() const { return shape_; }
    const eagle_head & head() const { return *owned_; }
    // Wall time in the head's forward, accumulated (benchmarks).
    int64_t head_us() const { return head_us_; }

  private:
    struct state {
        kv_seq             kv;            // slot s holds draft row base + s
        int32_t            base = -1;     // position of slot 0; -1 = nothing observed yet
        std::vector<float> pending;       // target rows observed but not yet in kv, from position base + kv.n_tokens
        std::vector<float> last;          // h of the last row in kv (to run it again when nothing is pending)
    };
    int32_t pending_rows(const state & st) const { return int32_t(st.pending.size() / size_t(H_)); }
    // Runs rows (causal when mask is null) after the committed slots; false when the KV pool is dry.
    bool run(state & st, const int32_t * tokens, const float * hidden, const int32_t * pos, const uint64_t * mask,
             int32_t n, const int32_t * logit_rows, int32_t n_logit_rows);

    std::unique_ptr<eagle_head> owned_;
    const eagle_head &  head_;
    backend &           be_;
    kv_pool             kv_;
    eagle_workspace     ws_;
    tree_shape          shape_;
    int32_t             H_;
    int64_t             head_us_ = 0;
    std::unordered_map<uint64_t, state> states_;
    std::vector<float>   feat_, logits_, in_;
    std::vector<int32_t> toks_, pos_, rows_;
    std::vector<uint64_t> mask_;
};

}  // namespace minicpm
