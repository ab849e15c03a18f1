// Sampler checks: greedy and top-k = 1 pick the argmax, top-k / top-p / min-p keep the right sets (measured by
// sampling frequencies against the renormalized probabilities), penalty and bias amounts, seeding, logprobs.
#include "engine/sampler.h"
#include "tests/tiny-model.h"

#include <cmath>
#include <ctime>
#include <map>
#include <random>

using minicpm::sample_result;
using minicpm::sampler;
using minicpm::sampler_scratch;

static constexpr int32_t kVocab = 73448;  // the MiniCPM4 vocabulary: sizes the work like production

static minicpm_sampling_params defaults() {
    minicpm_sampling_params p;
    minicpm::default_sampling_params(p);
    return p;
}

static sampler make(const minicpm_sampling_params & p, int32_t n_vocab, const std::vector<int32_t> & prompt = {},
                    const std::vector<int32_t> & bias_ids = {}, const std::vector<float> & bias_values = {}) {
    return sampler(p, n_vocab, {2, 3}, nullptr, 0, bias_ids.data(), bias_values.data(), int32_t(bias_ids.size()),
                   prompt.data(), int32_t(prompt.size()));
}

static std::vector<float> random_logits(int32_t n, uint32_t seed) {
    std::mt19937                    gen(seed);
    std::normal_distribution<float> d(0.0f, 3.0f);
    std::vector<float>              v((size_t) n);
    for (float & x : v) x = d(gen);
    return v;
}

static int32_t argmax(const std::vector<float> & v) {
    return int32_t(std::max_element(v.begin(), v.end()) - v.begin());
}

// A distribution over 5 ids (the rest effectively zero): the sets top-k / top-p / min-p must keep are known.
static const std::vector<std::pair<int32_t, double>> kDist = {{10, 0.5}, {20, 0.2}, {30, 0.15}, {40, 0.1}, {50, 0.05}};

static std::vector<float> dist_logits(int32_t n) {
    std::vector<float> v(size_t(n), -1e4f);
    for (const auto & [id, p] : kDist) v[size_t(id)] = float(std::log(p));
    return v;
}

// Samples n times and compares frequencies with kDist restricted to `keep` and renormalized.
static void check_frequencies(const char * label, const minicpm_sampling_params & p,
                              const std::vector<int32_t> & keep) {
    const int32_t      n_vocab = 1000, n = 20000;
    std::vector<float> logits = dist_logits(n_vocab);
    sampler            s = make(p, n_vocab);
    sampler_scratch    scratch;
    std::map<int32_t, int32_t> counts;
    for (int32_t i = 0; i < n; ++i) counts[s.sample(logits.data(), scratch).token]++;

    double kept_mass = 0.0;
    for (const auto & [id, prob] : kDist)
        if (std::find(keep.begin(), keep.end(), id) != keep.end()) kept_mass += prob;
    int32_t outside = 0;
    for (const auto & [id, c] : counts)
        if (std::find(keep.begin(), keep.end(), id) == keep.end()) outside += c;
    CHECK(outside == 0, "%s: %d of %d draws outside the kept set", label, outside, n);
    const double tol = 0.015;  // > 4 standard deviations of a frequency over 20000 draws
    for (int32_t id : keep) {
        double want = 0.0;
        for (const auto & [did, prob] : kDist)
            if (did == id) want = prob / kept_mass;
        const double got = double(counts[id]) / n;
        CHECK(std::fabs(got - want) < tol, "%s: token %d frequency %.4f, expected %.4f (tol %.3f)", label, id, got,
              want, tol);
    }
}

// Rollback: accepting tokens then rolling some back leaves the penalties exactly as if only the kept tokens had
// been accepted, for windows that do and do not slide back over the prompt.
static void test_rollback() {
    std::mt19937 rng(5);
    int32_t      n_cases = 0, n_bad = 0;
    for (int32_t window : {-1, 3, 8}) {
        minicpm_sampling_params q = defaults();
        q.repetition_penalty = 1.5f;
        q.presence_penalty = 0.25f;
        q.frequency_penalty = 0.125f;
        q.penalty_last_n = window;
        const std::vector<int32_t> prompt = {1, 4, 4, 9, 12, 4};
        std::vector<int32_t>       gen(20);
        for (int32_t & t : gen) t = int32_t(rng() % 16);
        for (int32_t keep = 0; keep <= 20; keep += 3) {
            sampler a = make(q, 16, prompt), b = make(q, 16, prompt);
            for (int32_t t : gen) a.accept(t);
            a.rollback(20 - keep);
            for (int32_t i = 0; i < keep; ++i) b.accept(gen[size_t(i)]);
            for (int32_t t : {7, 4, 7, 15, 1}) {  // and the window keeps sliding the same way afterwards
                a.accept(t);
                b.accept(t);
            }
            std::vector<float> la = random_logits(16, uint32_t(keep)), lb = la;
            a.adjust(la.data());
            b.adjust(lb.data());
            ++n_cases;
            n_bad += la != lb || a.n_accepted() != keep + 5;
        }
    }
    CHECK(n_bad == 0, "rollback: %d of %d cases (windows -1/3/8, kept 0..20 of 20) differ from accepting only the "
          "kept tokens", n_bad, n_cases);
    sampler s = make(defaults(), 16);
    s.accept(3);
    minicpm_test::expect_error("rollback past the accepted tokens", MINICPM_STATUS_INTERNAL, {"rollback of 2"},
                               [&] { s.rollback(2); });
}

int main() {
    sampler_scratch scratch;
    test_rollback();

    // Greedy = argmax, and top-k = 1 at temperature 1 is greedy too.
    for (uint32_t seed = 1; seed <= 3; ++seed) {
        std::vector<float> l = random_logits(kVocab, seed);
        minicpm_sampling_params g = defaults();
        g.temperature = 0.0f;
        sampler gs = make(g, kVocab);
        const int32_t greedy = gs.sample(l.data(), scratch).token;
        minicpm_sampling_params k1 = defaults();
        k1.top_k = 1;
        k1.seed = seed;
        sampler ks = make(k1, kVocab);
        const int32_t topk1 = ks.sample(l.data(), scratch).token;
        CHECK(greedy == argmax(l), "row %u: greedy %d, argmax %d", seed, greedy, argmax(l));
        CHECK(topk1 == greedy, "row %u: top_k=1 %d, greedy %d", seed, topk1, greedy);
    }

    // Kept sets of the truncations on kDist = {10: .5, 20: .2, 30: .15, 40: .1, 50: .05}.
    minicpm_sampling_params p = defaults();
    p.seed = 7;
    check_frequencies("no truncation", p, {10, 20, 30, 40, 50});
    p.top_k = 3;
    check_frequencies("top_k 3", p, {10, 20, 30});
    p = defaults();
    p.top_p = 0.8f;  // cumulative .5 .7 .85: the third token crosses 0.8
    check_frequencies("top_p 0.8", p, {10, 20, 30});
    p = defaults();
    p.min_p = 0.35f;  // threshold 0.35 * 0.5 = 0.175
    check_frequencies("min_p 0.35", p, {10, 20});
    p = defaults();
    p.top_p = 0.9f;  // -> {10, 20, 30, 40}, then min_p 0.25 (threshold .125) drops 40
    p.min_p = 0.25f;
    check_frequencies("top_p 0.9 + min_p 0.25", p, {10, 20, 30});

    // Penalty amounts: prompt {5, 6, 7}, generated 8, 8, 6; logits 2 / -1 / 3 / 0.5 at ids 5 / 6 / 7 / 8.
    {
        minicpm_sampling_params q = defaults();
        q.repetition_penalty = 2.0f;
        q.presence_penalty = 0.5f;
        q.frequency_penalty = 0.25f;
        sampler s = make(q, 16, {5, 6, 7});
        for (int32_t t : {8, 8, 6}) s.accept(t);
        std::vector<float> l(16, 1.0f);
        l[5] = 2.0f, l[6] = -1.0f, l[7] = 3.0f, l[8] = 0.5f;
        s.adjust(l.data());
        // 5: 2 / 2; 6: -1 * 2 - 0.5 - 0.25; 7: 3 / 2; 8: 0.5 / 2 - 0.5 - 0.5; 9 unseen stays 1.
        const float want[5] = {1.0f, -2.75f, 1.5f, -0.75f, 1.0f};
        for (int32_t i = 0; i < 5; ++i)
            CHECK(std::fabs(l[size_t(5 + i)] - want[i]) < 1e-6f, "penalties: logit[%d] = %g, expected %g", 5 + i,
                  l[size_t(5 + i)], want[i]);

        q.penalty_last_n = 2;  // window = the last two tokens (8, 6): 5 and 7 are no longer penalized
        sampler w = make(q, 16, {5, 6, 7});
        for (int32_t t : {8, 8, 6}) w.accept(t);
        std::vector<float> m(16, 1.0f);
        m[5] = 2.0f, m[6] = -1.0f, m[7] = 3.0f, m[8] = 0.5f;
        w.adjust(m.data());
        CHECK(m[5] == 2.0f && m[7] == 3.0f, "penalty_last_n 2: logits 5, 7 untouched (%g, %g)", m[5], m[7]);
        CHECK(std::fabs(m[6] - (-2.75f)) < 1e-6f && std::fabs(m[8] - (0.25f - 0.5f - 0.25f)) < 1e-6f,
              "penalty_last_n 2: logit 6 = %g (want -2.75), logit 8 = %g (want -0.5: one 8 in the window)", m[6],
              m[8]);
    }

    // Bias: -inf forbids the argmax (greedy and sampled); a finite bias adds its value.
    {
        std::vector<float> l = random_logits(kVocab, 11);
        const int32_t      top = argmax(l);
        minicpm_sampling_params g = defaults();
        g.temperature = 0.0f;
        sampler gs = make(g, kVocab, {}, {top, 100}, {-INFINITY, 1.5f});
        std::vector<float> adj = l;
        gs.adjust(adj.data());
        CHECK(adj[100] == l[100] + 1.5f, "bias +1.5 on id 100: %g -> %g", l[100], adj[100]);
        const int32_t got = gs.sample(l.data(), scratch).token;
        CHECK(got != top && got == argmax(adj), "bias -inf on argmax %d: greedy picks %d (next best %d)", top, got,
              argmax(adj));
        minicpm_sampling_params hot = defaults();
        hot.temperature = 50.0f;  // nearly uniform: the forbidden token would come up often otherwise
        std::vector<float> flat(64, 0.0f);
        sampler hs = make(hot, 64, {}, {9}, {-INFINITY});
        int32_t n_forbidden = 0;
        for (int32_t i = 0; i < 5000; ++i) n_forbidden += hs.sample(flat.data(), scratch).token == 9;
        CHECK(n_forbidden == 0, "bias -inf on id 9 of a flat distribution: drawn %d of 5000 times", n_forbidden);
        sampler all = make(g, 4, {}, {0, 1, 2, 3}, {-INFINITY, -INFINITY, -INFINITY, -INFINITY});
        minicpm_test::expect_error("every token forbidden", MINICPM_STATUS_INVALID_ARGUMENT, {"forbidden"},
                                   [&] { all.sample(flat.data(), scratch); });
    }

    // Seeds: the same seed replays the same tokens, another seed does not.
    {
        std::vector<std::vector<float>> rows;
        for (uint32_t i = 0; i < 64; ++i) rows.push_back(random_logits(kVocab, 100 + i));
        auto run = [&](uint64_t seed) {
            minicpm_sampling_params q = defaults();
            q.seed = seed;
            q.temperature = 1.5f;
            q.top_p = 0.95f;
            sampler            s = make(q, kVocab);
            std::vector<int32_t> out;
            for (const auto & r : rows) {
                out.push_back(s.sample(r.data(), scratch).token);
                s.accept(out.back());
            }
            return out;
        };
        const auto a = run(42), b = run(42), c = run(43);
        int32_t n_diff = 0;
        for (size_t i = 0; i < a.size(); ++i) n_diff += a[i] != c[i];
        CHECK(a == b, "seed 42 twice: %zu tokens identical (first %d %d %d)", a.size(), a[0], a[1], a[2]);
        CHECK(n_diff > 0, "seed 42 vs 43: %d of %zu tokens differ", n_diff, a.size());
    }

    // Logprobs: log-softmax of the raw logits; over a 20-token vocab the top 20 cover everything.
    {
        std::vector<float> l = random_logits(20, 5);
        minicpm_sampling_params q = defaults();
        q.logprobs = 1;
        q.n_top_logprobs = 20;
        q.temperature = 0.0f;
        q.repetition_penalty = 3.0f;  // penalties must not change the reported logprobs
        sampler         s = make(q, 20, {argmax(l)});
        sample_result   r = s.sample(l.data(), scratch);
        double sum = 0.0;
        bool   sorted = true;
        for (int32_t j = 0; j < r.n_top; ++j) {
            sum += std::exp(double(r.top_logprobs[j]));
            if (j > 0 && r.top_logprobs[j] > r.top_logprobs[j - 1]) sorted = false;
        }
        CHECK(r.n_top == 20 && std::fabs(sum - 1.0) < 1e-5, "sum of exp(top 20 logprobs) over 20 tokens = %.7f", sum);
        CHECK(sorted && r.top_tokens[0] == argmax(l), "top logprobs sorted, first is argmax %d (%d)", argmax(l),
              r.top_tokens[0]);
        double z = 0.0;
        for (float x : l) z += std::exp(double(x));
        const double want = double(l[size_t(r.token)]) - std::log(z);
        CHECK(std::fabs(r.logprob - want) < 1e-5, "logprob of token %d = %.6f, log-softmax of raw logits %.6f",
              r.token, r.logprob, want);
    }

    // Stops: EOS ids unless ignore_eos, extra stop ids always.
    {
        minicpm_sampling_params q = defaults();
        const int32_t stop[1] = {7};
        sampler a(q, 16, {2, 3}, stop, 1, nullptr, nullptr, 0, nullptr, 0);
        q.ignore_eos = 1;
        sampler b(q, 16, {2, 3}, stop, 1, nullptr, nullptr, 0, nullptr, 0);
        CHECK(a.is_stop(2) && a.is_stop(3) && a.is_stop(7) && !a.is_stop(4), "stops: eos 2, 3 and stop id 7");
        CHECK(!b.is_stop(2) && !b.is_stop(3) && b.is_stop(7), "ignore_eos: eos 2, 3 no longer stop, 7 still does");
    }

    // Validation names the field.
    {
        auto bad = [](const char * field, auto edit) {
            minicpm_sampling_params q = defaults();
            edit(q);
            minicpm_test::expect_error(field, MINICPM_STATUS_INVALID_ARGUMENT, {field},
                                       [&] { minicpm::validate_sampling_params(q); });
        };
        bad("temperature", [](auto & q) { q.temperature = NAN; });
        bad("top_p", [](auto & q) { q.top_p = -0.1f; });
        bad("min_p", [](auto & q) { q.min_p = 1.5f; });
        bad("repetition_penalty", [](auto & q) { q.repetition_penalty = 0.0f; });
        bad("frequency_penalty", [](auto & q) { q.frequency_penalty = INFINITY; });
        bad("penalty_last_n", [](auto & q) { q.penalty_last_n = -2; });
        bad("n_top_logprobs", [](auto & q) { q.n_top_logprobs = 21; });
        const minicpm_sampling_params q = defaults();
        const int32_t stop[2] = {1, 16};
        minicpm_test::expect_error("stop id out of range", MINICPM_STATUS_INVALID_ARGUMENT, {"stop_ids[1]", "16"},
                                   [&] { sampler(q, 16, {}, stop, 2, nullptr, nullptr, 0, nullptr, 0); });
        const int32_t bias_id[1] = {-1};
        const float   bias_v[1] = {1.0f};
        minicpm_test::expect_error("bias id out of range", MINICPM_STATUS_INVALID_ARGUMENT, {"bias_ids[0]"},
                                   [&] { sampler(q, 16, {}, nullptr, 0, bias_id, bias_v, 1, nullptr, 0); });
    }

    // Cost per token on the real vocabulary (printed, not asserted).
    {
        std::vector<float> l = random_logits(kVocab, 77);
        auto time_us = [&](const char * label, const minicpm_sampling_params & q) {
            // Thread CPU time: the wall clock of a shared machine would mostly measure the other processes.
            auto cpu_us = [] {
                timespec ts;
                clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
                return double(ts.tv_sec) * 1e6 + double(ts.tv_nsec) / 1e3;
            };
            sampler      s = make(q, kVocab);
            const int    n = 50;
            const double t0 = cpu_us();
            for (int i = 0; i < n; ++i) s.sample(l.data(), scratch);
            std::printf("info %-34s %8.1f us CPU per token (vocab %d)\n", label, (cpu_us() - t0) / n, kVocab);
        };
        minicpm_sampling_params q = defaults();
        q.temperature = 0.0f;
        time_us("greedy", q);
        q = defaults();
        time_us("temperature 1", q);
        q.top_p = 0.9f;
        time_us("top_p 0.9", q);
        q = defaults();
        q.top_k = 40;
        q.top_p = 0.95f;
        q.min_p = 0.05f;
        q.n_top_logprobs = 20;
        time_us("top_k 40 + top_p + min_p + top 20", q);
    }
    return minicpm_test::finish();
}
