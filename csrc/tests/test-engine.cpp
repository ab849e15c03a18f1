// Engine checks on a tiny random checkpoint: batching invariance of greedy tokens (vs each request alone and
// vs a greedy loop over minicpm_context_eval), preemption by recompute, cancel in prefill and in decode, queue
// and size limits, chunked prefill interleaved with decode, seeds, the doorbell, and errors that end one
// request while the engine keeps serving. The scheduler runs the reference ops so that batch composition cannot
// change a single bit of the logits; the C API section uses the library's fast ops.
#include "engine/scheduler.h"
#include "minicpm.h"
#include "tests/tiny-model.h"

#include <atomic>
#include <cmath>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

using minicpm::scheduler;
using minicpm::step_trace;

using minicpm_test::greedy;
using minicpm_test::reference_ops;
using minicpm_test::str;

static const minicpm::model * g_model = nullptr;

static minicpm_model_t *      g_handle = nullptr;

static minicpm_engine_params engine_params(int32_t n_chunk = 32, int32_t kv_blocks = 64) {
    minicpm_engine_params p;
    minicpm_engine_default_params(&p);
    p.n_threads = 2;
    p.n_chunk = n_chunk;
    p.n_ctx = 256;
    p.kv_dtype = MINICPM_DTYPE_F32;
    p.kv_bytes = uint64_t(kv_blocks) * minicpm::kv_pool::bytes_per_block(g_model->config(), minicpm::dtype::f32);
    return p;
}

static std::vector<int32_t> prompt_of(int32_t n, int32_t salt) {
    std::vector<int32_t> t;
    for (int32_t i = 0; i < n; ++i) t.push_back(4 + (i * 37 + salt * 101) % 500);
    return t;
}

static uint64_t submit(scheduler & s, const std::vector<int32_t> & prompt, const minicpm_sampling_params & sp) {
    return s.submit(prompt.data(), int32_t(prompt.size()), &sp, nullptr, 0, nullptr, nullptr, 0);
}

// Drains a request until its finish event (or a 60 s timeout, which fails the check that follows).
static std::vector<minicpm_event> collect(scheduler & s, uint64_t id) {
    std::vector<minicpm_event> all;
    minicpm_event              buf[16];
    const auto                 deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
        const int32_t n = s.drain(id, buf, 16, nullptr);
        all.insert(all.end(), buf, buf + n);
        if (!all.empty() && all.back().finish_reason != MINICPM_FINISH_NONE) break;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return all;
}

static std::vector<int32_t> tokens_of(const std::vector<minicpm_event> & ev) {
    std::vector<int32_t> t;
    for (const auto & e : ev)
        if (e.token >= 0) t.push_back(e.token);
    return t;
}

static int32_t finish_of(const std::vector<minicpm_event> & ev) {
    return ev.empty() ? -1 : ev.back().finish_reason;
}

// Greedy continuation computed with minicpm_context_eval (reference ops, f32 KV): the independent oracle.
// logprobs (optional) receives the log-softmax of each chosen token.
static std::vector<int32_t> context_greedy(const std::vector<int32_t> & prompt, int32_t n,
                                           std::vector<double> * logprobs = nullptr) {
    minicpm_context_params cp;
    minicpm_context_default_params(&cp);
    cp.n_ctx = 256;
    cp.n_threads = 1;
    cp.use_reference = 1;
    minicpm_context_t * ctx = nullptr;
    std::vector<int32_t> out;
    if (minicpm_context_init(g_handle, &cp, &ctx) != MINICPM_STATUS_OK) return out;
    const int32_t      n_vocab = g_model->config().n_vocab;
    std::vector<float> logits((size_t) n_vocab);
    std::vector<int32_t> feed = prompt;
    for (int32_t i = 0; i < n; ++i) {
        if (minicpm_context_eval(ctx, feed.data(), nullptr, nullptr, int32_t(feed.size()), logits.data(), n_vocab) != 1)
            break;
        const int32_t t = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        out.push_back(t);
        if (logprobs != nullptr) {
            double z = 0.0;
            for (float x : logits) z += std::exp(double(x) - double(logits[size_t(t)]));
            logprobs->push_back(-std::log(z));
        }
        feed = {t};
    }
    minicpm_context_free(ctx);
    return out;
}

// Holds the scheduler thread inside the step observer until opened, so the test controls what is queued.
struct gate {
    std::mutex              m;
    std::condition_variable cv;
    bool                    closed = false, holding = false;
    void pass() {
        std::unique_lock<std::mutex> lk(m);
        holding = true;
        cv.notify_all();
        cv.wait(lk, [this] { return !closed; });
        holding = false;
    }
    void wait_holding() {
        std::unique_lock<std::mutex> lk(m);
        cv.wait(lk, [this] { return holding; });
    }
    void set(bool c) {
        std::lock_guard<std::mutex> lk(m);
        closed = c;
        cv.notify_all();
    }
};

static void test_batching_invariance() {
    const std::vector<int32_t> lens = {3, 17, 70, 150};
    const int32_t              n_gen = 12;
    minicpm_sampling_params    sp = greedy(n_gen);
    sp.logprobs = 1;  // compares the logits behind the tokens too, not only their argmax
    std::vector<std::vector<int32_t>>       alone, together;
    std::vector<std::vector<minicpm_event>> alone_ev, together_ev;
    {
        scheduler s(*g_model, engine_params(), reference_ops());
        for (size_t i = 0; i < lens.size(); ++i) {
            alone_ev.push_back(collect(s, submit(s, prompt_of(lens[i], int32_t(i)), sp)));
            alone.push_back(tokens_of(alone_ev.back()));
        }
    }
    {
        scheduler s(*g_model, engine_params(), reference_ops());
        std::atomic<int32_t> n_mixed{0};
        s.set_step_observer([&](const step_trace & t) {
            if (t.parts.size() > 1) n_mixed++;
        });
        std::vector<uint64_t> ids;
        for (size_t i = 0; i < lens.size(); ++i) ids.push_back(submit(s, prompt_of(lens[i], int32_t(i)), sp));
        for (uint64_t id : ids) {
            together_ev.push_back(collect(s, id));
            together.push_back(tokens_of(together_ev.back()));
        }
        CHECK(n_mixed > 0, "4 concurrent requests shared %d steps", n_mixed.load());
        struct minicpm_engine_stats st;
        s.stats(st);
        CHECK(st.kv_tokens_used == 0 && st.n_running == 0 && st.n_generated_tokens == uint64_t(4 * n_gen),
              "after all finished: kv_tokens_used %d, n_running %d, generated %llu", st.kv_tokens_used, st.n_running,
              (unsigned long long) st.n_generated_tokens);
    }
    for (size_t i = 0; i < lens.size(); ++i) {
        std::vector<double>        oracle_lp;
        const std::vector<int32_t> oracle = context_greedy(prompt_of(lens[i], int32_t(i)), n_gen, &oracle_lp);
        bool   same_bits = alone_ev[i].size() == together_ev[i].size();
        double max_diff = 0.0;
        for (size_t j = 0; same_bits && j < alone_ev[i].size(); ++j) {
            same_bits = alone_ev[i][j].logprob == together_ev[i][j].logprob;
            if (j < oracle_lp.size()) max_diff = std::max(max_diff, std::fabs(alone_ev[i][j].logprob - oracle_lp[j]));
        }
        CHECK(int32_t(alone[i].size()) == n_gen && together[i] == alone[i] && same_bits,
              "prompt %d: batched [%s] == alone [%s], logprobs bit-identical: %d", lens[i], str(together[i]).c_str(),
              str(alone[i]).c_str(), int(same_bits));
        CHECK(alone[i] == oracle && max_diff < 1e-5,
              "prompt %d: engine [%s] == context eval greedy [%s], max |logprob diff| %.2e (tol 1e-5)", lens[i],
              str(alone[i]).c_str(), str(oracle).c_str(), max_diff);
    }
}

static void test_preemption() {
    // 4 blocks (256 tokens) for 3 requests that each grow to 60 + 100 tokens (3 blocks): someone must yield.
    scheduler s(*g_model, engine_params(32, 4), reference_ops());
    std::vector<uint64_t> ids;
    for (int32_t i = 0; i < 3; ++i) ids.push_back(submit(s, prompt_of(60, 10 + i), greedy(100)));
    for (int32_t i = 0; i < 3; ++i) {
        const auto ev = collect(s, ids[size_t(i)]);
        const auto want = context_greedy(prompt_of(60, 10 + i), 100);
        CHECK(finish_of(ev) == MINICPM_FINISH_LENGTH && tokens_of(ev) == want,
              "small pool, request %d: %zu tokens, finish %d, == context greedy: %d", i, tokens_of(ev).size(),
              finish_of(ev), int(tokens_of(ev) == want));
    }
    struct minicpm_engine_stats st;
    s.stats(st);
    // Without preemption the three could not all reach 160 tokens in 256 slots; prefilled > 3 x 60 shows recompute.
    CHECK(st.n_prompt_tokens > 180 && st.kv_tokens_used == 0,
          "preemption by recompute: %llu tokens prefilled for 3 x 60 prompt tokens, kv_tokens_used %d of %d",
          (unsigned long long) st.n_prompt_tokens, st.kv_tokens_used, st.kv_tokens_total);
}

static void test_cancel() {
    scheduler s(*g_model, engine_params(16), reference_ops());
    std::atomic<uint64_t> target{0};
    std::atomic<bool>    in_prefill{true};
    minicpm_request_info at_cancel{};
    // Cancels from the scheduler thread at a known point: after the target's first prefill chunk, or its first
    // decode step.
    s.set_step_observer([&](const step_trace & t) {
        for (const auto & p : t.parts) {
            if (p.request_id != target || p.prefill != in_prefill) continue;
            s.request_info(p.request_id, at_cancel);
            s.cancel(p.request_id);
            target = 0;
        }
    });
    const std::vector<int32_t> prompt = prompt_of(200, 3);
    const minicpm_sampling_params sp = greedy(50);
    target = submit(s, prompt, sp);
    const int32_t a = target;
    auto ev = collect(s, a);
    struct minicpm_engine_stats st;
    s.stats(st);
    CHECK(finish_of(ev) == MINICPM_FINISH_CANCELLED && tokens_of(ev).empty() && at_cancel.n_prefilled < 200,
          "cancel in prefill (at %d of 200 prompt tokens): %zu events, finish %d", at_cancel.n_prefilled, ev.size(),
          finish_of(ev));
    CHECK(st.kv_tokens_used == 0 && st.n_running == 0, "after cancel in prefill: kv_tokens_used %d, n_running %d",
          st.kv_tokens_used, st.n_running);

    in_prefill = false;
    target = submit(s, prompt, sp);
    const int32_t b = target;
    ev = collect(s, b);
    s.stats(st);
    CHECK(finish_of(ev) == MINICPM_FINISH_CANCELLED && !tokens_of(ev).empty() && tokens_of(ev).size() < 50,
          "cancel in decode: %zu tokens then finish %d", tokens_of(ev).size(), finish_of(ev));
    CHECK(st.kv_tokens_used == 0 && st.n_running == 0 && st.n_undrained == 0,
          "after cancel in decode: kv_tokens_used %d, n_running %d, n_undrained %d", st.kv_tokens_used, st.n_running,
          st.n_undrained);
    minicpm_test::expect_error("cancel after release", MINICPM_STATUS_NOT_FOUND, {"not found"}, [&] { s.cancel(b); });
}

static void test_limits() {
    minicpm_engine_params p = engine_params(32, 2);  // 2 blocks = 128 tokens
    p.n_queue_max = 2;
    p.n_batch_max = 1;
    scheduler s(*g_model, p, reference_ops());
    minicpm_test::expect_error("prompt of 300 > n_ctx 256", MINICPM_STATUS_TOO_LARGE, {"300", "256"},
                               [&] { submit(s, prompt_of(300, 1), greedy(1)); });
    minicpm_test::expect_error("prompt of 200 > KV pool of 128 tokens", MINICPM_STATUS_TOO_LARGE, {"200", "128"},
                               [&] { submit(s, prompt_of(200, 1), greedy(1)); });

    gate g;
    g.set(true);
    s.set_step_observer([&](const step_trace &) { g.pass(); });
    const uint64_t first = submit(s, prompt_of(10, 1), greedy(5));
    g.wait_holding();  // first is admitted (n_batch_max 1) and the thread is parked: the next two must wait
    const uint64_t w1 = submit(s, prompt_of(10, 2), greedy(5));
    const uint64_t w2 = submit(s, prompt_of(10, 3), greedy(5));
    struct minicpm_engine_stats st;
    s.stats(st);
    minicpm_test::expect_error("third waiting request", MINICPM_STATUS_QUEUE_FULL, {"n_queue_max 2"},
                               [&] { submit(s, prompt_of(10, 4), greedy(5)); });
    CHECK(st.n_running == 1 && st.n_waiting == 2, "queue bound: n_running %d, n_waiting %d", st.n_running,
          st.n_waiting);
    g.set(false);
    s.set_step_observer(nullptr);
    int32_t n_ok = 0;
    for (uint64_t id : {first, w1, w2}) n_ok += finish_of(collect(s, id)) == MINICPM_FINISH_LENGTH;
    CHECK(n_ok == 3 && first > 0 && w1 > first && w2 > w1, "all 3 finished (%d), ids increase: %d %d %d", n_ok,
          first, w1, w2);
}

static void test_interleave() {
    scheduler s(*g_model, engine_params(32), reference_ops());
    std::mutex              mu;
    std::vector<step_trace> steps;
    uint64_t                b = 0;
    const std::vector<int32_t> long_prompt = prompt_of(200, 9);
    s.set_step_observer([&](const step_trace & t) {
        std::lock_guard<std::mutex> lk(mu);
        steps.push_back(t);
        // Once a is decoding, a 200-token prompt arrives: it must be prefilled 32 tokens per step around a.
        if (b == 0 && !t.parts.empty() && !t.parts[0].prefill) b = submit(s, long_prompt, greedy(3));
    });
    const uint64_t a = submit(s, prompt_of(5, 8), greedy(30));
    const auto    ev_a = collect(s, a);
    int32_t       b_id = 0;
    for (int i = 0; i < 1000 && b_id == 0; ++i) {
        {
            std::lock_guard<std::mutex> lk(mu);
            b_id = b;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    collect(s, b_id);
    s.set_step_observer(nullptr);
    std::lock_guard<std::mutex> lk(mu);
    int32_t n_b_prefill = 0, n_shared = 0, max_chunk = 0;
    for (const auto & t : steps) {
        bool b_pre = false, a_dec = false;
        for (const auto & p : t.parts) {
            if (p.request_id == b && p.prefill) b_pre = true, max_chunk = std::max(max_chunk, p.n_rows);
            if (p.request_id == a && !p.prefill) a_dec = true;
        }
        n_b_prefill += b_pre;
        n_shared += b_pre && a_dec;
    }
    CHECK(n_b_prefill == 7 && n_shared == n_b_prefill && max_chunk == 32,
          "200-token prompt prefilled over %d steps (largest chunk %d), %d of them also decoded the running request",
          n_b_prefill, max_chunk, n_shared);
    CHECK(tokens_of(ev_a) == context_greedy(prompt_of(5, 8), 30), "running request's tokens unchanged by the "
          "interleaved prefill (%zu tokens)", tokens_of(ev_a).size());
}

static void test_seed() {
    scheduler s(*g_model, engine_params(), reference_ops());
    auto run = [&](uint64_t seed, bool with_company) {
        minicpm_sampling_params sp = greedy(16);
        sp.temperature = 1.5f;
        sp.top_p = 0.95f;
        sp.seed = seed;
        uint64_t other = 0;
        if (with_company) other = submit(s, prompt_of(40, 6), greedy(16));
        const auto t = tokens_of(collect(s, submit(s, prompt_of(12, 5), sp)));
        if (other) collect(s, other);
        return t;
    };
    const auto a = run(123, false), b = run(123, true), c = run(124, false);
    int32_t n_diff = 0;
    for (size_t i = 0; i < std::min(a.size(), c.size()); ++i) n_diff += a[i] != c[i];
    CHECK(a.size() == 16 && a == b, "seed 123 alone [%s] == seed 123 batched with another request [%s]",
          str(a).c_str(), str(b).c_str());
    CHECK(n_diff > 0, "seed 124 differs from seed 123 in %d of 16 tokens", n_diff);
}

// Multi-token steps: a drafter proposes continuations, the step verifies them in one causal run and keeps what
// the samples confirm. The output must equal decoding without drafts token for token: greedy, and sampled with
// penalties and a seed (each emitted token consumes one draw either way, and the sampler's penalty window is
// rolled back past rejected drafts). Drafts come from the plain run (right) with every third one corrupted, or
// are always wrong.
static void test_drafts() {
    struct req {
        std::vector<int32_t>    prompt;
        minicpm_sampling_params sp;
    };
    std::vector<req> reqs;
    for (int32_t i = 0; i < 3; ++i) reqs.push_back({prompt_of(20 + 9 * i, 30 + i), greedy(i == 1 ? 23 : 40)});
    minicpm_sampling_params hot = greedy(37);
    hot.temperature = 0.9f;
    hot.repetition_penalty = 1.3f;
    hot.frequency_penalty = 0.2f;
    hot.penalty_last_n = 8;
    hot.seed = 42;
    reqs.push_back({prompt_of(15, 77), hot});

    auto run = [&](scheduler & s, std::vector<std::vector<int32_t>> & out) {
        std::vector<uint64_t> ids;
        for (const req & r : reqs) ids.push_back(submit(s, r.prompt, r.sp));
        out.clear();
        for (uint64_t id : ids) out.push_back(tokens_of(collect(s, id)));
    };
    std::vector<std::vector<int32_t>> plain, drafted, wrong;
    std::atomic<int32_t> plain_steps{0}, drafted_steps{0}, n_proposed{0}, n_rows_drafted{0};
    {
        scheduler s(*g_model, engine_params(32, 64), reference_ops());
        s.set_step_observer([&](const step_trace &) { plain_steps++; });
        run(s, plain);
    }
    std::map<uint64_t, std::vector<int32_t>> oracle;  // request id -> prompt + plain output
    int32_t calls = 0;
    {
        scheduler s(*g_model, engine_params(32, 64), reference_ops());
        s.set_drafter(
            [&](uint64_t id, const int32_t * toks, int32_t n, int32_t * out, int32_t max) {
                const std::vector<int32_t> & o = oracle[id];
                int32_t k = 0;
                for (; k < max && n + k < int32_t(o.size()); ++k) out[k] = o[size_t(n + k)];
                if (++calls % 2 == 0 && k >= 3) out[2] = (out[2] + 1) % 500;  // a wrong third draft
                n_proposed += k;
                return k;
            },
            5);
        s.set_step_observer([&](const step_trace & t) {
            drafted_steps++;
            for (const auto & p : t.parts)
                if (!p.prefill && p.n_rows > 1) n_rows_drafted += p.n_rows - 1;
        });
        // Request ids are 1.. in submit order: the oracle is known before the first step drafts.
        for (size_t i = 0; i < reqs.size(); ++i) {
            std::vector<int32_t> o = reqs[i].prompt;
            o.insert(o.end(), plain[i].begin(), plain[i].end());
            oracle[uint64_t(i + 1)] = o;
        }
        run(s, drafted);
        struct minicpm_engine_stats st;
        s.stats(st);
        CHECK(st.kv_tokens_used == 0 && st.n_running == 0, "after drafted runs: kv used %d, running %d",
              st.kv_tokens_used, st.n_running);
    }
    {
        scheduler s(*g_model, engine_params(32, 64), reference_ops());
        s.set_drafter(
            [&](uint64_t, const int32_t *, int32_t, int32_t * out, int32_t max) {
                for (int32_t k = 0; k < max; ++k) out[k] = 3;  // never what the model picks here
                return max;
            },
            4);
        run(s, wrong);
    }
    int32_t n_tokens = 0;
    for (const auto & t : plain) n_tokens += int32_t(t.size());
    CHECK(drafted == plain && wrong == plain && plain[1].size() == 23 && plain[0].size() == 40,
          "drafted (right with every 2nd call's 3rd draft wrong) and always-wrong drafts give the plain output: "
          "%d tokens in 4 requests (greedy x3, temperature+penalties+seed x1); plain [%s]",
          n_tokens, str(plain[3]).c_str());
    CHECK(drafted_steps < plain_steps && n_rows_drafted > 0,
          "multi-token steps: %d steps with drafts vs %d plain, %d draft rows verified of %d proposed",
          drafted_steps.load(), plain_steps.load(), n_rows_drafted.load(), n_proposed.load());
}

// A backend whose matmul fails on demand: the forward throws, the batch ends with FINISH_ERROR. device_like:
// it also poses as a device backend (not host memory) with a greedy-only sampler, so the scheduler's device
// sampling path (logits left in the workspace, only ids back, host fallback) runs on the CPU.
static std::atomic<bool> g_fail_matmul{false};
static std::atomic<int32_t> g_device_samples{0}, g_device_declined{0};
class failing_backend final : public minicpm::backend {
  public:
    explicit failing_backend(std::unique_ptr<minicpm::backend> inner, bool device_like = false)
        : in_(std::move(inner)), device_like_(device_like) {}
    minicpm::backend_kind kind() const override { return in_->kind(); }
    const char * name() const override { return "failing"; }
    const char * features() const override { return in_->features(); }
    int n_threads() const override { return in_->n_threads(); }
    bool host_memory() const override { return in_->host_memory() && !device_like_; }
    // Greedy rows as sampler::adjust + argmax would pick them; a batch with a sampled row is declined.
    bool sample(const float * logits, int32_t V, const minicpm::sample_row * rows, int32_t R,
                const minicpm::sample_adjust * adj, int32_t, minicpm::sample_out * out) override {
        if (!device_like_) return false;
        for (int32_t r = 0; r < R; ++r)
            if (rows[r].temperature > 0.0f) {
                g_device_declined++;
                return false;
            }
        std::vector<float> l;
        for (int32_t r = 0; r < R; ++r) {
            l.assign(logits + size_t(r) * V, logits + size_t(r + 1) * V);
            for (int32_t e = 0; e < rows[r].n_adjust; ++e) {
                const minicpm::sample_adjust & a = adj[rows[r].adjust_begin + e];
                float x = l[size_t(a.token)] + a.bias;
                if (a.n_all > 0) {
                    const float rep = rows[r].repetition_penalty;
                    if (rep != 1.0f) x = x > 0.0f ? x / rep : x * rep;
                    x -= rows[r].presence_penalty * float(a.n_generated > 0) +
                         rows[r].frequency_penalty * float(a.n_generated);
                }
                l[size_t(a.token)] = x;
            }
            out[r].token = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
            out[r].logprob = 0.0f;
        }
        g_device_samples += R;
        return true;
    }
    minicpm::thread_pool * host_pool() override { return in_->host_pool(); }
    minicpm::buffer alloc(size_t n, minicpm::buffer_usage u) override { return in_->alloc(n, u); }
    void release(minicpm::buffer & b) override { in_->release(b); }
    minicpm::buffer import_weights(const void * h, size_t n) override { return in_->import_weights(h, n); }
    void upload(const minicpm::buffer & d, size_t o, const void * s, size_t n) override { in_->upload(d, o, s, n); }
    void download(void * d, const minicpm::buffer & s, size_t o, size_t n) override { in_->download(d, s, o, n); }
    void copy(const minicpm::buffer & d, size_t a, const minicpm::buffer & s, size_t b, size_t n) override {
        in_->copy(d, a, s, b, n);
    }
    void fill_zero(const minicpm::buffer & d, size_t o, size_t n) override { in_->fill_zero(d, o, n); }
    void synchronize() override { in_->synchronize(); }
    void matmul(float * y, const float * x, const minicpm::tensor_desc & w, int64_t T) override {
        if (g_fail_matmul) minicpm::fail(MINICPM_STATUS_INTERNAL, "injected matmul failure");
        in_->matmul(y, x, w, T);
    }
    void rms_norm(float * y, const float * x, const minicpm::tensor_desc & g, int64_t T, float eps) override {
        in_->rms_norm(y, x, g, T, eps);
    }
    void embed(float * o, const int32_t * t, const minicpm::tensor_desc & e, int64_t T, float s) override {
        in_->embed(o, t, e, T, s);
    }
    void rope(float * x, const int32_t * p, const float * cs, int64_t T, int32_t nh, int32_t hd) override {
        in_->rope(x, p, cs, T, nh, hd);
    }
    void kv_store(const minicpm::kv_layer & kv, const float * k, const float * v, const minicpm::kv_segment * s,
                  int32_t n) override {
        in_->kv_store(kv, k, v, s, n);
    }
    void attention(float * o, const float * q, const minicpm::kv_layer & kv, const minicpm::kv_segment * s,
                   int32_t n, int32_t nh, float sc) override {
        in_->attention(o, q, kv, s, n, nh, sc);
    }
    void kv_compress(const minicpm::kv_compressed & cc, const minicpm::kv_layer & kv, const minicpm::kv_segment * s,
                     const int32_t * from, int32_t n) override {
        in_->kv_compress(cc, kv, s, from, n);
    }
    void sparse_attention(float * o, const float * q, const minicpm::kv_layer & kv, const minicpm::kv_compressed & cc,
                          const minicpm::kv_segment * s, int32_t n, int32_t nh, float sc,
                          const minicpm::sparse_attn_params & sp, uint64_t * sel, int32_t words) override {
        in_->sparse_attention(o, q, kv, cc, s, n, nh, sc, sp, sel, words);
    }
    void silu_mul(float * o, const float * g, const float * u, int64_t n) override { in_->silu_mul(o, g, u, n); }
    void add_scaled(float * x, const float * a, float s, int64_t n) override { in_->add_scaled(x, a, s, n); }
    void div_scalar(float * x, float d, int64_t n) override { in_->div_scalar(x, d, n); }
    void get_rows(float * d, const float * s, const int32_t * r, int64_t R, int64_t H) override {
        in_->get_rows(d, s, r, R, H);
    }

  private:
    std::unique_ptr<minicpm::backend> in_;
    bool                              device_like_;
};

// The scheduler's device sampling seam on the CPU: greedy requests with bias and penalties give the plain
// engine's tokens when a (posing) device samples them, and a batch with a sampled request falls back to host
// sampling of downloaded logits with the same tokens as the plain engine.
static void test_device_sampling_seam() {
    minicpm_sampling_params pen = greedy(20);
    pen.repetition_penalty = 1.4f;
    pen.presence_penalty = 0.5f;
    pen.frequency_penalty = 0.3f;
    minicpm_sampling_params hot = greedy(20);
    hot.temperature = 0.8f;
    hot.top_k = 40;
    hot.seed = 9;
    const int32_t bias_ids[] = {7, 11, 7};
    const float   bias_values[] = {1.5f, -INFINITY, 0.25f};
    auto run = [&](scheduler & s, bool with_hot) {
        std::vector<uint64_t> ids = {submit(s, prompt_of(12, 1), greedy(20)), submit(s, prompt_of(30, 2), pen),
                                     s.submit(prompt_of(9, 3).data(), 9, &pen, nullptr, 0, bias_ids, bias_values, 2)};
        if (with_hot) ids.push_back(submit(s, prompt_of(17, 4), hot));
        std::vector<std::vector<int32_t>> out;
        for (uint64_t id : ids) out.push_back(tokens_of(collect(s, id)));
        return out;
    };
    for (bool with_hot : {false, true}) {
        std::vector<std::vector<int32_t>> plain, dev;
        {
            scheduler s(*g_model, engine_params(), reference_ops());
            plain = run(s, with_hot);
        }
        g_device_samples = 0;
        g_device_declined = 0;
        {
            scheduler s(*g_model, engine_params(),
                        std::make_unique<failing_backend>(g_model->make_backend(reference_ops()), true));
            dev = run(s, with_hot);
        }
        const bool same = plain == dev && plain[2].size() == 20;
        if (!with_hot) {
            CHECK(same && g_device_samples >= 60 && g_device_declined == 0,
                  "device sampling seam, 3 greedy requests (penalties, bias): tokens %s the plain engine's; %d rows "
                  "sampled on the device", same ? "equal" : "DIFFER from", g_device_samples.load());
        } else {
            CHECK(same && g_device_declined > 0,
                  "device sampling seam with a sampled request: tokens %s the plain engine's; %d batches fell back "
                  "to the host, %d rows sampled on the device", same ? "equal" : "DIFFER from",
                  g_device_declined.load(), g_device_samples.load());
        }
    }
}

static void test_forward_error() {
    scheduler s(*g_model, engine_params(), std::make_unique<failing_backend>(g_model->make_backend(reference_ops())));
    g_fail_matmul = true;
    const uint64_t bad = submit(s, prompt_of(8, 1), greedy(4));
    std::vector<minicpm_event> ev;
    std::string                msg;
    minicpm_event              buf[8];
    for (int i = 0; i < 60000 && (ev.empty() || ev.back().finish_reason == MINICPM_FINISH_NONE); ++i) {
        const int32_t n = s.drain(bad, buf, 8, &msg);
        ev.insert(ev.end(), buf, buf + n);
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    g_fail_matmul = false;
    CHECK(finish_of(ev) == MINICPM_FINISH_ERROR && msg.find("injected") != std::string::npos,
          "forward throws: finish %d, message \"%s\"", finish_of(ev), msg.c_str());
    const auto next = collect(s, submit(s, prompt_of(8, 1), greedy(4)));
    struct minicpm_engine_stats st;
    s.stats(st);
    CHECK(finish_of(next) == MINICPM_FINISH_LENGTH && tokens_of(next).size() == 4 && st.n_errors == 1,
          "next request served: %zu tokens, finish %d, n_errors %llu", tokens_of(next).size(), finish_of(next),
          (unsigned long long) st.n_errors);
}

static void test_free_mid_step() {
    std::atomic<int32_t> n_steps{0};
    const auto           t0 = std::chrono::steady_clock::now();
    {
        scheduler s(*g_model, engine_params(16), reference_ops());
        s.set_step_observer([&](const step_trace &) { n_steps++; });
        for (int32_t i = 0; i < 3; ++i) submit(s, prompt_of(200, i), greedy(0));
        while (n_steps < 2) std::this_thread::sleep_for(std::chrono::microseconds(100));
    }  // destroyed with three requests running
    const double  ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const int32_t at_free = n_steps;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK(n_steps == at_free, "engine destroyed with 3 requests running after %d steps (%.1f ms); steps after "
          "that: %d (the thread was joined)", at_free, ms, n_steps - at_free);
}

// ---- the C API (fast ops) ---------------------------------------------------------------------------------

static minicpm_engine_t *        g_engine = nullptr;
static std::mutex                g_mu;
static std::vector<minicpm_event> g_events;
static std::atomic<int32_t>      g_rings{0};
static std::atomic<uint64_t>     g_ring_id{0};

// The doorbell pattern of RUNTIME_AND_API.md 1.3: ring, then drain from the callback.
static void on_ready(void *, uint64_t id, int32_t n_ready) {
    g_rings++;
    g_ring_id = id;
    minicpm_event buf[8];
    const int32_t n = minicpm_engine_drain(g_engine, id, buf, 8);
    std::lock_guard<std::mutex> lk(g_mu);
    g_events.insert(g_events.end(), buf, buf + (n > 0 ? n : 0));
}

static void test_c_api() {
    minicpm_engine_params p = engine_params();
    CHECK(minicpm_engine_init(g_handle, &p, &g_engine) == MINICPM_STATUS_OK, "engine init through the C API");
    if (!g_engine) return;
    char err[256];

    const int32_t bad[3] = {5, 512, 6};
    uint64_t      id = 0;
    minicpm_sampling_params sp = greedy(6);
    const int32_t rc = minicpm_engine_submit(g_engine, bad, 3, &sp, nullptr, 0, nullptr, nullptr, 0, &id);
    minicpm_last_error(err, sizeof(err));
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT && std::string(err).find("tokens[1] = 512") != std::string::npos,
          "token id 512 of a 512 vocab: status %d, \"%s\"", rc, err);
    sp.top_p = NAN;
    const int32_t rc_nan = minicpm_engine_submit(g_engine, bad, 1, &sp, nullptr, 0, nullptr, nullptr, 0, &id);
    minicpm_last_error(err, sizeof(err));
    CHECK(rc_nan == MINICPM_STATUS_INVALID_ARGUMENT && std::string(err).find("top_p") != std::string::npos,
          "top_p NaN: status %d, \"%s\"", rc_nan, err);
    sp = greedy(6);
    sp.size = 12;
    CHECK(minicpm_engine_submit(g_engine, bad, 1, &sp, nullptr, 0, nullptr, nullptr, 0, &id) ==
              MINICPM_STATUS_ABI_MISMATCH, "sampling params with a wrong size -> abi_mismatch");

    CHECK(minicpm_engine_set_notify(g_engine, on_ready, nullptr) == MINICPM_STATUS_OK, "doorbell installed");
    sp = greedy(6);
    const std::vector<int32_t> prompt = prompt_of(20, 4);
    const int32_t rc_ok = minicpm_engine_submit(g_engine, prompt.data(), 20, &sp, nullptr, 0, nullptr, nullptr, 0, &id);
    CHECK(rc_ok == MINICPM_STATUS_OK && id > 0, "valid request after the errors: status %d, id %llu", rc_ok, (unsigned long long) id);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
        {
            std::lock_guard<std::mutex> lk(g_mu);
            if (!g_events.empty() && g_events.back().finish_reason != MINICPM_FINISH_NONE) break;
        }
        if (std::chrono::steady_clock::now() > deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    minicpm_engine_set_notify(g_engine, nullptr, nullptr);
    std::vector<int32_t> got = tokens_of(g_events);
    CHECK(got.size() == 6 && finish_of(g_events) == MINICPM_FINISH_LENGTH && g_ring_id == id &&
              g_rings >= 1 && g_rings <= 7,
          "doorbell: %d rings for request %llu, drained %zu tokens [%s] from the callback, finish %d", g_rings.load(),
          (unsigned long long) g_ring_id.load(), got.size(), str(got).c_str(), finish_of(g_events));
    minicpm_request_info info;
    info.size = sizeof(info);
    CHECK(minicpm_engine_request_info(g_engine, id, &info) == MINICPM_STATUS_NOT_FOUND,
          "request released after its finish event was drained");

    // Polling without a doorbell, and the timings of request_info.
    sp = greedy(3);
    minicpm_engine_submit(g_engine, prompt.data(), 20, &sp, nullptr, 0, nullptr, nullptr, 0, &id);
    uint64_t ready[4] = {0};
    int32_t n_ready = 0;
    for (int i = 0; i < 60000 && n_ready == 0; ++i) {
        n_ready = minicpm_engine_poll(g_engine, ready, 4);
        if (n_ready == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    CHECK(n_ready == 1 && ready[0] == id, "poll lists request %llu (%d ready)", (unsigned long long) ready[0], n_ready);
    for (int i = 0; i < 60000; ++i) {
        minicpm_engine_request_info(g_engine, id, &info);
        if (info.state == MINICPM_REQUEST_FINISHED) break;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    CHECK(info.state == MINICPM_REQUEST_FINISHED && info.n_generated == 3 && info.n_prefilled == 20 &&
              info.t_submit_us <= info.t_admit_us && info.t_admit_us <= info.t_first_token_us &&
              info.t_first_token_us <= info.t_end_us,
          "request_info: state %d, generated %d, prefilled %d, admit-submit %lld us, first-admit %lld us, end-first "
          "%lld us", info.state, info.n_generated, info.n_prefilled, (long long) (info.t_admit_us - info.t_submit_us),
          (long long) (info.t_first_token_us - info.t_admit_us), (long long) (info.t_end_us - info.t_first_token_us));
    minicpm_engine_free(g_engine);  // with an undrained finished request: must not leak or hang
    g_engine = nullptr;
}

// Constrained decoding: a masked request samples only from the mask set for each token, and sits out the steps
// until its mask comes, while the others keep decoding (no stall).
static void test_masked() {
    scheduler s(*g_model, engine_params(32), reference_ops());
    const int32_t n_vocab = g_model->config().n_vocab;
    const int32_t n_words = (n_vocab + 31) / 32;
    const std::vector<int32_t> pa = prompt_of(20, 7), pb = prompt_of(12, 8);
    const std::vector<int32_t> alone = tokens_of(collect(s, submit(s, pa, greedy(24))));
    minicpm_sampling_params mb = greedy(6);
    mb.masked = 1;
    const uint64_t b = submit(s, pb, mb);
    const uint64_t a = submit(s, pa, greedy(24));
    // A runs to its end while B has no mask yet.
    const std::vector<int32_t> got_a = tokens_of(collect(s, a));
    minicpm_request_info ib{};
    s.request_info(b, ib);
    CHECK(got_a == alone, "unmasked request beside a waiting masked one: %s, alone %s", str(got_a).c_str(),
          str(alone).c_str());
    CHECK(ib.n_generated == 0 && ib.n_prefilled < int32_t(pb.size()),
          "masked request without a mask: %d generated, %d of %zu prompt tokens prefilled (the last one waits)",
          ib.n_generated, ib.n_prefilled, pb.size());
    // Then each token gets a mask that allows one token only (100 + k), set after the previous token came.
    std::vector<int32_t> got_b;
    std::vector<uint32_t> bits(size_t(n_words), 0u);
    minicpm_event ev[4];
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (int32_t k = 0; k < 6 && std::chrono::steady_clock::now() < deadline;) {
        std::fill(bits.begin(), bits.end(), 0u);
        const int32_t want = 100 + k;
        bits[size_t(want >> 5)] |= 1u << (want & 31);
        s.set_mask(b, bits.data(), n_words);
        int32_t n = 0;
        while (n == 0 && std::chrono::steady_clock::now() < deadline) {
            n = s.drain(b, ev, 4, nullptr);
            if (n == 0) std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
        for (int32_t i = 0; i < n; ++i)
            if (ev[i].token >= 0) got_b.push_back(ev[i].token);
        k = int32_t(got_b.size());
        if (n > 0 && ev[n - 1].finish_reason != MINICPM_FINISH_NONE) break;
    }
    CHECK(got_b == std::vector<int32_t>({100, 101, 102, 103, 104, 105}), "masked tokens: %s (want 100 .. 105)",
          str(got_b).c_str());
    const uint64_t c = submit(s, pa, greedy(2));
    minicpm_test::expect_error("set_mask on an unmasked request", MINICPM_STATUS_INVALID_ARGUMENT, {"masked"},
                               [&] { s.set_mask(c, bits.data(), n_words); });
    minicpm_test::expect_error("set_mask with the wrong size", MINICPM_STATUS_INVALID_ARGUMENT, {"n_words"},
                               [&] { s.set_mask(c, bits.data(), n_words - 1); });
    collect(s, c);
    minicpm_test::expect_error("set_mask after release", MINICPM_STATUS_NOT_FOUND, {"not found"},
                               [&] { s.set_mask(c, bits.data(), n_words); });
}

int main() {
    const std::string dir = minicpm_test::make_temp_dir("engine");
    minicpm_test::tiny_model_spec spec;
    // Untied head and larger weights: with a tied head the random model echoes its last input token forever;
    // this way the greedy continuation depends on the context, so a position or batching mistake shows.
    spec.tie_word_embeddings = false;
    spec.weight_std = 0.25f;
    minicpm_test::write_tiny_model(dir, spec);
    minicpm_model_params mp;
    minicpm_model_default_params(&mp);
    if (minicpm_model_load(dir.c_str(), &mp, &g_handle) != MINICPM_STATUS_OK) {
        char err[512];
        minicpm_last_error(err, sizeof(err));
        CHECK(false, "load tiny model: %s", err);
        return minicpm_test::finish();
    }
    g_model = g_handle->impl.get();

    test_batching_invariance();
    test_preemption();
    test_cancel();
    test_limits();
    test_interleave();
    test_seed();
    test_drafts();
    test_forward_error();
    test_device_sampling_seam();
    test_free_mid_step();
    test_c_api();
    test_masked();

    minicpm_model_free(g_handle);
    minicpm_test::remove_dir(dir);
    return minicpm_test::finish();
}
