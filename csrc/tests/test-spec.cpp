// Speculative decoding in the batched engine: draft trees verified in one masked step, the longest confirmed
// path kept (KV rows compacted), the rest truncated and the sampler rolled back. Checks, on tiny random
// checkpoints with the reference ops (batch composition cannot change a bit of the logits):
//   - tree layout (masks, positions) and clipping of bad trees;
//   - an oracle tree drafter (the right chain hidden among wrong siblings at varying places, wrong branches,
//     a wrong node in the middle of the chain) in a batch of mixed requests: output == plain decoding;
//   - a plain draft LLM (model_drafter, EAGLE-2 dynamic tree): a weak one (another random model) and a strong
//     one (the target itself: every drafted level accepted), greedy and sampled, with stop ids and max_tokens
//     landing exactly; the draft's own KV is released with the requests;
//   - speculative rejection sampling (sampled requests, drafts drawn from the draft's distribution): the
//     accept rule alone against p on synthetic distributions, and the emitted tokens of a small-vocabulary
//     model with and without speculation, both by a chi-square test, with acceptance rates printed.
#include "engine/drafter.h"
#include "engine/scheduler.h"
#include "minicpm.h"
#include "tests/tiny-model.h"

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

using minicpm::draft_tree;
using minicpm::scheduler;

using minicpm_test::greedy;
using minicpm_test::reference_ops;
using minicpm_test::str;

static const minicpm::model * g_model = nullptr;

static minicpm_engine_params engine_params() {
    minicpm_engine_params p;
    minicpm_engine_default_params(&p);
    p.n_threads = 2;
    p.n_chunk = 32;
    p.n_ctx = 320;
    p.kv_dtype = MINICPM_DTYPE_F32;
    p.kv_bytes = uint64_t(96) * minicpm::kv_pool::bytes_per_block(g_model->config(), minicpm::dtype::f32);
    return p;
}

static minicpm_sampling_params hot(int32_t n_max_tokens, uint64_t seed) {
    minicpm_sampling_params s = greedy(n_max_tokens);
    s.temperature = 0.8f;
    s.top_p = 0.9f;
    s.repetition_penalty = 1.2f;
    s.penalty_last_n = 16;
    s.seed = seed;
    return s;
}

static std::vector<int32_t> prompt_of(int32_t n, int32_t salt) {
    std::vector<int32_t> t;
    for (int32_t i = 0; i < n; ++i) t.push_back(4 + (i * 37 + salt * 101) % 500);
    return t;
}

struct req {
    std::vector<int32_t>    prompt;
    minicpm_sampling_params sp;
    std::vector<int32_t>    stop;  // extra stop ids
};

struct outcome {
    std::vector<int32_t> tokens;
    int32_t              finish = -1;
    bool operator==(const outcome & o) const { return tokens == o.tokens && finish == o.finish; }
};

// Submits every request at once and collects each one's tokens and finish reason.
static std::vector<outcome> run_all(scheduler & s, const std::vector<req> & reqs) {
    std::vector<uint64_t> ids;
    for (const req & r : reqs)
        ids.push_back(s.submit(r.prompt.data(), int32_t(r.prompt.size()), &r.sp, r.stop.data(),
                               int32_t(r.stop.size()), nullptr, nullptr, 0));
    std::vector<outcome> out;
    for (uint64_t id : ids) {
        outcome       o;
        minicpm_event buf[16];
        const auto    deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
        while (std::chrono::steady_clock::now() < deadline && o.finish < 0) {
            const int32_t n = s.drain(id, buf, 16, nullptr);
            for (int32_t i = 0; i < n; ++i) {
                if (buf[i].token >= 0) o.tokens.push_back(buf[i].token);
                if (buf[i].finish_reason != MINICPM_FINISH_NONE) o.finish = buf[i].finish_reason;
            }
            if (n == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        out.push_back(o);
    }
    return out;
}

static int32_t total_tokens(const std::vector<outcome> & o) {
    int32_t n = 0;
    for (const auto & x : o) n += int32_t(x.tokens.size());
    return n;
}

// A batch of mixed sequences: greedy of several lengths, sampled with penalties, one with a stop id that the
// plain run reaches mid-generation (filled in once the plain output is known).
static std::vector<req> mixed_requests(int32_t len) {
    std::vector<req> r;
    r.push_back({prompt_of(21, 1), greedy(len), {}});
    r.push_back({prompt_of(47, 2), greedy(len / 2 + 3), {}});
    r.push_back({prompt_of(9, 3), hot(len, 7), {}});
    r.push_back({prompt_of(70, 4), greedy(len), {}});
    r.push_back({prompt_of(33, 5), hot(len - 5, 99), {}});
    return r;
}

static void test_layout() {
    draft_tree t;
    //         node: 0      1      2      3      4
    for (auto [tok, par] : {std::pair{10, -1}, {11, -1}, {12, 0}, {13, 2}, {14, 1}}) t.add(tok, par);
    std::vector<uint64_t> mask(6);
    std::vector<int32_t>  pos(6);
    const bool chain = minicpm::draft_tree_layout(t, 40, mask.data(), pos.data());
    // rows: 0 root, 1..5 nodes 0..4
    const bool ok = !chain && mask[0] == 0 && mask[1] == 1 && mask[2] == 1 && mask[3] == 0b11 && mask[4] == 0b1011 &&
                    mask[5] == 0b101 && pos[0] == 40 && pos[1] == 41 && pos[3] == 42 && pos[4] == 43 && pos[5] == 42;
    CHECK(ok, "tree layout: masks %llx %llx %llx %llx %llx, positions %d %d %d %d %d", (unsigned long long) mask[1],
          (unsigned long long) mask[2], (unsigned long long) mask[3], (unsigned long long) mask[4],
          (unsigned long long) mask[5], pos[1], pos[2], pos[3], pos[4], pos[5]);
    draft_tree c;
    for (int32_t i = 0; i < 4; ++i) c.add(5 + i, i - 1);
    CHECK(minicpm::draft_tree_layout(c, 0, mask.data(), pos.data()) && pos[4] == 4, "a chain is laid out causally");
    draft_tree bad = t;
    bad.parents[3] = 3;  // names itself
    const int32_t k1 = minicpm::draft_tree_clip(bad, 512, 63, 8);
    draft_tree deep = t;
    const int32_t k2 = minicpm::draft_tree_clip(deep, 512, 63, 2);  // node 3 has depth 3
    draft_tree oob = t;
    oob.tokens[1] = 512;
    const int32_t k3 = minicpm::draft_tree_clip(oob, 512, 63, 8);
    draft_tree many = t;
    const int32_t k4 = minicpm::draft_tree_clip(many, 512, 2, 8);
    CHECK(k1 == 3 && k2 == 3 && k3 == 1 && k4 == 2,
          "clip keeps the valid prefix: bad parent -> %d, depth > 2 -> %d, token out of range -> %d, max 2 nodes -> %d",
          k1, k2, k3, k4);
}

// Oracle trees: the plain continuation is known; the drafter hides it among wrong siblings.
class oracle_drafter final : public minicpm::drafter {
  public:
    std::map<uint64_t, std::vector<int32_t>> oracle;  // request id -> prompt + plain output
    std::atomic<int32_t>                     calls{0}, released{0};
    void draft(uint64_t id, const int32_t * toks, int32_t n, int32_t max_nodes, int32_t max_depth,
               draft_tree & out) override {
        out.clear();
        const std::vector<int32_t> & o = oracle[id];
        const int32_t c = calls++;
        // Level by level: k wrong siblings then the right node (its position varies with the call), up to depth 4.
        int32_t parent = -1;
        for (int32_t d = 0; d < 4 && d < max_depth && n + d < int32_t(o.size()); ++d) {
            const int32_t right = o[size_t(n + d)];
            const int32_t n_wrong = (c + d) % 3;
            for (int32_t w = 0; w < n_wrong && out.size() < max_nodes; ++w) {
                out.add((right + 1 + w) % 500, parent);
                if (w == 0 && out.size() < max_nodes) out.add((right + 7) % 500, out.size() - 1);  // a wrong branch below
            }
            if (out.size() >= max_nodes) break;
            // Every 5th call the third level is wrong: the path stops there.
            out.add(c % 5 == 4 && d == 2 ? (right + 3) % 500 : right, parent);
            parent = out.size() - 1;
        }
        (void) toks;
    }
    void release(uint64_t) override { released++; }
};

static void test_oracle_trees() {
    std::vector<req> reqs = mixed_requests(48);
    std::vector<outcome> plain, drafted;
    std::atomic<int32_t> plain_steps{0}, drafted_steps{0};
    {
        scheduler s(*g_model, engine_params(), reference_ops());
        s.set_step_observer([&](const minicpm::step_trace &) { plain_steps++; });
        plain = run_all(s, reqs);
    }
    // A stop id reached mid-generation by request 3; a second plain run with it.
    const int32_t stop_tok = plain[3].tokens[20];
    reqs[3].stop = {stop_tok};
    {
        scheduler s(*g_model, engine_params(), reference_ops());
        plain = run_all(s, reqs);
    }
    auto od = std::make_shared<oracle_drafter>();
    for (size_t i = 0; i < reqs.size(); ++i) {
        std::vector<int32_t> o = reqs[i].prompt;
        o.insert(o.end(), plain[i].tokens.begin(), plain[i].tokens.end());
        od->oracle[uint64_t(i + 1)] = o;
    }
    struct minicpm_engine_stats st{};
    {
        scheduler s(*g_model, engine_params(), reference_ops());
        s.set_drafter(od, 16);
        s.set_step_observer([&](const minicpm::step_trace &) { drafted_steps++; });
        drafted = run_all(s, reqs);
        s.stats(st);
    }
    CHECK(drafted == plain && plain[3].finish == MINICPM_FINISH_STOP && plain[3].tokens.back() == stop_tok &&
              plain[1].finish == MINICPM_FINISH_LENGTH,
          "oracle trees (right node among wrong siblings and branches, every 5th tree wrong at depth 3): output == "
          "plain for %d tokens in %zu requests (greedy x3 incl. one ending on stop id %d after %zu tokens, sampled x2); "
          "plain [%s]",
          total_tokens(plain), reqs.size(), stop_tok, plain[3].tokens.size(), str(plain[0].tokens).c_str());
    CHECK(drafted_steps < plain_steps && od->released == int32_t(reqs.size()) && st.kv_tokens_used == 0,
          "oracle trees: %d steps vs %d plain, drafter released %d requests, kv used after %d", drafted_steps.load(),
          plain_steps.load(), od->released.load(), st.kv_tokens_used);
    std::printf("     spec stats: %llu verifies, %llu nodes drafted, %llu kept; kept at depth 1..4: %llu %llu %llu %llu\n",
                (unsigned long long) st.n_spec_verifies, (unsigned long long) st.n_spec_drafted,
                (unsigned long long) st.n_spec_accepted, (unsigned long long) st.n_spec_at_depth[0],
                (unsigned long long) st.n_spec_at_depth[1], (unsigned long long) st.n_spec_at_depth[2],
                (unsigned long long) st.n_spec_at_depth[3]);
}

// Records the depth of each tree the inner drafter proposes.
class recording_drafter final : public minicpm::drafter {
  public:
    explicit recording_drafter(std::unique_ptr<minicpm::drafter> in) : in_(std::move(in)) {}
    int64_t n_trees = 0, sum_depth = 0, sum_nodes = 0;
    void draft(uint64_t id, const int32_t * t, int32_t n, int32_t mn, int32_t md, draft_tree & out) override {
        in_->draft(id, t, n, mn, md, out);
        int32_t depth = 0;
        for (int32_t i = 0; i < out.size(); ++i) depth = std::max(depth, out.depth(i));
        n_trees += out.size() > 0;
        sum_depth += depth;
        sum_nodes += out.size();
        tokens.insert(tokens.end(), out.tokens.begin(), out.tokens.end());
    }
    void release(uint64_t id) override { in_->release(id); }
    std::vector<int32_t> tokens;  // every drafted token
    int64_t n_outside(const std::vector<char> & in) const {
        int64_t k = 0;
        for (int32_t t : tokens) k += !in[size_t(t)];
        return k;
    }

  private:
    std::unique_ptr<minicpm::drafter> in_;
};

// expect_all: the drafter is the target and every request greedy: each verify keeps the whole drafted depth.
static void test_model_drafter(const minicpm::model & draft_model, const char * label, const minicpm::tree_shape & shape,
                               bool expect_all) {
    std::vector<req> reqs = mixed_requests(96);
    if (expect_all)
        for (req & r : reqs) r.sp = greedy(r.sp.n_max_tokens);
    std::vector<outcome> plain, drafted;
    int32_t plain_steps = 0, drafted_steps = 0;
    {
        scheduler s(*g_model, engine_params(), reference_ops());
        s.set_step_observer([&](const minicpm::step_trace &) { plain_steps++; });
        plain = run_all(s, reqs);
    }
    struct minicpm_engine_stats st{};
    int64_t n_trees = 0, sum_depth = 0, sum_nodes = 0;
    const auto t0 = std::chrono::steady_clock::now();
    {
        scheduler s(*g_model, engine_params(), reference_ops());
        auto md = std::make_unique<minicpm::model_drafter>(draft_model, g_model->config().n_vocab, s.backend_ref(),
                                                            minicpm::dtype::f32, 64, shape);
        auto rd = std::make_shared<recording_drafter>(std::move(md));
        s.set_drafter(rd, shape.tree_size - 1);
        s.set_step_observer([&](const minicpm::step_trace &) { drafted_steps++; });
        drafted = run_all(s, reqs);
        s.stats(st);
        n_trees = rd->n_trees, sum_depth = rd->sum_depth, sum_nodes = rd->sum_nodes;
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const double mean_accept = st.n_spec_verifies ? double(st.n_spec_accepted + st.n_spec_verifies) / double(st.n_spec_verifies) : 0.0;
    // Greedy requests: the plain output token for token. Sampled ones follow the target distribution but draw
    // differently (rejection sampling against drawn drafts): same length and finish reason.
    bool same = drafted.size() == plain.size();
    for (size_t i = 0; same && i < reqs.size(); ++i)
        same = reqs[i].sp.temperature <= 0.0f ? drafted[i] == plain[i]
                                               : drafted[i].tokens.size() == plain[i].tokens.size() &&
                                                     drafted[i].finish == plain[i].finish;
    CHECK(same, "%s drafter (tree %d/%d/%d): greedy output == plain, sampled same lengths, %d tokens in %zu "
          "requests (%s); %d steps vs %d plain, %.0f ms",
          label, shape.num_iter, shape.top_k, shape.tree_size, total_tokens(plain), reqs.size(),
          expect_all ? "greedy x5" : "greedy x3, sampled+penalties x2", drafted_steps,
          plain_steps, ms);
    std::string depth_rates;
    for (int32_t d = 0; d < shape.num_iter && d < MINICPM_SPEC_MAX_DEPTH; ++d) {
        char b[32];
        std::snprintf(b, sizeof(b), " %.2f", st.n_spec_verifies ? double(st.n_spec_at_depth[d]) / double(st.n_spec_verifies) : 0.0);
        depth_rates += b;
    }
    if (expect_all) {
        CHECK(int64_t(st.n_spec_accepted) == sum_depth && n_trees == int64_t(st.n_spec_verifies) && n_trees > 0,
              "%s drafter accepts every drafted level: %llu drafts kept == %lld tree depths summed over %lld trees "
              "(%lld nodes); mean accept length %.2f; per-depth acceptance%s",
              label, (unsigned long long) st.n_spec_accepted, (long long) sum_depth, (long long) n_trees,
              (long long) sum_nodes, mean_accept, depth_rates.c_str());
    } else {
        CHECK(st.n_spec_verifies > 0 && int64_t(st.n_spec_accepted) <= sum_depth,
              "%s drafter: %llu verifies, %lld nodes drafted, %llu kept (of %lld levels drafted); mean accept length "
              "%.2f; per-depth acceptance%s", label, (unsigned long long) st.n_spec_verifies, (long long) sum_nodes,
              (unsigned long long) st.n_spec_accepted, (long long) sum_depth, mean_accept, depth_rates.c_str());
    }
    CHECK(st.kv_tokens_used == 0 && st.n_running == 0, "%s drafter: kv used after %d", label, st.kv_tokens_used);
}


// Chi-square test of homogeneity of two histograms over the same cells (cells with a pooled count below 10
// are merged into one). Returns the statistic; *df its degrees of freedom; *crit the 0.1% critical value
// (Wilson-Hilferty).
static double chi_square(const std::vector<double> & a, const std::vector<double> & b, int32_t * df, double * crit) {
    double na = 0, nb = 0;
    for (double x : a) na += x;
    for (double x : b) nb += x;
    std::vector<std::pair<double, double>> cells;
    std::pair<double, double> rest{0, 0};
    for (size_t i = 0; i < a.size(); ++i) {
        if (a[i] + b[i] < 10) rest.first += a[i], rest.second += b[i];
        else cells.emplace_back(a[i], b[i]);
    }
    if (rest.first + rest.second > 0) cells.push_back(rest);
    double stat = 0;
    for (const auto & [x, y] : cells) {
        const double t = x + y, ea = t * na / (na + nb), eb = t * nb / (na + nb);
        if (ea > 0) stat += (x - ea) * (x - ea) / ea;
        if (eb > 0) stat += (y - eb) * (y - eb) / eb;
    }
    *df = std::max<int32_t>(1, int32_t(cells.size()) - 1);
    const double k = *df, z = 3.09;
    *crit = k * std::pow(1.0 - 2.0 / (9.0 * k) + z * std::sqrt(2.0 / (9.0 * k)), 3.0);
    return stat;
}

// Goodness of fit of counts against probabilities p (same pooling and threshold as above).
static double chi_square_fit(const std::vector<double> & counts, const std::vector<double> & p, int32_t * df, double * crit) {
    double n = 0;
    for (double x : counts) n += x;
    std::vector<double> ref(p.size());
    for (size_t i = 0; i < p.size(); ++i) ref[i] = p[i] * n * 1e3;  // a sample 1000x larger: the expectation
    return chi_square(counts, ref, df, crit);
}

// The accept rule alone: children drawn without replacement from q, accepted against p; the output must follow
// p. Also prints the acceptance against token matching's (the chance that a sample of p is one of the children).
static void test_accept_rule() {
    const std::vector<std::vector<double>> ps = {{0.4, 0.25, 0.15, 0.1, 0.05, 0.05}, {0.05, 0.05, 0.1, 0.2, 0.3, 0.3}};
    const std::vector<double> q0 = {0.3, 0.3, 0.2, 0.1, 0.05, 0.05};
    minicpm::rng r(42);
    for (const auto & p0 : ps) {
        for (int32_t k : {1, 3}) {
            const int32_t n_trials = 200000;
            std::vector<double> counts(p0.size(), 0.0), p, q;
            int64_t accepted = 0;
            double match = 0;
            for (int32_t t = 0; t < n_trials; ++t) {
                // k draws without replacement from q0
                std::vector<double> w = q0;
                std::vector<int32_t> kids;
                for (int32_t j = 0; j < k; ++j) {
                    double tot = 0;
                    for (double x : w) tot += x;
                    double u = r.uniform() * tot;
                    size_t pick = 0;
                    for (size_t i = 0; i < w.size(); ++i) {
                        if (w[i] <= 0) continue;
                        pick = i;
                        u -= w[i];
                        if (u < 0) break;
                    }
                    kids.push_back(int32_t(pick));
                    w[pick] = 0;
                }
                for (int32_t x : kids) match += p0[size_t(x)];
                p = p0, q = q0;
                int32_t tok = -1;
                const int32_t at = minicpm::speculative_accept(p, q, kids.data(), k, r, &tok);
                accepted += at >= 0;
                counts[size_t(tok)]++;
            }
            int32_t df = 0;
            double crit = 0;
            const double stat = chi_square_fit(counts, p0, &df, &crit);
            CHECK(stat < crit, "accept rule (p %s, %d children from q): chi2 %.1f (df %d, 0.1%% critical %.1f) "
                  "over %d draws; acceptance %.3f, token matching would accept %.3f",
                  p0[0] > 0.3 ? "close to q" : "far from q", k, stat, df, crit, n_trials,
                  double(accepted) / n_trials, match / n_trials);
        }
    }
}

// Emitted tokens of a small-vocabulary model: plain sampling vs speculative (rejection sampling against
// drafts drawn from the draft model; and token matching against the draft's top-k tree as the baseline).
static void test_sampled_distribution(const minicpm::model & target, const minicpm::model & draft_model,
                                      const char * label, bool penalties) {
    const int32_t n_req = 2000, n_tok = 4, V = target.config().n_vocab;
    auto params = [&](uint64_t seed) {
        minicpm_sampling_params sp;
        minicpm_sampling_default_params(&sp);
        sp.temperature = 0.9f;
        sp.top_p = 0.95f;
        if (penalties) sp.repetition_penalty = 1.5f;
        sp.n_max_tokens = n_tok;
        sp.ignore_eos = 1;
        sp.seed = seed;
        return sp;
    };
    const std::vector<int32_t> prompt = {1, 5, 9, 4, 7};
    minicpm_engine_params ep;
    minicpm_engine_default_params(&ep);
    ep.n_threads = 2;
    ep.n_ctx = 64;
    ep.kv_dtype = MINICPM_DTYPE_F32;
    ep.kv_bytes = uint64_t(256) * minicpm::kv_pool::bytes_per_block(target.config(), minicpm::dtype::f32);
    // 0: plain, 1: rejection sampling, 2: token matching (the drafter's greedy tree, wrapped so it cannot draw)
    std::vector<double> first[3], second[3], third[3];
    double accept[3] = {0, 0, 0}, drafted[3] = {0, 0, 0}, verifies[3] = {0, 0, 0};
    for (int32_t arm = 0; arm < 3; ++arm) {
        first[arm].assign(size_t(V), 0);
        second[arm].assign(size_t(V) * size_t(V), 0);
        third[arm].assign(size_t(V), 0);
        scheduler s(target, ep, reference_ops());
        if (arm > 0) {
            minicpm::tree_shape shape{3, 4, 8};
            auto md = std::make_shared<minicpm::model_drafter>(draft_model, V, s.backend_ref(), minicpm::dtype::f32,
                                                                64, shape);
            if (arm == 1) s.set_drafter(md, shape.tree_size - 1);
            else s.set_drafter(std::make_shared<recording_drafter>(std::make_unique<minicpm::model_drafter>(
                                   draft_model, V, s.backend_ref(), minicpm::dtype::f32, 64, shape)),
                               shape.tree_size - 1);
        }
        for (int32_t i0 = 0; i0 < n_req; i0 += 200) {  // under the queue limit
            std::vector<req> reqs;
            for (int32_t i = i0; i < std::min(n_req, i0 + 200); ++i)
                reqs.push_back({prompt, params(uint64_t(i) + uint64_t(arm) * 1000003u), {}});
            for (const outcome & o : run_all(s, reqs)) {
                if (o.tokens.size() < size_t(n_tok)) continue;
                // tokens[0] comes from the prompt's step (never drafted); 1..3 from verified trees.
                first[arm][size_t(o.tokens[1])]++;
                second[arm][size_t(o.tokens[1]) * size_t(V) + size_t(o.tokens[2])]++;
                third[arm][size_t(o.tokens[3])]++;
            }
        }
        struct minicpm_engine_stats st{};
        s.stats(st);
        accept[arm] = double(st.n_spec_accepted), drafted[arm] = double(st.n_spec_drafted);
        verifies[arm] = double(st.n_spec_verifies);
    }
    for (int32_t arm = 1; arm < 3; ++arm) {
        int32_t df1 = 0, df2 = 0, df3 = 0;
        double c1 = 0, c2 = 0, c3 = 0;
        const double s1 = chi_square(first[0], first[arm], &df1, &c1);
        const double s2 = chi_square(second[0], second[arm], &df2, &c2);
        const double s3 = chi_square(third[0], third[arm], &df3, &c3);
        CHECK(s1 < c1 && s2 < c2 && s3 < c3,
              "%s%s, %s vs plain over %d requests (vocab %d, T 0.9, top-p 0.95): chi2 token 2 %.1f (df %d, crit %.1f), "
              "tokens 2-3 %.1f (df %d, crit %.1f), token 4 %.1f (df %d, crit %.1f); %.0f verifies, mean accept "
              "length %.2f, %.0f of %.0f drafted nodes kept",
              label, penalties ? " +repetition penalty 1.5" : "", arm == 1 ? "rejection sampling" : "token matching",
              n_req, V, s1, df1, c1, s2, df2, c2, s3, df3, c3, verifies[arm],
              verifies[arm] > 0 ? 1.0 + accept[arm] / verifies[arm] : 0.0, accept[arm], drafted[arm]);
    }
    CHECK(verifies[1] > 0 && accept[1] > 0, "%s: rejection sampling accepted %.0f drafts in %.0f verifies", label,
          accept[1], verifies[1]);
}

// FR-Spec: the draft restricted to the first N ids of a ranked list (here: the ids the plain greedy output uses
// most, then the rest). Greedy output stays the plain output; every drafted token lies in the subset.
static void test_vocab_subset(const minicpm::model & target) {
    std::vector<req> reqs = mixed_requests(64);
    for (req & r : reqs) r.sp = greedy(r.sp.n_max_tokens);
    std::vector<outcome> plain;
    {
        scheduler s(target, engine_params(), reference_ops());
        plain = run_all(s, reqs);
    }
    const int32_t V = target.config().n_vocab;
    std::vector<std::pair<int32_t, int32_t>> freq;
    for (int32_t i = 0; i < V; ++i) freq.push_back({0, i});
    for (const outcome & o : plain)
        for (int32_t t : o.tokens) freq[size_t(t)].first--;
    std::stable_sort(freq.begin(), freq.end());
    std::vector<int32_t> ranked;
    for (const auto & f : freq) ranked.push_back(f.second);
    for (int32_t n : {V / 8, 32}) {
        minicpm::tree_shape shape;
        scheduler s(target, engine_params(), reference_ops());
        auto md = std::make_unique<minicpm::model_drafter>(target, V, s.backend_ref(), minicpm::dtype::f32, 64, shape);
        md->restrict_vocab(ranked, n);
        auto rd = std::make_shared<recording_drafter>(std::move(md));
        s.set_drafter(rd, shape.tree_size - 1);
        const std::vector<outcome> drafted = run_all(s, reqs);
        struct minicpm_engine_stats st{};
        s.stats(st);
        std::vector<char> in(size_t(V), 0);
        for (int32_t j = 0; j < n; ++j) in[size_t(ranked[size_t(j)])] = 1;
        CHECK(drafted == plain && rd->n_outside(in) == 0 && st.n_spec_verifies > 0,
              "FR-Spec draft vocabulary %d of %d: greedy output == plain (%d tokens), %lld drafted nodes, %lld outside "
              "the subset; mean accept length %.2f", n, V, total_tokens(plain), (long long) rd->sum_nodes,
              (long long) rd->n_outside(in),
              st.n_spec_verifies ? 1.0 + double(st.n_spec_accepted) / double(st.n_spec_verifies) : 0.0);
    }
}

static std::unique_ptr<minicpm::model> load(const std::string & dir) {
    return minicpm::model::load(dir, true, MINICPM_BACKEND_CPU);
}

int main() {
    const std::string dir = minicpm_test::make_temp_dir("spec");
    std::filesystem::create_directories(dir + "/target");
    std::filesystem::create_directories(dir + "/weak");
    minicpm_test::tiny_model_spec spec;
    spec.tie_word_embeddings = false;
    spec.weight_std = 0.25f;
    minicpm_test::write_tiny_model(dir + "/target", spec);
    minicpm_test::tiny_model_spec weak = spec;
    weak.seed = 777;
    weak.n_layer = 1;
    minicpm_test::write_tiny_model(dir + "/weak", weak);
    try {
        std::unique_ptr<minicpm::model> target = load(dir + "/target");
        std::unique_ptr<minicpm::model> weak_model = load(dir + "/weak");
        g_model = target.get();

        test_layout();
        test_oracle_trees();
        minicpm::tree_shape shape;  // CPM.cu CLI defaults 2 / 10 / 12
        test_model_drafter(*target, "target-as-draft", shape, false);
        test_model_drafter(*target, "target-as-draft", shape, true);
        minicpm::tree_shape deep{4, 4, 16};
        test_model_drafter(*target, "target-as-draft", deep, true);
        test_model_drafter(*weak_model, "weak (other random model)", shape, false);
        test_model_drafter(*weak_model, "weak (other random model)", deep, false);

        test_vocab_subset(*target);
        test_accept_rule();
        {
            std::filesystem::create_directories(dir + "/small");
            std::filesystem::create_directories(dir + "/small-weak");
            minicpm_test::tiny_model_spec sm = spec;
            sm.n_vocab = 16;
            sm.n_embd = 32;
            sm.n_ff = 64;
            sm.weight_std = 0.3f;
            minicpm_test::write_tiny_model(dir + "/small", sm);
            sm.seed = 99;
            sm.n_layer = 1;
            minicpm_test::write_tiny_model(dir + "/small-weak", sm);
            std::unique_ptr<minicpm::model> small = load(dir + "/small");
            std::unique_ptr<minicpm::model> small_weak = load(dir + "/small-weak");
            test_sampled_distribution(*small, *small, "small target as draft", false);
            test_sampled_distribution(*small, *small, "small target as draft", true);
            test_sampled_distribution(*small, *small_weak, "small weak draft", false);
        }
    } catch (const std::exception & e) {
        CHECK(false, "unexpected exception: %s", e.what());
    }
    minicpm_test::remove_dir(dir);
    return minicpm_test::finish();
}
