// bench-kernels [n_threads] [family ...]: the bf16-weight matmuls of one MiniCPM4-0.5B layer (q, k, v, o, gate,
// up, down) per CPU kernel family (default: every SIMD family this CPU runs), at batch 1, batch 8 and a 512-token
// prefill, against the peak of the instruction the family's path issues (vdpbf16ps, or the FMA of its vector
// width), measured here with a register-only loop on the same threads. Decode cycles through 8 copies of the
// layer (about 240 MB) so weights come from memory. Families take turns round after round; best of the rounds.
#include "core/dtype.h"
#include "core/threadpool.h"
#include "cpu/ops-fast.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#if defined(MINICPM_X86)
#    include <immintrin.h>
#endif

using namespace minicpm;

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

#if defined(MINICPM_X86)
// Multiply-accumulates done by one thread issuing n x 12 independent chains of one instruction (enough chains to
// cover its latency); the empty volatile asm keeps each accumulator live in its register without touching memory.
__attribute__((target("avx512f,avx512bf16"))) double probe_dpbf16(long n) {
    __m512 a[12];
    for (auto & v : a) v = _mm512_setzero_ps();
    const __m512bh x = (__m512bh) _mm512_set1_epi16(0x3c00);
    for (long i = 0; i < n; ++i)
#pragma GCC unroll 12
        for (auto & v : a) {
            v = _mm512_dpbf16_ps(v, x, x);
            asm volatile("" : "+v"(v));
        }
    return 12.0 * 32 * double(n);
}
__attribute__((target("avx512f"))) double probe_fma512(long n) {
    __m512 a[12];
    for (auto & v : a) v = _mm512_setzero_ps();
    const __m512 x = _mm512_set1_ps(1e-3f);
    for (long i = 0; i < n; ++i)
#pragma GCC unroll 12
        for (auto & v : a) {
            v = _mm512_fmadd_ps(v, x, x);
            asm volatile("" : "+v"(v));
        }
    return 12.0 * 16 * double(n);
}
__attribute__((target("avx2,fma"))) double probe_fma256(long n) {
    __m256 a[12];
    for (auto & v : a) v = _mm256_setzero_ps();
    const __m256 x = _mm256_set1_ps(1e-3f);
    for (long i = 0; i < n; ++i)
#pragma GCC unroll 12
        for (auto & v : a) {
            v = _mm256_fmadd_ps(v, x, x);
            asm volatile("" : "+v"(v));
        }
    return 12.0 * 8 * double(n);
}
#endif

// Peak MAC/s of the instruction behind a family's bf16 path at T tokens on all pool threads; 0 when it has no
// single such instruction (AMX, portable) or this build is not x86-64.
double peak_macs(const cpu_kernel_table & kt, int64_t T, thread_pool & tp) {
#if defined(MINICPM_X86)
    double (*probe)(long) = nullptr;
    const matmul_path path = select_matmul_path(kt, dtype::bf16, T);
    if (path == matmul_path::dpbf16) probe = probe_dpbf16;
    else if (path == matmul_path::fma && std::strncmp(kt.name, "avx512", 6) == 0) probe = probe_fma512;
    else if (path == matmul_path::fma && std::strcmp(kt.name, "avx2") == 0) probe = probe_fma256;
    if (probe == nullptr) return 0;
    // One probe per thread; the aggregate rate is their work over the wall time of the whole run.
    std::vector<double> macs(size_t(tp.size()), 0.0);
    double best = 0;
    for (int r = 0; r < 3; ++r) {
        const double t0 = now_s();
        tp.run(tp.size(), [&](int64_t i, int) { macs[size_t(i)] = probe(20000000); });
        const double wall = now_s() - t0;
        double sum = 0;
        for (double m : macs) sum += m;
        best = std::max(best, sum / wall);
    }
    return best;
#else
    (void) kt, (void) T, (void) tp;
    return 0;
#endif
}

struct layer {
    std::vector<std::vector<uint16_t>> w;  // q, k, v, o, gate, up, down
};
const int64_t k_shapes[7][2] = {{1024, 1024}, {128, 1024}, {128, 1024}, {1024, 1024},
                                {4096, 1024}, {4096, 1024}, {1024, 4096}};

double layer_macs(int64_t T) {
    double m = 0;
    for (auto & s : k_shapes) m += double(s[0]) * double(s[1]) * double(T);
    return m;
}

// Seconds for the seven matmuls of layer l at T tokens.
double run_layer(const cpu_kernel_table & kt, thread_pool & tp, const layer & l, const float * x, float * y,
                 int64_t T) {
    const double t0 = now_s();
    for (int i = 0; i < 7; ++i) {
        tensor_desc d;
        d.type = dtype::bf16;
        d.rows = k_shapes[i][0];
        d.cols = k_shapes[i][1];
        d.data = l.w[size_t(i)].data();
        fast_matmul(kt, tp, y, x, d, T);
    }
    return now_s() - t0;
}

}  // namespace

int main(int argc, char ** argv) {
    const int n_threads = argc > 1 ? std::atoi(argv[1]) : 0;
    thread_pool tp(n_threads);
    std::vector<const cpu_kernel_table *> fams;
    for (int i = 2; i < argc; ++i) {
        const cpu_kernel_table * kt = cpu_kernel_by_name(argv[i]);
        if (kt == nullptr) {
            std::fprintf(stderr, "bench-kernels: family '%s' is not runnable on this CPU\n", argv[i]);
            return 2;
        }
        fams.push_back(kt);
    }
    if (fams.empty()) {  // every SIMD family (the portable one is the fallback, not a target)
        const cpu_kernel_table * v[8];
        const int n = std::min(cpu_kernel_variants(v, 8), 8);
        for (int i = 0; i < n; ++i)
            if (std::strcmp(v[i]->name, "portable") != 0) fams.push_back(v[i]);
    }

    std::mt19937 rng(1);
    std::uniform_int_distribution<int> u(-1000, 1000);
    std::vector<layer> layers(8);
    for (auto & l : layers)
        for (auto & s : k_shapes) {
            std::vector<uint16_t> w(size_t(s[0] * s[1]));
            for (auto & e : w) e = f32_to_bf16(float(u(rng)) * 1e-3f);
            l.w.push_back(std::move(w));
        }
    const int64_t Ts[] = {1, 8, 512};
    std::vector<float> x(size_t(512 * 4096)), y(size_t(512 * 4096));
    for (auto & e : x) e = float(u(rng)) * 1e-3f;

    std::vector<std::vector<double>> best(fams.size(), std::vector<double>(3, 1e30));
    for (int round = 0; round < 3; ++round)
        for (size_t f = 0; f < fams.size(); ++f)
            for (int ti = 0; ti < 3; ++ti) {
                const int64_t T = Ts[ti];
                const int reps = T == 512 ? 1 : 8;
                for (int r = 0; r < reps; ++r)
                    best[f][size_t(ti)] = std::min(best[f][size_t(ti)], run_layer(*fams[f], tp, layers[size_t(r % 8)],
                                                                                   x.data(), y.data(), T));
            }
    std::printf("threads: %d; one MiniCPM4-0.5B layer of bf16 matmuls (%.1f MB of weights), best of 3 rounds\n",
                tp.size(), layer_macs(1) * 2 / 1e6);
    for (size_t f = 0; f < fams.size(); ++f) {
        const cpu_kernel_table & kt = *fams[f];
        const double b1 = best[f][0], b8 = best[f][1], p = best[f][2];
        std::printf("%-11s batch 1: %6.2f ms (%5.1f GB/s of weights, %s)\n", kt.name, b1 * 1e3,
                    layer_macs(1) * 2 / b1 / 1e9, matmul_path_name(select_matmul_path(kt, dtype::bf16, 1)));
        const double pk8 = peak_macs(kt, 8, tp), pk512 = peak_macs(kt, 512, tp);
        const double g8 = layer_macs(8) / b8 / 1e9, g512 = layer_macs(512) / p / 1e9;
        std::printf("%-11s batch 8: %6.2f ms (%.2fx batch 1; %5.1f GMAC/s", kt.name, b8 * 1e3, 8 * b1 / b8, g8);
        if (pk8 > 0) std::printf(" = %.0f%% of the %s peak %.1f GMAC/s", 100 * g8 * 1e9 / pk8,
                                 matmul_path_name(select_matmul_path(kt, dtype::bf16, 8)), pk8 / 1e9);
        std::printf(")\n%-11s prefill 512: %6.2f ms (%5.1f GMAC/s", kt.name, p * 1e3, g512);
        if (pk512 > 0) std::printf(" = %.0f%% of the %s peak %.1f GMAC/s", 100 * g512 * 1e9 / pk512,
                                   matmul_path_name(select_matmul_path(kt, dtype::bf16, 512)), pk512 / 1e9);
        std::printf(")\n");
    }
    return 0;
}
