// bench-spec TARGET_DIR [RANDOM_DRAFT_DIR] [n_threads]: speculative decoding on the fast ops.
//   1. Cost of verifying a draft tree of 12 / 32 / 64 rows (random EAGLE-like tree masks) after a 256-token
//      context, relative to one plain decode step (1 row), through context::eval_tree; best of 7 each.
//   2. Engine tokens/s and mean accept length for one greedy request of 96 tokens: plain, the target as its own
//      draft model (upper bound: every draft confirmed) and a random draft model with the target's vocabulary
//      (lower bound: nothing confirmed, only the overhead), tree 2/10/12 (CPM.cu's CLI defaults) and 4/4/16.
// Each figure is printed with its spread over the repeats: the machine may be shared and noisy.
#include "engine/context.h"
#include "engine/drafter.h"
#include "engine/scheduler.h"
#include "minicpm.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

using namespace minicpm;

static double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct spread {
    std::vector<double> v;
    double best() const { return *std::min_element(v.begin(), v.end()); }
    double worst() const { return *std::max_element(v.begin(), v.end()); }
    double median() const {
        std::vector<double> s = v;
        std::sort(s.begin(), s.end());
        return s[s.size() / 2];
    }
};

static void bench_verify(const model & m, int32_t n_threads) {
    minicpm_context_params cp;
    minicpm_context_default_params(&cp);
    cp.n_ctx = 512;
    cp.n_seq_max = 1;
    cp.n_threads = n_threads;
    cp.kv_dtype = MINICPM_DTYPE_BF16;
    context ctx(m, cp);
    const int32_t V = m.config().n_vocab, n_past = 256;
    std::vector<int32_t> prompt(static_cast<size_t>(n_past));
    for (int32_t i = 0; i < n_past; ++i) prompt[size_t(i)] = 100 + (i * 37) % 5000;
    std::vector<float> last(static_cast<size_t>(V));
    ctx.eval(prompt.data(), nullptr, nullptr, n_past, last.data(), V);
    std::vector<float> logits(size_t(64) * size_t(V));
    double plain_best = 0;
    for (int32_t n : {1, 12, 32, 64}) {
        // EAGLE-2-like tree: the first quarter hangs below the root, the rest below earlier nodes.
        std::vector<int32_t>  toks(static_cast<size_t>(n)), pos(static_cast<size_t>(n));
        std::vector<uint64_t> mask(static_cast<size_t>(n), 0);
        std::vector<int32_t>  depth(static_cast<size_t>(n), 0);
        for (int32_t j = 0; j < n; ++j) {
            toks[size_t(j)] = 200 + j;
            if (j > 0) {
                const int32_t parent = j <= std::max(1, n / 4) ? 0 : (j * 7) % j;
                mask[size_t(j)] = mask[size_t(parent)] | (uint64_t(1) << parent);
                depth[size_t(j)] = depth[size_t(parent)] + 1;
            }
            pos[size_t(j)] = n_past + depth[size_t(j)];
        }
        spread s;
        for (int rep = 0; rep < 8; ++rep) {
            const double t0 = now_s();
            ctx.eval_tree(0, toks.data(), pos.data(), n == 1 ? nullptr : mask.data(), n, logits.data());
            const double dt = now_s() - t0;
            ctx.seq_truncate(0, n_past);
            if (rep > 0) s.v.push_back(dt * 1e3);  // the first run warms up
        }
        if (n == 1) plain_best = s.best();
        std::printf("verify %2d rows: best %7.2f ms  median %7.2f  worst %7.2f  = %.2f plain steps (best/best)\n", n,
                    s.best(), s.median(), s.worst(), s.best() / plain_best);
    }
}

static void bench_engine(const model & target, const model * draft, const char * label, tree_shape shape,
                         int32_t n_threads) {
    minicpm_engine_params p;
    minicpm_engine_default_params(&p);
    p.n_threads = n_threads;
    p.n_ctx = 512;
    p.n_batch_max = 4;
    p.kv_bytes = uint64_t(64) << 20;
    std::vector<int32_t> prompt(64);
    for (int32_t i = 0; i < 64; ++i) prompt[size_t(i)] = 100 + (i * 37) % 5000;
    minicpm_sampling_params sp;
    minicpm_sampling_default_params(&sp);
    sp.temperature = 0;
    sp.ignore_eos = 1;
    sp.n_max_tokens = 96;
    spread tps;
    double mean_accept = 0;
    for (int rep = 0; rep < 3; ++rep) {
        scheduler s(target, p);
        if (draft != nullptr) {
            auto d = std::make_shared<model_drafter>(*draft, target.config().n_vocab, s.backend_ref(), dtype::bf16,
                                                     64, shape);
            s.set_drafter(d, shape.tree_size - 1);
        }
        const uint64_t id = s.submit(prompt.data(), 64, &sp, nullptr, 0, nullptr, nullptr, 0);
        int32_t        n = 0;
        double         t_first = 0, t_end = 0;
        minicpm_event  ev[64];
        bool           done = false;
        while (!done) {
            const int32_t k = s.drain(id, ev, 64, nullptr);
            for (int32_t i = 0; i < k; ++i) {
                if (ev[i].token >= 0 && ++n == 1) t_first = double(ev[i].t_us) * 1e-6;
                t_end = double(ev[i].t_us) * 1e-6;
                done = done || ev[i].finish_reason != MINICPM_FINISH_NONE;
            }
            if (k == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        struct minicpm_engine_stats st;
        s.stats(st);
        mean_accept = st.n_spec_verifies ? 1.0 + double(st.n_spec_accepted) / double(st.n_spec_verifies) : 1.0;
        tps.v.push_back(double(n - 1) / (t_end - t_first));
    }
    // Throughput: the best run is the fastest (max); the slowest shows the noise.
    std::printf("%-30s tree %d/%2d/%2d: %6.1f tok/s (slowest %6.1f, median %6.1f), mean accept length %.2f\n", label,
                shape.num_iter, shape.top_k, shape.tree_size, tps.worst(), tps.best(), tps.median(), mean_accept);
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: bench-spec TARGET_DIR [RANDOM_DRAFT_DIR] [n_threads]\n");
        return 2;
    }
    const int32_t n_threads = argc > 3 ? std::atoi(argv[3]) : 0;
    try {
        std::unique_ptr<model> target = model::load(argv[1], true, MINICPM_BACKEND_CPU);
        std::unique_ptr<model> weak = argc > 2 ? model::load(argv[2], true, MINICPM_BACKEND_CPU) : nullptr;
        std::printf("target %s: %d layers, hidden %d, vocab %d\n", argv[1], target->config().n_layer,
                    target->config().n_embd, target->config().n_vocab);
        bench_verify(*target, n_threads);
        bench_engine(*target, nullptr, "plain decode", tree_shape{0, 0, 0}, n_threads);
        for (tree_shape sh : {tree_shape{2, 10, 12}, tree_shape{4, 4, 16}}) {
            bench_engine(*target, target.get(), "target as draft (upper bound)", sh, n_threads);
            if (weak) bench_engine(*target, weak.get(), "random draft (lower bound)", sh, n_threads);
        }
    } catch (const std::exception & e) {
        std::fprintf(stderr, "bench-spec: %s\n", e.what());
        return 1;
    }
    return 0;
}
