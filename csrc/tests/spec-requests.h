// Requests for the speculative-decoding tests (test-eagle, test-spec-sparse, test-cuda): deterministic prompts,
// a run of a batch through a scheduler that collects every request's tokens, and a drafter wrapper that counts
// the trees reaching past a sparse target's dense_len.
#pragma once

#include "engine/drafter.h"
#include "engine/scheduler.h"
#include "minicpm.h"
#include "tests/tiny-model.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

namespace minicpm_test {

struct spec_request {
    std::vector<int32_t>    prompt;
    minicpm_sampling_params sp;
};

inline std::vector<int32_t> prompt_of(int32_t n, int32_t salt) {
    std::vector<int32_t> t;
    for (int32_t i = 0; i < n; ++i) t.push_back(4 + (i * 37 + salt * 101) % 500);
    return t;
}

// Submits every request at once (one continuous batch) and drains each to its finish; a request still running
// after timeout_s ends with the tokens it has.
inline std::vector<std::vector<int32_t>> run_all(minicpm::scheduler & s, const std::vector<spec_request> & reqs,
                                                 int timeout_s = 300) {
    std::vector<uint64_t> ids;
    for (const spec_request & r : reqs)
        ids.push_back(s.submit(r.prompt.data(), int32_t(r.prompt.size()), &r.sp, nullptr, 0, nullptr, nullptr, 0));
    std::vector<std::vector<int32_t>> out;
    for (uint64_t id : ids) {
        std::vector<int32_t> toks;
        bool                 done = false;
        minicpm_event        buf[16];
        const auto           deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
        while (!done && std::chrono::steady_clock::now() < deadline) {
            const int32_t n = s.drain(id, buf, 16, nullptr);
            for (int32_t i = 0; i < n; ++i) {
                if (buf[i].token >= 0) toks.push_back(buf[i].token);
                done |= buf[i].finish_reason != MINICPM_FINISH_NONE;
            }
            if (n == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        out.push_back(toks);
    }
    return out;
}

// The sparse speculative target's shape (test-spec-sparse, test-cuda): G = 8, weights strong enough that greedy
// tokens are not near ties.
inline tiny_model_spec spec_target() {
    tiny_model_spec spec;
    spec.n_embd = 256;
    spec.n_head = 16;
    spec.n_head_kv = 2;
    spec.n_ff = 256;
    spec.weight_std = 0.25f;
    spec.tie_word_embeddings = false;
    return spec;
}

// Greedy trees for every request; counts the trees, their depths, and how many reach past dense_len.
class counting_drafter final : public minicpm::drafter {
  public:
    counting_drafter(std::shared_ptr<minicpm::drafter> in, int32_t dense_len)
        : in_(std::move(in)), dense_len_(dense_len) {}
    int64_t n_trees = 0, n_past_dense = 0, sum_depth = 0;
    void draft(uint64_t id, const int32_t * t, int32_t n, int32_t mn, int32_t md, minicpm::draft_tree & out) override {
        in_->draft(id, t, n, mn, md, out);
        int32_t depth = 0;
        for (int32_t i = 0; i < out.size(); ++i) depth = std::max(depth, out.depth(i));
        if (out.size() == 0) return;
        ++n_trees;
        sum_depth += depth;
        // The verify rows sit at slots n - 1 (the sampled token) .. n - 1 + depth.
        n_past_dense += int64_t(n) + depth >= dense_len_;
    }
    void release(uint64_t id) override { in_->release(id); }
    bool wants_hidden() const override { return in_->wants_hidden(); }
    void observe(uint64_t id, int32_t pos, const float * h, int32_t n) override { in_->observe(id, pos, h, n); }

  private:
    std::shared_ptr<minicpm::drafter> in_;
    int32_t                           dense_len_;
};

}  // namespace minicpm_test
