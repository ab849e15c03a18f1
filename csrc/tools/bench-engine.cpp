// bench-engine MODEL_DIR [n_threads] [q8|q4] [quant_group]: the `make bench` program. Measures, through the public C API only, the
// machine's memory read bandwidth, prefill and decode throughput (batch 1, 8 and 32) and how close batch-1
// decode comes to the memory roofline. Each figure is the best of several runs: the machine may be shared.
#include "minicpm.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

[[noreturn]] void die(const char * what, int32_t status) {
    char msg[512];
    minicpm_last_error(msg, sizeof(msg));
    std::fprintf(stderr, "bench-engine: %s failed: %s (%s)\n", what, minicpm_status_name(status), msg);
    std::exit(1);
}

// Read bandwidth with n_threads threads, each streaming its own first-touched buffer (one pass per sample).
class bandwidth_probe {
  public:
    bandwidth_probe(int n_threads, size_t bytes_per_thread)
        : n_(bytes_per_thread / sizeof(uint64_t)), bufs_(static_cast<size_t>(n_threads)),
          sinks_(static_cast<size_t>(n_threads)) {
        run([&](int i) { bufs_[size_t(i)].assign(n_, uint64_t(i) + 1); });
    }

    double sample_gbs() {
        const double t0 = now_s();
        run([&](int i) {
            // Four interleaved streams per thread with software prefetch, like the matmul kernels' row groups:
            // one sequential stream reads noticeably slower than the kernels do.
            const uint64_t * p = bufs_[size_t(i)].data();
            const size_t q = n_ / 4;
            uint64_t acc[4][8] = {};  // independent lanes so the loop vectorizes and is load-bound
            for (size_t k = 0; k + 8 <= q; k += 8) {
                for (int s = 0; s < 4; ++s) {
                    __builtin_prefetch(p + s * q + k + 512);
                    for (int j = 0; j < 8; ++j) acc[s][j] += p[s * q + k + j];
                }
            }
            uint64_t sum = 0;
            for (auto & a : acc)
                for (uint64_t v : a) sum += v;
            sinks_[size_t(i)] = sum;
        });
        return double(n_ * sizeof(uint64_t)) * double(bufs_.size()) / (now_s() - t0) / 1e9;
    }

  private:
    template <typename F> void run(F fn) {
        std::vector<std::thread> th;
        for (int i = 0; i < int(bufs_.size()); ++i) th.emplace_back(fn, i);
        for (auto & t : th) t.join();
    }

    size_t                             n_;
    std::vector<std::vector<uint64_t>> bufs_;
    std::vector<uint64_t>              sinks_;
};

// The 1-minute load average and the CPU count, so a reader can tell a busy machine's figures apart.
std::string load_average() {
    double l1 = 0;
    if (FILE * f = std::fopen("/proc/loadavg", "r")) {
        if (std::fscanf(f, "%lf", &l1) != 1) l1 = -1;
        std::fclose(f);
    }
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.2f on %u cpus", l1, std::thread::hardware_concurrency());
    return buf;
}

struct bench_ctx {
    minicpm_context_t * ctx = nullptr;
    int32_t n_vocab = 0;
    std::vector<float> logits;

    // Evaluates tokens (seq_ids may be empty = all sequence 0), logits for the last token of each sequence.
    double eval(const std::vector<int32_t> & tokens, const std::vector<int32_t> & seq_ids) {
        std::vector<uint8_t> out(tokens.size(), 0);
        int32_t n_out = 0;
        for (size_t i = 0; i < tokens.size(); ++i) {
            const bool last = seq_ids.empty() ? i + 1 == tokens.size()
                                              : (i + 1 == tokens.size() || seq_ids[i + 1] != seq_ids[i]);
            out[i] = last ? 1 : 0;
            n_out += out[i];
        }
        logits.resize(size_t(n_out) * size_t(n_vocab));
        const double t0 = now_s();
        const int32_t rc = minicpm_context_eval(ctx, tokens.data(), seq_ids.empty() ? nullptr : seq_ids.data(),
                                                out.data(), int32_t(tokens.size()), logits.data(),
                                                int64_t(logits.size()));
        const double dt = now_s() - t0;
        if (rc < 0) die("minicpm_context_eval", rc);
        return dt;
    }
};

std::vector<int32_t> prompt(int32_t n, int32_t n_vocab, uint32_t seed) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) {
        t[size_t(i)] = int32_t((seed * 2654435761u + uint32_t(i) * 40503u) % 30000u + 100u) % n_vocab;
    }
    return t;
}

// One decode step for sequences [s0, s0 + n_seq): one token each, logits for each. Returns the step time.
double decode_step_s(bench_ctx & bc, int32_t s0, int32_t n_seq, int32_t step) {
    std::vector<int32_t> t(static_cast<size_t>(n_seq)), sq(static_cast<size_t>(n_seq));
    for (int32_t s = 0; s < n_seq; ++s) {
        t[size_t(s)] = int32_t((uint32_t(step) * 7919u + uint32_t(s) * 104729u) % 30000u + 100u) % bc.n_vocab;
        sq[size_t(s)] = s0 + s;
    }
    return bc.eval(t, sq);
}

// The backend and kernel family the engine runs on this machine (MINICPM_KERNELS forces one), e.g.
// "cpu avx512+amx": read from a short-lived engine's stats, the public API's way of naming it.
std::string kernel_family(minicpm_model_t * model, int32_t n_threads) {
    minicpm_engine_params ep;
    minicpm_engine_default_params(&ep);
    ep.n_threads = n_threads;
    ep.kv_bytes = uint64_t(1) << 20;
    minicpm_engine_t * eng = nullptr;
    int32_t rc = minicpm_engine_init(model, &ep, &eng);
    if (rc != MINICPM_STATUS_OK) die("minicpm_engine_init", rc);
    struct minicpm_engine_stats st = {};
    st.size = sizeof(st);
    rc = minicpm_engine_stats(eng, &st);
    if (rc != MINICPM_STATUS_OK) die("minicpm_engine_stats", rc);
    minicpm_engine_free(eng);
    return std::string(st.backend_name, strnlen(st.backend_name, sizeof(st.backend_name)));
}

}  // namespace

// Resident memory from /proc/self/status: total, anonymous (heap: converted and packed weights) and file-backed
// (mapped checkpoint pages), in MiB; "n/a" where the file does not exist.
std::string resident_memory() {
    std::FILE * f = std::fopen("/proc/self/status", "r");
    if (f == nullptr) return "n/a";
    char   line[256];
    double rss = -1, anon = -1, file = -1;
    while (std::fgets(line, sizeof(line), f)) {
        double kb = 0;
        if (std::sscanf(line, "VmRSS: %lf", &kb) == 1) rss = kb / 1024;
        if (std::sscanf(line, "RssAnon: %lf", &kb) == 1) anon = kb / 1024;
        if (std::sscanf(line, "RssFile: %lf", &kb) == 1) file = kb / 1024;
    }
    std::fclose(f);
    char buf[128];
    std::snprintf(buf, sizeof(buf), "%.0f MiB (anonymous %.0f MiB, file-backed %.0f MiB)", rss, anon, file);
    return buf;
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: bench-engine MODEL_DIR [n_threads] [q8|q4] [quant_group]\n");
        return 2;
    }
    const int32_t n_threads = argc > 2 ? std::atoi(argv[2]) : 0;
    const int bw_threads = n_threads > 0 ? n_threads : int(std::max(1u, std::thread::hardware_concurrency()));

    char feat[256];
    minicpm_system_info(feat, sizeof(feat));
    std::printf("features: %s\n", feat);
    std::printf("load average before: %s\n", load_average().c_str());

    bandwidth_probe probe(bw_threads, size_t(256) << 20);

    minicpm_model_params mp;
    minicpm_model_default_params(&mp);
    if (const char * b = std::getenv("MINICPM_BACKEND"))  // cpu | cuda | auto (scripts/gpu-check.sh)
        mp.backend = std::string(b) == "cuda" ? MINICPM_BACKEND_CUDA : std::string(b) == "cpu" ? MINICPM_BACKEND_CPU : 0;
    if (const char * g = std::getenv("MINICPM_CUDA_GRAPHS"))  // on | off (scripts/gpu-check.sh compares both)
        mp.cuda_graphs = std::string(g) == "off" ? 0 : 1;
    const std::string quant = argc > 3 ? argv[3] : "";
    if (quant == "q8") mp.quantize = MINICPM_DTYPE_Q8;
    else if (quant == "q4") mp.quantize = MINICPM_DTYPE_Q4;
    else if (!quant.empty()) {
        std::fprintf(stderr, "bench-engine: quantize must be q8 or q4, got '%s'\n", quant.c_str());
        return 2;
    }
    if (argc > 4) mp.quant_group_size = std::atoi(argv[4]);  // 32 matches llama.cpp's Q8_0 / Q4_0 blocks
    minicpm_model_t * model = nullptr;
    int32_t rc = minicpm_model_load(argv[1], &mp, &model);
    if (rc != MINICPM_STATUS_OK) die("minicpm_model_load", rc);
    std::printf("resident after load: %s\n", resident_memory().c_str());
    struct minicpm_model_info info = {};
    info.size = sizeof(info);
    rc = minicpm_model_info(model, &info);
    if (rc != MINICPM_STATUS_OK) die("minicpm_model_info", rc);
    const char * graphs = mp.cuda_graphs ? " (cuda graphs on)" : " (cuda graphs off)";
    std::printf("backend: %s%s\n", info.backend_name, info.backend == MINICPM_BACKEND_CUDA ? graphs : "");
    const char * forced = std::getenv("MINICPM_KERNELS");
    std::printf("kernels: %s%s%s%s\n", kernel_family(model, n_threads).c_str(), forced ? " (MINICPM_KERNELS=" : "",
                forced ? forced : "", forced ? ")" : "");

    // Sequence 0 decodes alone, 1..8 as the batch of 8, 9..40 as the batch of 32.
    const int32_t n_prefill = 512, ctx_len = 64, n_rounds = 12, n_seq_max = 1 + 8 + 32;
    minicpm_context_params cp;
    minicpm_context_default_params(&cp);
    cp.n_ctx = n_prefill + 64 + 128;
    cp.n_seq_max = n_seq_max;
    cp.n_threads = n_threads;
    cp.kv_dtype = MINICPM_DTYPE_BF16;
    bench_ctx bc;
    bc.n_vocab = info.n_vocab;
    rc = minicpm_context_init(model, &cp, &bc.ctx);
    if (rc != MINICPM_STATUS_OK) die("minicpm_context_init", rc);

    double best_prefill = 1e30;
    const auto p512 = prompt(n_prefill, info.n_vocab, 1);
    for (int r = 0; r < 5; ++r) {
        minicpm_context_seq_truncate(bc.ctx, 0, 0);
        best_prefill = std::min(best_prefill, bc.eval(p512, {}));
    }
    minicpm_context_seq_truncate(bc.ctx, 0, 0);

    // Every sequence gets a ctx_len-token prompt; then the configurations take turns, round after round, with a
    // bandwidth sample in each round, so that all of them see the same background load.
    for (int32_t s0 = 0; s0 < n_seq_max; s0 += 8) {
        std::vector<int32_t> toks, seqs;
        for (int32_t s = s0; s < std::min(n_seq_max, s0 + 8); ++s) {
            const auto p = prompt(ctx_len, info.n_vocab, uint32_t(s) + 7);
            toks.insert(toks.end(), p.begin(), p.end());
            seqs.insert(seqs.end(), size_t(ctx_len), s);
        }
        bc.eval(toks, seqs);
    }
    double bw = 0, step1 = 1e30, step8 = 1e30, step32 = 1e30;
    for (int32_t r = 0; r < n_rounds; ++r) {
        bw = std::max(bw, probe.sample_gbs());
        step1 = std::min(step1, decode_step_s(bc, 0, 1, r));
        step8 = std::min(step8, decode_step_s(bc, 1, 8, r));
        step32 = std::min(step32, decode_step_s(bc, 9, 32, r));
    }

    // 128 consecutive batch-1 steps, as llama-bench's tg128 measures (a mean, not a best step).
    const int32_t n_tg = 128;
    double tg_s = 0;
    for (int32_t i = 0; i < n_tg; ++i) tg_s += decode_step_s(bc, 0, 1, n_rounds + i);

    std::printf("memory read bandwidth: %.1f GB/s (%d threads x 256 MiB, best of %d)\n", bw, bw_threads, n_rounds);
    // Bytes one batch-1 step must read: every weight (a tied embedding is read in full as the LM head; an untied
    // one only as rows) plus the KV cache of the context.
    const uint64_t esz = info.weight_dtype == MINICPM_DTYPE_F32 ? 4 : 2;
    const uint64_t embed_bytes = uint64_t(info.n_vocab) * uint64_t(info.n_embd) * esz;
    const uint64_t weight_bytes = info.tied_head ? info.weight_bytes : info.weight_bytes - embed_bytes;
    const double   step_bytes = double(weight_bytes) + double(info.kv_bytes_per_token) * (ctx_len + n_rounds / 2);
    std::printf("weights: %s%s, %.1f MB, %.2f bits/weight; decode roofline %.1f tok/s at %.1f GB/s\n",
                quant.empty() ? "as stored" : quant.c_str(),
                quant.empty() ? "" : (" group " + std::to_string(mp.quant_group_size > 0 ? mp.quant_group_size : 128)).c_str(), double(info.weight_bytes) / 1e6,
                double(info.weight_bytes) * 8.0 / double(info.n_params), bw * 1e9 / step_bytes, bw);
    std::printf("prefill: %.1f tok/s (%d-token prompt, best of 5)\n", n_prefill / best_prefill, n_prefill);
    std::printf("decode batch 1: %.1f tok/s (context %d-%d, best step of %d)\n", 1.0 / step1, ctx_len,
                ctx_len + n_rounds, n_rounds);
    std::printf("decode batch 1, %d steps: %.1f tok/s (mean, context %d-%d)\n", n_tg, n_tg / tg_s, ctx_len + n_rounds,
                ctx_len + n_rounds + n_tg);
    std::printf("decode batch 8: %.1f tok/s aggregate (%.2fx batch 1)\n", 8.0 / step8, step1 / step8 * 8.0);
    std::printf("decode batch 32: %.1f tok/s aggregate (%.2fx batch 1)\n", 32.0 / step32, step1 / step32 * 32.0);

    const uint64_t kv_bytes = uint64_t(ctx_len + n_rounds / 2) * info.kv_bytes_per_token;
    const double bytes = double(weight_bytes + kv_bytes);
    std::printf("bytes read per decode step: %.1f MB (weights %.1f MB + KV %.1f MB)\n", bytes / 1e6,
                double(weight_bytes) / 1e6, double(kv_bytes) / 1e6);
    std::printf("batch-1 roofline: %.0f%% (%.1f GB/s of %.1f GB/s; roofline %.1f tok/s)\n",
                100.0 * bytes / step1 / 1e9 / bw, bytes / step1 / 1e9, bw, bw * 1e9 / bytes);
    std::printf("batch-1 roofline over %d steps: %.0f%% (mean step)\n", n_tg, 100.0 * bytes / (tg_s / n_tg) / 1e9 / bw);

    std::printf("load average after: %s (other processes share these cores: figures are best-of-N)\n",
                load_average().c_str());

    minicpm_context_free(bc.ctx);
    minicpm_model_free(model);
    return 0;
}
