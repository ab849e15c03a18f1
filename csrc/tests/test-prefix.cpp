// Prefix caching across requests (scheduler + KV pool + prefix-cache index) on a tiny random checkpoint with
// the reference ops and f32 KV, so that a cached prefix must reproduce the uncached logits bit for bit:
//   - a conversation grown turn by turn: every turn's tokens and logprobs (top 20 too) equal an engine without
//     the cache, cached_tokens as computed from the previous turns' full blocks;
//   - a prompt that is a whole number of blocks (its last block is shared, then copied on write);
//   - many distinct prefixes through a small pool: idle blocks are evicted (LRU), nothing is lost, and after
//     every step each block's reference count equals the references the requests hold;
//   - cancel (prefill and decode) and preemption with the cache: reference counts return to zero when idle;
//   - prefix_cache = 0 turns it all off.
#include "engine/scheduler.h"
#include "minicpm.h"
#include "tests/tiny-model.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

using minicpm::scheduler;
using minicpm::step_trace;

using minicpm_test::reference_ops;

static const minicpm::model * g_model = nullptr;
static constexpr int32_t      kBlock = MINICPM_KV_BLOCK_SIZE;

static minicpm_engine_params engine_params(bool cache, int32_t kv_blocks = 64, int32_t n_chunk = 48) {
    minicpm_engine_params p;
    minicpm_engine_default_params(&p);
    p.n_threads = 2;
    p.n_chunk = n_chunk;
    p.n_ctx = 512;
    p.kv_dtype = MINICPM_DTYPE_F32;
    p.prefix_cache = cache ? 1 : 0;
    p.kv_bytes = uint64_t(kv_blocks) * minicpm::kv_pool::bytes_per_block(g_model->config(), minicpm::dtype::f32);
    return p;
}

// Greedy with logprobs: the cached and uncached runs are compared on every bit they return.
static minicpm_sampling_params greedy_lp(int32_t n) {
    minicpm_sampling_params s = minicpm_test::greedy(n);
    s.logprobs = 1;
    s.n_top_logprobs = MINICPM_MAX_TOP_LOGPROBS;
    return s;
}

static std::vector<int32_t> words(int32_t n, int32_t salt) {
    std::vector<int32_t> t;
    for (int32_t i = 0; i < n; ++i) t.push_back(4 + (i * 37 + salt * 101 + (i * i) % 13) % 500);
    return t;
}

struct result {
    std::vector<minicpm_event> events;
    int32_t                    n_cached = -1;
    std::vector<int32_t> tokens() const {
        std::vector<int32_t> t;
        for (const auto & e : events)
            if (e.token >= 0) t.push_back(e.token);
        return t;
    }
    int32_t finish() const { return events.empty() ? -1 : events.back().finish_reason; }
};

// Waits for admission to read n_cached (request_info works until the finish event is drained), then drains.
static result run(scheduler & s, const std::vector<int32_t> & prompt, const minicpm_sampling_params & sp) {
    const uint64_t id = s.submit(prompt.data(), int32_t(prompt.size()), &sp, nullptr, 0, nullptr, nullptr, 0);
    return [&] {
        result               r;
        minicpm_request_info info{};
        const auto           deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
        while (std::chrono::steady_clock::now() < deadline) {
            s.request_info(id, info);
            if (info.state != MINICPM_REQUEST_WAITING) break;
            std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
        r.n_cached = info.n_cached;
        minicpm_event buf[16];
        while (std::chrono::steady_clock::now() < deadline) {
            const int32_t n = s.drain(id, buf, 16, nullptr);
            r.events.insert(r.events.end(), buf, buf + n);
            if (!r.events.empty() && r.events.back().finish_reason != MINICPM_FINISH_NONE) break;
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        return r;
    }();
}

// Same tokens, same logprob and same top-20 (ids and values) bit for bit.
static bool same_bits(const result & a, const result & b, std::string * why) {
    if (a.events.size() != b.events.size()) {
        *why = "event counts " + std::to_string(a.events.size()) + " vs " + std::to_string(b.events.size());
        return false;
    }
    for (size_t i = 0; i < a.events.size(); ++i) {
        const minicpm_event & x = a.events[i];
        const minicpm_event & y = b.events[i];
        bool ok = x.token == y.token && x.finish_reason == y.finish_reason && x.n_top == y.n_top &&
                  std::memcmp(&x.logprob, &y.logprob, sizeof(float)) == 0;
        for (int32_t k = 0; ok && k < x.n_top; ++k)
            ok = x.top_tokens[k] == y.top_tokens[k] &&
                 std::memcmp(&x.top_logprobs[k], &y.top_logprobs[k], sizeof(float)) == 0;
        if (!ok) {
            *why = "event " + std::to_string(i) + ": token " + std::to_string(x.token) + " vs " + std::to_string(y.token) +
                   ", logprob " + std::to_string(x.logprob) + " vs " + std::to_string(y.logprob);
            return false;
        }
    }
    return true;
}

// After every step, from the scheduler thread: block refcounts == references held by requests.
struct refcount_watch {
    std::mutex  mu;
    std::string first_problem;
    int32_t     n_steps = 0;
    void attach(scheduler & s) {
        s.set_step_observer([this, &s](const step_trace &) {
            const std::string p = s.check_refcounts();
            std::lock_guard<std::mutex> lk(mu);
            ++n_steps;
            if (!p.empty() && first_problem.empty()) first_problem = p;
        });
    }
};

static void test_conversation() {
    scheduler cached(*g_model, engine_params(true), reference_ops());
    scheduler plain(*g_model, engine_params(false), reference_ops());
    refcount_watch watch;
    watch.attach(cached);
    const int32_t        n_gen = 10;
    std::vector<int32_t> history = words(150, 1);  // turn 1: system + user
    int32_t              prev_kv = 0;              // KV rows the previous turn committed
    uint64_t             sum_cached = 0, sum_prompt = 0;
    for (int32_t turn = 0; turn < 5; ++turn) {
        const result a = run(cached, history, greedy_lp(n_gen));
        const result b = run(plain, history, greedy_lp(n_gen));
        std::string  why;
        const bool   same = same_bits(a, b, &why);
        // Indexed: every full block of the longest previous turn (its KV holds prompt + generated - 1 rows).
        const int32_t want = std::min(prev_kv / kBlock * kBlock, int32_t(history.size()) - 1);
        CHECK(same && a.n_cached == want && b.n_cached == 0 && int32_t(a.tokens().size()) == n_gen,
              "turn %d: prompt %zu tokens, cached %d (expected %d), uncached engine %d; tokens, logprobs and top-20 "
              "bit-identical to the uncached engine: %d %s", turn + 1, history.size(), a.n_cached, want, b.n_cached,
              int(same), why.c_str());
        sum_cached += uint64_t(a.n_cached);
        sum_prompt += history.size();
        prev_kv = int32_t(history.size()) + n_gen - 1;
        const std::vector<int32_t> reply = a.tokens();
        history.insert(history.end(), reply.begin(), reply.end());
        const std::vector<int32_t> user = words(40 + 13 * turn, 20 + turn);  // the next user turn
        history.insert(history.end(), user.begin(), user.end());
    }
    struct minicpm_engine_stats st;
    cached.stats(st);
    CHECK(st.n_prefix_hit_tokens == sum_cached && st.n_prefix_query_tokens == sum_prompt && st.prefix_cache == 1 &&
              st.kv_tokens_used == 0 && st.kv_tokens_cached > 0,
          "stats: hit %llu of %llu prompt tokens (sum of cached_tokens %llu), kv used %d, idle cached %d tokens",
          (unsigned long long) st.n_prefix_hit_tokens, (unsigned long long) st.n_prefix_query_tokens,
          (unsigned long long) sum_cached, st.kv_tokens_used, st.kv_tokens_cached);
    std::lock_guard<std::mutex> lk(watch.mu);
    CHECK(watch.first_problem.empty() && cached.check_refcounts().empty(),
          "refcounts equal the requests' references after each of %d steps and when idle %s", watch.n_steps,
          watch.first_problem.c_str());
}

static void test_whole_blocks() {
    // 128 tokens = 2 full blocks: the second run shares both and recomputes the last token (copy on write).
    scheduler cached(*g_model, engine_params(true), reference_ops());
    const std::vector<int32_t> p = words(2 * kBlock, 7);
    const result a = run(cached, p, greedy_lp(6));
    const result b = run(cached, p, greedy_lp(6));
    std::string  why;
    const bool   same = same_bits(a, b, &why);
    CHECK(a.n_cached == 0 && b.n_cached == 2 * kBlock - 1 && same,
          "prompt of 2 whole blocks twice: cached %d then %d (expected 127), second run bit-identical: %d %s",
          a.n_cached, b.n_cached, int(same), why.c_str());
    // A prompt that diverges inside block 2 reuses block 1 only.
    std::vector<int32_t> q = p;
    q[kBlock + 5] = 9;
    const result c = run(cached, q, greedy_lp(6));
    CHECK(c.n_cached == kBlock, "prompt diverging at token 69: cached %d (expected 64)", c.n_cached);
    // Block 2 alone (without block 1 before it) is a different prefix: no hit.
    std::vector<int32_t> r(p.begin() + kBlock, p.end());
    r.insert(r.end(), p.begin(), p.begin() + 10);
    const result d = run(cached, r, greedy_lp(2));
    CHECK(d.n_cached == 0, "block 2's tokens at position 0: cached %d (expected 0: keys chain over the prefix)",
          d.n_cached);
}

static void test_eviction() {
    // 12 blocks; 10 distinct 3-block prompts (2 full blocks each) go through 3 at a time, then the first ones come back.
    scheduler      cached(*g_model, engine_params(true, 12), reference_ops());
    scheduler      plain(*g_model, engine_params(false, 12), reference_ops());
    refcount_watch watch;
    watch.attach(cached);
    const int32_t n_prompts = 10;
    std::vector<std::vector<int32_t>> prompts;
    for (int32_t i = 0; i < n_prompts; ++i) prompts.push_back(words(140, 100 + i));
    std::vector<result> want(static_cast<size_t>(n_prompts)), got(static_cast<size_t>(n_prompts));
    for (int32_t i = 0; i < n_prompts; ++i) want[size_t(i)] = run(plain, prompts[size_t(i)], greedy_lp(8));
    for (int32_t i = 0; i < n_prompts; i += 3) {
        std::vector<std::thread> th;
        for (int32_t j = i; j < std::min(n_prompts, i + 3); ++j)
            th.emplace_back([&, j] { got[size_t(j)] = run(cached, prompts[size_t(j)], greedy_lp(8)); });
        for (auto & t : th) t.join();
    }
    int32_t n_same = 0;
    for (int32_t i = 0; i < n_prompts; ++i) {
        std::string why;
        n_same += same_bits(got[size_t(i)], want[size_t(i)], &why);
    }
    struct minicpm_engine_stats st;
    cached.stats(st);
    CHECK(n_same == n_prompts && st.n_prefix_evictions > 0,
          "10 distinct prefixes through a 12-block pool, 3 at a time: %d of 10 bit-identical to the uncached engine, "
          "%llu idle blocks evicted, %d tokens cached idle", n_same, (unsigned long long) st.n_prefix_evictions,
          st.kv_tokens_cached);
    // The most recent prefix is still cached; the oldest was evicted.
    const result last = run(cached, prompts[size_t(n_prompts - 1)], greedy_lp(8));
    const result first = run(cached, prompts[0], greedy_lp(8));
    std::string  w1, w2;
    CHECK(last.n_cached == 128 && first.n_cached == 0 && same_bits(last, want[size_t(n_prompts - 1)], &w1) &&
              same_bits(first, want[0], &w2),
          "LRU: newest prefix cached %d tokens (expected 128), oldest %d (evicted: 0); both outputs unchanged",
          last.n_cached, first.n_cached);
    cached.stats(st);
    std::lock_guard<std::mutex> lk(watch.mu);
    CHECK(watch.first_problem.empty() && cached.check_refcounts().empty() && st.kv_tokens_used == 0,
          "under eviction pressure: refcounts == requests' references after each of %d steps (no held block was "
          "evicted), kv used %d when idle %s", watch.n_steps, st.kv_tokens_used, watch.first_problem.c_str());
}

static void test_cancel_and_preempt() {
    // 6 blocks: 3 requests sharing a 64-token prefix each grow to 80 + 120 tokens (4 blocks): preemption.
    scheduler      cached(*g_model, engine_params(true, 6, 32), reference_ops());
    scheduler      plain(*g_model, engine_params(false, 6, 32), reference_ops());
    refcount_watch watch;
    std::map<uint64_t, bool> decoded;  // request id -> seen decoding; prefill after that = preempted
    std::atomic<int32_t>     n_preempted{0};
    cached.set_step_observer([&](const step_trace & t) {
        for (const auto & p : t.parts) {
            if (!p.prefill) decoded[p.request_id] = true;
            else if (decoded[p.request_id]) n_preempted++, decoded[p.request_id] = false;
        }
        const std::string problem = cached.check_refcounts();
        std::lock_guard<std::mutex> lk(watch.mu);
        ++watch.n_steps;
        if (!problem.empty() && watch.first_problem.empty()) watch.first_problem = problem;
    });
    const std::vector<int32_t> shared = words(kBlock, 50);
    std::vector<std::vector<int32_t>> prompts;
    for (int32_t i = 0; i < 3; ++i) {
        std::vector<int32_t> p = shared;
        const std::vector<int32_t> tail = words(16, 60 + i);
        p.insert(p.end(), tail.begin(), tail.end());
        prompts.push_back(p);
    }
    run(cached, prompts[0], greedy_lp(1));  // the shared block is cached before the three start
    std::vector<result> got(3);
    std::vector<std::thread> th;
    for (int32_t i = 0; i < 3; ++i) th.emplace_back([&, i] { got[size_t(i)] = run(cached, prompts[size_t(i)], greedy_lp(120)); });
    for (auto & t : th) t.join();
    int32_t n_same = 0;
    for (int32_t i = 0; i < 3; ++i) {
        std::string why;
        n_same += same_bits(got[size_t(i)], run(plain, prompts[size_t(i)], greedy_lp(120)), &why);
    }
    struct minicpm_engine_stats st;
    cached.stats(st);
    CHECK(n_same == 3 && n_preempted > 0 && st.kv_tokens_used == 0 && cached.check_refcounts().empty(),
          "preemption with a shared cached prefix: %d preemptions, %d of 3 bit-identical to the uncached engine; "
          "idle: kv used %d, refcounts %s", n_preempted.load(), n_same, st.kv_tokens_used,
          cached.check_refcounts().empty() ? "zero" : "WRONG");

    // Cancel in prefill and in decode, from the scheduler thread at known points.
    std::atomic<int32_t> n_cancelled{0};
    cached.set_step_observer([&](const step_trace & t) {
        for (const auto & p : t.parts) {
            if ((p.request_id % 2 == 0) == p.prefill) {  // even ids: cancel in prefill; odd: in decode
                try {
                    cached.cancel(p.request_id);
                    n_cancelled++;
                } catch (...) {
                }
            }
        }
        const std::string problem = cached.check_refcounts();
        std::lock_guard<std::mutex> lk(watch.mu);
        ++watch.n_steps;
        if (!problem.empty() && watch.first_problem.empty()) watch.first_problem = problem;
    });
    std::vector<std::thread> th2;
    std::vector<result>      got2(6);
    for (int32_t i = 0; i < 6; ++i) {
        std::vector<int32_t> p = shared;
        const std::vector<int32_t> tail = words(70 + i, 80 + i);
        p.insert(p.end(), tail.begin(), tail.end());
        th2.emplace_back([&, i, p] { got2[size_t(i)] = run(cached, p, greedy_lp(40)); });
    }
    for (auto & t : th2) t.join();
    cached.set_step_observer(nullptr);
    int32_t n_cancel_events = 0;
    for (const auto & r : got2) n_cancel_events += r.finish() == MINICPM_FINISH_CANCELLED;
    cached.stats(st);
    const std::string rc = cached.check_refcounts();
    CHECK(n_cancel_events == 6 && st.kv_tokens_used == 0 && st.n_running == 0 && rc.empty(),
          "6 requests cancelled in prefill or decode: %d cancelled; idle: kv used %d, every block's refcount zero "
          "(%d tokens idle in the cache) %s", n_cancel_events, st.kv_tokens_used, st.kv_tokens_cached, rc.c_str());
    std::lock_guard<std::mutex> lk(watch.mu);
    CHECK(watch.first_problem.empty(), "refcounts consistent after each of %d steps %s", watch.n_steps,
          watch.first_problem.c_str());
}

static void test_off() {
    scheduler s(*g_model, engine_params(false), reference_ops());
    const std::vector<int32_t> p = words(200, 3);
    run(s, p, greedy_lp(3));
    const result b = run(s, p, greedy_lp(3));
    struct minicpm_engine_stats st;
    s.stats(st);
    CHECK(b.n_cached == 0 && st.prefix_cache == 0 && st.kv_tokens_cached == 0 && st.n_prefix_query_tokens == 0,
          "prefix_cache = 0: second identical prompt cached %d, idle cached %d tokens, queries %llu", b.n_cached,
          st.kv_tokens_cached, (unsigned long long) st.n_prefix_query_tokens);
}

int main() {
    const std::string dir = minicpm_test::make_temp_dir("prefix");
    minicpm_test::tiny_model_spec spec;
    spec.tie_word_embeddings = false;
    spec.weight_std = 0.25f;
    minicpm_test::write_tiny_model(dir, spec);
    minicpm_model_params mp;
    minicpm_model_default_params(&mp);
    minicpm_model_t * handle = nullptr;
    if (minicpm_model_load(dir.c_str(), &mp, &handle) != MINICPM_STATUS_OK) {
        CHECK(false, "load tiny model");
        return minicpm_test::finish();
    }
    g_model = handle->impl.get();
    test_conversation();
    test_whole_blocks();
    test_eviction();
    test_cancel_and_preempt();
    test_off();
    minicpm_model_free(handle);
    minicpm_test::remove_dir(dir);
    return minicpm_test::finish();
}
