// bench-spec TARGET_DIR [RANDOM_DRAFT_DIR|-] [n_threads] [EAGLE_DIR] [FR_N] [N_SHAPES] [CONTEXT]: speculative decoding
// on the fast ops (N_SHAPES 1: only the 2/10/12 tree in part 3, for a shorter run; 0: no part 3). CONTEXT (default
// 256 in part 1, a 64-token prompt in part 3) replaces both: an InfLLM v2 target then verifies and decodes past
// dense_len when CONTEXT reaches it.
//   1. Cost of verifying a draft tree of 12 / 32 / 64 rows (random EAGLE-like tree masks) after a 256-token
//      context, relative to one plain decode step (1 row), through context::eval_tree; best of 7 each.
//   2. With EAGLE_DIR: the cost of one EAGLE head step (1 row, and one tree level of 10 rows) after a 256-row
//      head context, with the full LM head and with an FR-Spec head of FR_N rows (default 32768), relative to
//      the plain decode step of part 1.
//   3. Engine tokens/s and mean accept length for one greedy request of 96 tokens: plain, the target as its own
//      draft model (upper bound: every draft confirmed), a random draft model with the target's vocabulary and
//      the random EAGLE head with and without FR-Spec (lower bounds: nothing confirmed, only the overhead), tree
//      2/10/12 (CPM.cu's CLI defaults) and 4/4/16. The arms run interleaved, one repeat of each in turn.
// Each figure is printed with its spread over the repeats: the machine may be shared and noisy.
#include "engine/context.h"
#include "engine/drafter.h"
#include "engine/eagle-drafter.h"
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

static double bench_verify(const model & m, int32_t n_threads, int32_t n_past) {
    minicpm_context_params cp;
    minicpm_context_default_params(&cp);
    cp.n_ctx = std::max(512, n_past + 128);
    cp.n_seq_max = 1;
    cp.n_threads = n_threads;
    cp.kv_dtype = MINICPM_DTYPE_BF16;
    context ctx(m, cp);
    const int32_t V = m.config().n_vocab;
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
        std::printf("verify %2d rows after %d: best %7.2f ms  median %7.2f  worst %7.2f  = %.2f plain steps "
                    "(best/best)\n", n, n_past, s.best(), s.median(), s.worst(), s.best() / plain_best);
    }
    return plain_best;
}

// One EAGLE head forward of n rows after `ctx` committed rows, best of 7 (ms).
static double head_step_ms(const eagle_head & head, backend & be, int32_t ctx, int32_t n) {
    kv_pool                kv(be, head.config(), dtype::bf16, kv_blocks_for(ctx + 64) + 1);
    kv_seq                 seq;
    eagle_workspace        ws;
    const int32_t          H = head.config().n_embd;
    std::vector<int32_t>   toks(size_t(std::max(ctx, n))), pos(toks.size()), rows(static_cast<size_t>(n));
    std::vector<float>     hid(toks.size() * size_t(H)), feat(hid.size()), logits(size_t(n) * size_t(head.vocab_size()));
    for (size_t i = 0; i < toks.size(); ++i) toks[i] = 100 + int32_t(i * 37) % 5000, pos[i] = int32_t(i);
    for (size_t i = 0; i < hid.size(); ++i) hid[i] = float((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    for (int32_t j = 0; j < n; ++j) rows[size_t(j)] = j;
    kv_seq_prepare(kv, seq, 0, ctx + n);
    kv_segment sg;
    sg.n_rows = ctx;
    sg.blocks = seq.blocks.data();
    const int32_t last = ctx - 1;
    head.forward(be, ws, kv, sg, toks.data(), hid.data(), pos.data(), ctx, feat.data(), &last, 1, logits.data());
    std::vector<uint64_t> mask(size_t(n), 0);
    for (int32_t j = 0; j < n; ++j) pos[size_t(j)] = ctx;  // a level of siblings
    spread s;
    for (int rep = 0; rep < 8; ++rep) {
        kv_segment t;
        t.n_rows = n;
        t.n_past = ctx;
        t.blocks = seq.blocks.data();
        t.mask = n > 1 ? mask.data() : nullptr;
        const double t0 = now_s();
        head.forward(be, ws, kv, t, toks.data(), hid.data(), pos.data(), n, feat.data(), rows.data(), n, logits.data());
        if (rep > 0) s.v.push_back((now_s() - t0) * 1e3);
    }
    kv_seq_free(kv, seq);
    head.release_workspace(be, ws);
    return s.best();
}

static void bench_head(const model & target, const std::string & dir, int32_t fr_n, int32_t n_threads, double plain_ms) {
    std::unique_ptr<eagle_head> head = eagle_head::load(dir, target, true);
    backend_options o;
    o.n_threads = n_threads;
    auto be = target.make_backend(o);
    std::vector<int32_t> ids(size_t(target.config().n_vocab));
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i);
    for (int32_t n : {1, 10}) {
        head->restrict_vocab({}, 0);
        const double full = head_step_ms(*head, *be, 256, n);
        head->restrict_vocab(ids, fr_n);
        const double fr = head_step_ms(*head, *be, 256, n);
        std::printf("EAGLE head step %2d rows: full LM head (%d rows) %7.2f ms = %.2f plain steps; FR-Spec head (%d "
                    "rows) %7.2f ms = %.2f plain steps\n",
                    n, target.config().n_vocab, full, full / plain_ms, head->vocab_size(), fr, fr / plain_ms);
    }
}

struct engine_arm {
    const char *        label;
    const model *       draft = nullptr;   // a draft LLM
    const std::string * eagle = nullptr;   // an EAGLE head directory
    int32_t             fr_n = 0;          // FR-Spec rows of the EAGLE head (0: full vocabulary)
    tree_shape          shape;
    spread              tps;
    double              mean_accept = 1.0;
};

static void run_arm(const model & target, engine_arm & a, int32_t n_threads, int32_t n_prompt) {
    minicpm_engine_params p;
    minicpm_engine_default_params(&p);
    p.n_threads = n_threads;
    p.n_ctx = std::max(512, n_prompt + 192);
    p.n_batch_max = 4;
    p.kv_bytes = uint64_t(64 + n_prompt / 8) << 20;
    std::vector<int32_t> prompt(static_cast<size_t>(n_prompt));
    for (int32_t i = 0; i < n_prompt; ++i) prompt[size_t(i)] = 100 + (i * 37) % 5000;
    minicpm_sampling_params sp;
    minicpm_sampling_default_params(&sp);
    sp.temperature = 0;
    sp.ignore_eos = 1;
    sp.n_max_tokens = 96;
    scheduler s(target, p);
    if (a.draft != nullptr) {
        auto d = std::make_shared<model_drafter>(*a.draft, target.config().n_vocab, s.backend_ref(), dtype::bf16, 64,
                                                 a.shape);
        s.set_drafter(d, a.shape.tree_size - 1);
    } else if (a.eagle != nullptr) {
        std::unique_ptr<eagle_head> head = eagle_head::load(*a.eagle, target, true);
        if (a.fr_n > 0) {
            std::vector<int32_t> ids(size_t(target.config().n_vocab));
            for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i);
            head->restrict_vocab(ids, a.fr_n);
        }
        s.set_drafter(std::make_shared<eagle_drafter>(std::move(head), s.backend_ref(), dtype::bf16, 64, a.shape),
                      a.shape.tree_size - 1);
    }
    const uint64_t id = s.submit(prompt.data(), n_prompt, &sp, nullptr, 0, nullptr, nullptr, 0);
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
    a.mean_accept = st.n_spec_verifies ? 1.0 + double(st.n_spec_accepted) / double(st.n_spec_verifies) : 1.0;
    a.tps.v.push_back(double(n - 1) / (t_end - t_first));
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: bench-spec TARGET_DIR [RANDOM_DRAFT_DIR|-] [n_threads] [EAGLE_DIR|-] [FR_N] [N_SHAPES] "
                             "[CONTEXT]\n");
        return 2;
    }
    const int32_t n_threads = argc > 3 ? std::atoi(argv[3]) : 0;
    const std::string eagle = argc > 4 && std::string(argv[4]) != "-" ? argv[4] : "";
    const int32_t fr_n = argc > 5 ? std::atoi(argv[5]) : 32768;
    const int32_t n_shapes = argc > 6 ? std::atoi(argv[6]) : 2;
    const int32_t context = argc > 7 ? std::atoi(argv[7]) : 0;
    try {
        std::unique_ptr<model> target = model::load(argv[1], true, MINICPM_BACKEND_CPU);
        const bool             has_weak = argc > 2 && std::string(argv[2]) != "-";
        std::unique_ptr<model> weak = has_weak ? model::load(argv[2], true, MINICPM_BACKEND_CPU) : nullptr;
        const model_config & mc = target->config();
        std::printf("target %s: %d layers, hidden %d, vocab %d, InfLLM v2 %s\n", argv[1], mc.n_layer, mc.n_embd,
                    mc.n_vocab, mc.sparse.enabled ? ("on, dense_len " + std::to_string(mc.sparse.dense_len)).c_str() : "off");
        const double plain_ms = bench_verify(*target, n_threads, context > 0 ? context : 256);
        if (!eagle.empty()) bench_head(*target, eagle, fr_n, n_threads, plain_ms);
        if (n_shapes == 0) return 0;
        std::vector<engine_arm> arms;
        arms.push_back({"plain decode", nullptr, nullptr, 0, tree_shape{0, 0, 0}});
        for (tree_shape sh : {tree_shape{2, 10, 12}, tree_shape{4, 4, 16}}) {
            if (sh.num_iter == 4 && n_shapes < 2) break;
            arms.push_back({"target as draft (upper bound)", target.get(), nullptr, 0, sh});
            if (weak) arms.push_back({"random draft (lower bound)", weak.get(), nullptr, 0, sh});
            if (!eagle.empty()) {
                arms.push_back({"random EAGLE head", nullptr, &eagle, 0, sh});
                arms.push_back({"random EAGLE head + FR-Spec", nullptr, &eagle, fr_n, sh});
            }
        }
        for (int rep = 0; rep < 3; ++rep)
            for (engine_arm & a : arms) run_arm(*target, a, n_threads, context > 0 ? context : 64);
        for (const engine_arm & a : arms) {
            char fr[32] = "";
            if (a.fr_n > 0) std::snprintf(fr, sizeof(fr), " (%d rows)", a.fr_n);
            // Throughput: the best run is the fastest (max); the slowest shows the noise.
            std::printf("%-30s%s tree %d/%2d/%2d: %6.1f tok/s (slowest %6.1f, median %6.1f), mean accept length %.2f\n",
                        a.label, fr, a.shape.num_iter, a.shape.top_k, a.shape.tree_size, a.tps.worst(), a.tps.best(),
                        a.tps.median(), a.mean_accept);
        }
    } catch (const std::exception & e) {
        std::fprintf(stderr, "bench-spec: %s\n", e.what());
        return 1;
    }
    return 0;
}
