// bench-sparse-e2e DIR [8b|0.5b] [--layers 2,4] [--ctx 8,32,64,128] [--reps N] [--threads N] [--quantize q8|q4]
// [--prefill]:
// InfLLM v2 sparse vs dense decode measured end to end through model::forward (embedding, every layer, final
// norm, LM head) plus greedy sampling, on random-weight checkpoints of the real shapes with few layers
// (written into DIR/<shape>-L<n> on first use; vocab 73448, bf16).
//
// A real 128K dense prefill takes hours on this machine, so one sequence's KV is filled synthetically: random
// post-RoPE K/V rows go straight into every layer's pool blocks (kv_store), and the compressed caches C1/C2
// are built by the same incremental kv_compress + side_valid bookkeeping forward() uses, 4096 slots at a time.
// Dense and sparse models hold identical KV. Decode steps then append real tokens; each figure is the best of
// N steps, dense and sparse steps interleaved. --quantize: the weights quantized at load (group 128), as an
// 8B is usually run on the edge; the attention share of the step then grows. With two layer counts the per-layer cost is the difference,
// and the 32- (8B) or 24-layer (0.5B) step is extrapolated from it (printed as derived, not measured).
// KV MiB and C1+C2 MiB are one sequence's pool bytes at that context; the RSS line is the whole process (every
// model's mapped weights, every pool as far as touched). --prefill: a 32K prompt through forward() in 2048-row
// chunks, dense vs sparse, on the smallest layer count.
#include "core/status.h"
#include "engine/sampler.h"
#include "model/minicpm4.h"
#include "tests/tiny-model.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

using namespace minicpm;

namespace {

double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Resident memory of this process (Linux /proc), MiB; 0 where unavailable. The pools are sized for the longest
// context up front but pages are touched as the sequence grows, so this follows the context length.
double rss_mib() {
    FILE * f = std::fopen("/proc/self/statm", "r");
    if (!f) return 0;
    long pages = 0, resident = 0;
    const int n = std::fscanf(f, "%ld %ld", &pages, &resident);
    std::fclose(f);
    return n == 2 ? double(resident) * double(sysconf(_SC_PAGESIZE)) / 1048576.0 : 0;
}

std::vector<int32_t> int_list(const char * s) {
    std::vector<int32_t> v;
    for (const char * p = s; *p;) {
        v.push_back(std::atoi(p));
        p = std::strchr(p, ',');
        if (!p) break;
        ++p;
    }
    return v;
}

// The full model's layer count for a shape (what the per-layer figure is extrapolated to).
int32_t full_layers(bool big) { return big ? 32 : 24; }

std::string checkpoint(const std::string & root, bool big, int32_t n_layer) {
    const std::string dir = root + "/" + (big ? "8b" : "0.5b") + "-L" + std::to_string(n_layer);
    if (std::filesystem::exists(dir + "/config.json")) return dir;
    minicpm_test::tiny_model_spec s;
    s.n_vocab = 73448;
    s.n_embd = big ? 4096 : 1024;
    s.n_layer = n_layer;
    s.n_head = big ? 32 : 16;
    s.n_head_kv = 2;
    s.n_ff = big ? 16384 : 4096;
    s.n_ctx_train = 131072 + 1024;  // 128K of context plus the decode steps
    s.dim_model_base = 256;
    s.tie_word_embeddings = !big;
    s.longrope = false;
    s.eos_token_ids = {2, 73440};
    std::filesystem::create_directories(dir);
    std::printf("writing %s ...\n", dir.c_str());
    std::fflush(stdout);
    minicpm_test::write_tiny_model(dir, s);
    return dir;
}

// One model loaded dense or sparse, with its backend, pool, one sequence and a greedy sampler.
struct runner {
    std::unique_ptr<model>   m;
    std::unique_ptr<backend> be;
    std::unique_ptr<kv_pool> pool;
    forward_workspace        ws;
    kv_seq                   seq;
    std::vector<float>       logits;
    std::unique_ptr<sampler> smp;
    sampler_scratch          scratch;
    int32_t                  token = 1000;

    runner(const std::string & dir, bool sparse, int32_t n_threads, int32_t max_slots, int32_t quantize) {
        model_load_options lo;
        lo.backend = MINICPM_BACKEND_CPU;
        lo.sparse = sparse ? MINICPM_SPARSE_HF : MINICPM_SPARSE_OFF;
        lo.quantize = quantize;
        m = model::load(dir, lo);
        backend_options o;
        o.n_threads = n_threads;
        be = m->make_backend(o);
        pool = std::make_unique<kv_pool>(*be, m->config(), dtype::bf16, kv_blocks_for(max_slots) + 1);
        logits.resize(size_t(m->config().n_vocab));
        minicpm_sampling_params sp;
        minicpm_sampling_default_params(&sp);
        sp.temperature = 0.0f;
        smp = std::make_unique<sampler>(sp, m->config().n_vocab, std::vector<int32_t>{}, nullptr, 0, nullptr, nullptr,
                                        0, nullptr, 0);
    }
    ~runner() {
        kv_seq_free(*pool, seq);
        m->release_workspace(*be, ws);
    }
    bool sparse() const { return m->config().sparse.enabled; }

    // Appends n synthetic KV rows (the same for every runner with the same seed) to the sequence.
    void fill_to(int32_t n, uint64_t seed) {
        const model_config & c = m->config();
        const int32_t        chunk = 4096, w = c.n_head_kv * c.n_head_dim;
        std::vector<float>   k(size_t(chunk) * w), v(k.size());
        uint64_t             x = seed * 0x9E3779B97F4A7C15ull + uint64_t(seq.n_tokens) + 1;
        auto rnd = [&x] {  // xorshift64*, uniform in [-1.7, 1.7): unit variance, cheap enough for 10^9 values
            x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
            return float(double((x * 0x2545F4914F6CDD1Dull) >> 11) * (3.4 / 9007199254740992.0) - 1.7);
        };
        for (int32_t t0 = seq.n_tokens; t0 < n; t0 += chunk) {
            const int32_t rows = std::min(chunk, n - t0);
            if (!kv_seq_prepare(*pool, seq, t0, t0 + rows)) fail(MINICPM_STATUS_OUT_OF_MEMORY, "bench: KV pool");
            kv_segment sg;
            sg.n_rows = rows;
            sg.n_past = t0;
            sg.blocks = seq.blocks.data();
            const int32_t from = sparse() ? sparse_stale_from(*pool, sg) : 0;
            for (int32_t il = 0; il < c.n_layer; ++il) {
                for (size_t i = 0; i < size_t(rows) * w; ++i) k[i] = rnd(), v[i] = rnd();
                be->kv_store(pool->layer(il), k.data(), v.data(), &sg, 1);
                if (sparse()) be->kv_compress(pool->compressed(il), pool->layer(il), &sg, &from, 1);
            }
            if (sparse()) sparse_mark_valid(*pool, sg, from);
            seq.n_tokens = t0 + rows;
        }
        be->synchronize();
    }

    // One decode step through the whole model and the sampler; returns {step ms, attention ms}.
    std::pair<double, double> step() {
        const int32_t n = seq.n_tokens;
        if (!kv_seq_prepare(*pool, seq, n, n + 1)) fail(MINICPM_STATUS_OUT_OF_MEMORY, "bench: KV pool");
        kv_segment sg;
        sg.n_rows = 1;
        sg.n_past = n;
        sg.blocks = seq.blocks.data();
        batch_view b;
        b.tokens = &token;
        b.n_tokens = 1;
        b.segs = &sg;
        b.n_segs = 1;
        const int32_t row = 0;
        b.logit_rows = &row;
        b.n_logit_rows = 1;
        const int64_t a0 = ws.attn_us;
        const double  t0 = now_ms();
        m->forward(*be, ws, *pool, b, logits.data());
        token = smp->sample(logits.data(), scratch).token;
        const double t1 = now_ms();
        seq.n_tokens = n + 1;
        return {t1 - t0, double(ws.attn_us - a0) / 1e3};
    }

    // A prompt of n tokens through forward() in chunks (dense below dense_len, sparse above for the sparse
    // runner); returns ms.
    double prefill(int32_t n, int32_t chunk) {
        kv_seq_free(*pool, seq);
        std::vector<int32_t> toks(static_cast<size_t>(chunk));
        const double t0 = now_ms();
        for (int32_t p = 0; p < n; p += chunk) {
            const int32_t rows = std::min(chunk, n - p);
            for (int32_t i = 0; i < rows; ++i) toks[size_t(i)] = 3 + (p + i) * 7919 % 70000;
            if (!kv_seq_prepare(*pool, seq, p, p + rows)) fail(MINICPM_STATUS_OUT_OF_MEMORY, "bench: KV pool");
            kv_segment sg;
            sg.n_rows = rows;
            sg.n_past = p;
            sg.blocks = seq.blocks.data();
            batch_view b;
            b.tokens = toks.data();
            b.n_tokens = rows;
            b.segs = &sg;
            b.n_segs = 1;
            const int32_t last = rows - 1;
            b.logit_rows = &last;
            b.n_logit_rows = p + rows == n ? 1 : 0;
            m->forward(*be, ws, *pool, b, logits.data());
            seq.n_tokens = p + rows;
        }
        return now_ms() - t0;
    }
};

struct point {
    double dense = 1e30, sparse = 1e30, attn_dense = 0, attn_sparse = 0;  // best step, its attention time
};

}  // namespace

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: bench-sparse-e2e DIR [8b|0.5b] [--layers 2,4] [--ctx 8,32,64,128] [--reps N] "
                             "[--threads N] [--quantize q8|q4] [--prefill]\n");
        return 2;
    }
    const std::string root = argv[1];
    bool big = true, prefill = false;
    std::vector<int32_t> layers = {2, 4}, ctx_k = {8, 32, 64, 128};
    int32_t reps = 5, n_threads = 0, quantize = 0;
    for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        const bool more = i + 1 < argc;
        if (a == "8b" || a == "0.5b") big = a == "8b";
        else if (a == "--layers" && more) layers = int_list(argv[++i]);
        else if (a == "--ctx" && more) ctx_k = int_list(argv[++i]);
        else if (a == "--reps" && more) reps = std::max(1, std::atoi(argv[++i]));
        else if (a == "--threads" && more) n_threads = std::atoi(argv[++i]);
        else if (a == "--quantize" && more && (std::strcmp(argv[i + 1], "q8") == 0 || std::strcmp(argv[i + 1], "q4") == 0))
            quantize = std::strcmp(argv[++i], "q8") == 0 ? MINICPM_DTYPE_Q8 : MINICPM_DTYPE_Q4;
        else if (a == "--prefill") prefill = true;
        else {
            std::fprintf(stderr, "bench-sparse-e2e: unknown argument '%s'\n", a.c_str());
            return 2;
        }
    }
    std::sort(layers.begin(), layers.end());
    std::sort(ctx_k.begin(), ctx_k.end());
    try {
        const int32_t prefill_len = 32 * 1024;
        const int32_t max_slots = std::max(ctx_k.back() * 1024, prefill ? prefill_len : 0) + reps + 64;
        std::vector<std::vector<point>> res(layers.size(), std::vector<point>(ctx_k.size()));
        std::vector<double> kv_mib(ctx_k.size()), comp_mib(ctx_k.size()), rss(ctx_k.size());
        // Every layer count's dense and sparse model at once, their steps interleaved, so that the per-layer
        // difference compares steps taken under the same load.
        std::vector<std::unique_ptr<runner>> run;  // [2 li] dense, [2 li + 1] sparse
        for (int32_t n : layers) {
            const std::string dir = checkpoint(root, big, n);
            run.push_back(std::make_unique<runner>(dir, false, n_threads, max_slots, quantize));
            run.push_back(std::make_unique<runner>(dir, true, n_threads, max_slots, quantize));
        }
        const runner &           r0 = *run[1];
        const model_config &     c0 = r0.m->config();
        const sparse_attn_params sp = c0.sparse.params();
        std::printf("bench-sparse-e2e: %s shape (hidden %d, %d heads, %d KV heads, head_dim %d, ff %d, vocab %d), CPU "
                    "%s, %d threads, %s weights, bf16 KV; sparse = hf, kernel %d/%d, init %d, window %d blocks, topk %d, "
                    "dense_len %d; best of %d decode steps, dense and sparse of every layer count interleaved\n",
                    big ? "8B" : "0.5B", c0.n_embd, c0.n_head, c0.n_head_kv, c0.n_head_dim, c0.n_ff, c0.n_vocab,
                    r0.be->name(), r0.be->n_threads(),
                    quantize == MINICPM_DTYPE_Q8 ? "q8 (group 128)" : quantize == MINICPM_DTYPE_Q4 ? "q4 (group 128)" : "bf16",
                    sp.kernel_size, sp.kernel_stride, sp.init_blocks,
                    sp.window_blocks, sp.topk, sp.dense_len, reps);
        std::fflush(stdout);
        for (size_t ci = 0; ci < ctx_k.size(); ++ci) {
            const int32_t N = ctx_k[ci] * 1024;
            // Grow every sequence to N - 1 rows (the same synthetic rows for all; earlier decode rows stay).
            for (auto & r : run) {
                kv_seq_truncate(*r->pool, r->seq, std::min(r->seq.n_tokens, N - 1));
                r->fill_to(N - 1, 7);
            }
            for (auto & r : run) r->step();  // warm-up (also makes every sequence hold N rows)
            for (int32_t i = 0; i < reps; ++i)
                for (size_t li = 0; li < layers.size(); ++li) {
                    point &    pt = res[li][ci];
                    const auto a = run[2 * li]->step(), b = run[2 * li + 1]->step();
                    if (a.first < pt.dense) pt.dense = a.first, pt.attn_dense = a.second;
                    if (b.first < pt.sparse) pt.sparse = b.first, pt.attn_sparse = b.second;
                }
            const model_config & c = run.back()->m->config();  // the most layers
            const double blocks = double(kv_blocks_for(N));
            const double side = double(kv_pool::sparse_bytes_per_block(c));
            kv_mib[ci] = blocks * double(kv_pool::bytes_per_block(c, dtype::bf16) - uint64_t(side)) / 1048576.0;
            comp_mib[ci] = blocks * side / 1048576.0;
            rss[ci] = rss_mib();
        }
        for (size_t li = 0; li < layers.size(); ++li) {
            std::printf("\n-- %d layers, measured --\n", layers[li]);
            std::printf("%6s | %12s %12s %7s | %11s %11s %7s | %9s %10s\n", "ctx", "step dense", "step sparse", "x",
                        "attn dense", "attn sparse", "x", "KV MiB", "C1+C2 MiB");
            const double f = double(layers[li]) / layers.back();
            for (size_t ci = 0; ci < ctx_k.size(); ++ci) {
                const point & pt = res[li][ci];
                std::printf("%5dK | %9.1f ms %9.1f ms %6.2fx | %8.1f ms %8.1f ms %6.2fx | %9.1f %10.2f\n", ctx_k[ci],
                            pt.dense, pt.sparse, pt.dense / pt.sparse, pt.attn_dense, pt.attn_sparse,
                            pt.attn_dense / pt.attn_sparse, kv_mib[ci] * f, comp_mib[ci] * f);
            }
        }
        std::printf("\nprocess RSS after each context (MiB):");
        for (size_t ci = 0; ci < ctx_k.size(); ++ci) std::printf(" %dK %.0f", ctx_k[ci], rss[ci]);
        std::printf("\n");
        if (prefill) {
            const int32_t N = prefill_len, chunk = 2048;
            const double td = run[0]->prefill(N, chunk);
            std::printf("prefill %d tokens (chunks of %d), %d layers, measured: dense %.1f s", N, chunk, layers[0],
                        td / 1e3);
            std::fflush(stdout);  // a long run cut short still reports the dense half
            const double ts = run[1]->prefill(N, chunk);
            std::printf(", sparse %.1f s (%.2fx)\n", ts / 1e3, td / ts);
        }
        if (layers.size() >= 2) {
            const size_t  a = 0, b = layers.size() - 1;
            const int32_t dl = layers[b] - layers[a], L = full_layers(big);
            std::printf("\n-- derived from %d vs %d layers: per layer = difference / %d; %d layers = %d-layer step + "
                        "%d x per layer (DERIVED, not measured) --\n",
                        layers[a], layers[b], dl, L, layers[a], L - layers[a]);
            std::printf("%6s | %13s %13s | %13s %13s | %12s %12s %7s %7s | %9s %10s\n", "ctx", "layer dense",
                        "layer sparse", "l.attn dense", "l.attn sparse", "step dense", "step sparse", "x",
                        "attn %", "KV MiB", "C1+C2 MiB");
            for (size_t ci = 0; ci < ctx_k.size(); ++ci) {
                const point & pa = res[a][ci];
                const point & pb = res[b][ci];
                const double ld = (pb.dense - pa.dense) / dl, ls = (pb.sparse - pa.sparse) / dl;
                const double ad = (pb.attn_dense - pa.attn_dense) / dl, as = (pb.attn_sparse - pa.attn_sparse) / dl;
                const double sd = pa.dense + (L - layers[a]) * ld, ss = pa.sparse + (L - layers[a]) * ls;
                const double kv_scale = double(L) / layers[b];
                std::printf("%5dK | %10.2f ms %10.2f ms | %10.2f ms %10.2f ms | %9.1f ms %9.1f ms %6.2fx %3.0f/%-3.0f | "
                            "%9.0f %10.1f\n",
                            ctx_k[ci], ld, ls, ad, as, sd, ss, sd / ss, 100.0 * L * ad / sd, 100.0 * L * as / ss,
                            kv_mib[ci] * kv_scale, comp_mib[ci] * kv_scale);
            }
        }
    } catch (const error & e) {
        std::fprintf(stderr, "bench-sparse-e2e: %s\n", e.what());
        return 1;
    }
    return 0;
}
