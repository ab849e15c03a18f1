// Every op of the CUDA backend against the CPU reference op (the specification), then the whole model: logits
// of a generated checkpoint on the CUDA backend vs the CPU reference, and speculative decoding on a sparse one
// vs plain decoding on the device. NMSE per case, printed. Exits 77 (ctest:
// skipped, and reported as such by scripts/test.sh) when the build has no CUDA backend or the machine no device.
// `test-cuda --perf` also times the GEMV (GB/s) and the tensor-core GEMMs, bf16 and q8 / q4 (TFLOP/s; q4 also in
// GPTQ act-order and split-K), for scripts/gpu-check.sh. Each section runs in a process of its own with a time
// limit (see main), so that one kernel fault or hang is one FAIL line and the other sections still report;
// `test-cuda SECTION...` runs some.
#include "core/backend.h"
#include "core/status.h"
#include "cpu/cpu-common.h"
#include "cpu/ops-ref.h"
#include "cpu/ops-sparse.h"
#include "engine/context.h"
#include "engine/sampler.h"
#include "model/kv-cache.h"
#include "tests/spec-requests.h"
#include "tests/tiny-model.h"
#if MINICPM_CUDA
#include "cuda/gemm-sm90.h"  // the wgmma GEMM's probe verdict and the switch to mma.sync
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

using namespace minicpm;

namespace {

std::mt19937 g_rng(99);

std::vector<float> rnd(size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float & x : v) x = d(g_rng);
    return v;
}

// sm_90: whether the wgmma GEMM's start-up probe passed; the switch that sends bf16 / f16 GEMMs to mma.sync.
bool wgmma_on() {
#if MINICPM_CUDA
    return cuda::gemm16_wgmma_state().enabled;
#else
    return false;
#endif
}
void force_mma_sync(bool on) {
#if MINICPM_CUDA
    cuda::gemm16_allow_wgmma(!on);
#else
    (void) on;
#endif
}

std::vector<uint8_t> raw(const std::vector<float> & v, dtype t) {
    std::vector<uint8_t> out(v.size() * dtype_size(t));
    for (size_t i = 0; i < v.size(); ++i) store_f32(out.data(), t, int64_t(i), v[i]);
    return out;
}

double nmse(const std::vector<float> & ref, const std::vector<float> & got) {
    double se = 0, sr = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        const double d = double(got[i]) - double(ref[i]);
        se += std::isfinite(got[i]) ? d * d : 1e30;
        sr += double(ref[i]) * double(ref[i]);
    }
    return sr > 0 ? se / sr : se;
}

// Device copies of host arrays, released with the harness.
struct device {
    backend & be;
    std::vector<buffer> held;
    template <typename T> T * put(const std::vector<T> & host) {
        held.push_back(be.alloc(host.size() * sizeof(T) + 16, buffer_usage::compute));
        be.upload(held.back(), 0, host.data(), host.size() * sizeof(T));
        return (T *) held.back().data;
    }
    float * zeros(size_t n) {
        held.push_back(be.alloc(n * sizeof(float) + 16, buffer_usage::compute));
        return (float *) held.back().data;
    }
    template <typename T> std::vector<T> get(const T * p, size_t n) {
        for (const buffer & b : held)
            if (b.data == (const void *) p) {
                std::vector<T> out(n);
                be.download(out.data(), b, 0, n * sizeof(T));
                return out;
            }
        fail(MINICPM_STATUS_INTERNAL, "test: not a device array of this harness");
    }
    ~device() {
        for (buffer & b : held) be.release(b);
    }
};

// On a failure also the largest difference and the first values: enough to tell a wrong op from an unwritten
// (zero) or faulted (NaN) output without a second run.
void expect(const std::string & name, const std::vector<float> & ref, const std::vector<float> & got, double thr) {
    const double e = nmse(ref, got);
    if (CHECK(e <= thr, "%-60s nmse %.3e (thr %.0e)", name.c_str(), e, thr) || ref.empty()) return;
    size_t worst = 0;
    double wd = -1.0;
    for (size_t i = 0; i < ref.size(); ++i) {
        double d = std::fabs(double(got[i]) - double(ref[i]));
        if (std::isnan(d)) d = INFINITY;
        if (d > wd) {
            wd = d;
            worst = i;
        }
    }
    std::printf("     max |diff| %.3e at %zu (ref %.6g, got %.6g); first values ref/got:", wd, worst, double(ref[worst]),
                double(got[worst]));
    for (size_t i = 0; i < ref.size() && i < 4; ++i) std::printf(" %.5g/%.5g", double(ref[i]), double(got[i]));
    std::printf("\n");
}

tensor_desc plain(dtype t, int64_t rows, int64_t cols, const void * data) {
    tensor_desc d;
    d.type = t;
    d.rows = rows;
    d.cols = cols;
    d.data = data;
    return d;
}

void test_elementwise(backend & be) {
    device dv{be};
    const int64_t T = 7, H = 300;
    const auto x = rnd(size_t(T * H), -3, 3), a = rnd(size_t(T * H));
    for (dtype gt : {dtype::f32, dtype::bf16, dtype::f16}) {
        const auto g = raw(rnd(size_t(H)), gt);
        std::vector<float> yr(x.size());
        ref_rms_norm(yr.data(), x.data(), plain(gt, 1, H, g.data()), T, 1e-6f);
        float * yd = dv.zeros(x.size());
        be.rms_norm(yd, dv.put(x), plain(gt, 1, H, dv.put(g)), T, 1e-6f);
        expect(std::string("rms_norm g=") + dtype_name(gt), yr, dv.get(yd, yr.size()), 1e-10);

        const int64_t V = 50;
        const auto e = raw(rnd(size_t(V * H)), gt);
        std::vector<int32_t> toks = {3, 49, 0, 7, 7};
        std::vector<float> er(toks.size() * H);
        ref_embed(er.data(), toks.data(), plain(gt, V, H, e.data()), int64_t(toks.size()), 12.0f);
        float * ed = dv.zeros(er.size());
        be.embed(ed, dv.put(toks), plain(gt, V, H, dv.put(e)), int64_t(toks.size()), 12.0f);
        expect(std::string("embed e=") + dtype_name(gt), er, dv.get(ed, er.size()), 0.0);
    }
    {
        const int32_t nh = 3, hd = 64, P = 100;
        const auto cs = rnd(size_t(P * hd));
        std::vector<int32_t> pos = {0, 5, 99, 42, 42, 1, 7};
        auto q = rnd(size_t(T) * nh * hd);
        std::vector<float> qr = q;
        ref_rope(qr.data(), pos.data(), cs.data(), T, nh, hd);
        float * qd = dv.put(q);
        be.rope(qd, dv.put(pos), dv.put(cs), T, nh, hd);
        expect("rope", qr, dv.get(qd, qr.size()), 1e-12);
    }
    {
        std::vector<float> r(x.size());
        ref_silu_mul(r.data(), x.data(), a.data(), int64_t(x.size()));
        float * d = dv.zeros(x.size());
        be.silu_mul(d, dv.put(x), dv.put(a), int64_t(x.size()));
        expect("silu_mul", r, dv.get(d, r.size()), 1e-12);
        std::vector<float> s = x;
        ref_add_scaled(s.data(), a.data(), 0.3f, int64_t(s.size()));
        float * sd = dv.put(x);
        be.add_scaled(sd, dv.put(a), 0.3f, int64_t(x.size()));
        expect("add_scaled", s, dv.get(sd, s.size()), 0.0);
        std::vector<float> q = x;
        ref_div_scalar(q.data(), 3.0f, int64_t(q.size()));
        float * qd = dv.put(x);
        be.div_scalar(qd, 3.0f, int64_t(x.size()));
        expect("div_scalar", q, dv.get(qd, q.size()), 0.0);
        const std::vector<int32_t> rows = {6, 0, 3};
        std::vector<float> gr(rows.size() * H);
        ref_get_rows(gr.data(), x.data(), rows.data(), 3, H);
        float * gd = dv.zeros(gr.size());
        be.get_rows(gd, dv.put(x), dv.put(rows), 3, H);
        expect("get_rows", gr, dv.get(gd, gr.size()), 0.0);
    }
}

// A quantized matmul case: format, scale type, shape, group size, zero points or none.
struct qcase {
    dtype   type, scale_type;
    int64_t N, K, group;
    bool    zeros;
};

void test_matmul(backend & be) {
    device dv{be};
    const int64_t shapes[][2] = {{77, 1000}, {128, 1024}, {33, 64}, {300, 200}};
    for (dtype wt : {dtype::bf16, dtype::f16, dtype::f32}) {
        for (const auto & s : shapes) {
            const int64_t N = s[0], K = s[1];
            const auto w = raw(rnd(size_t(N * K)), wt);
            const tensor_desc hw = plain(wt, N, K, w.data());
            const tensor_desc dw = plain(wt, N, K, dv.put(w));
            for (int64_t T : {1, 3, 8, 9, 64, 100}) {
                const auto x = rnd(size_t(T * K));
                std::vector<float> yr(size_t(T * N));
                ref_matmul(yr.data(), x.data(), hw, T);
                float * yd = dv.zeros(yr.size());
                be.matmul(yd, dv.put(x), dw, T);
                const bool tc = T > 8 && wt != dtype::f32;  // activations rounded to 16 bits
                expect("matmul " + std::string(dtype_name(wt)) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                           " T=" + std::to_string(T) + (tc ? " (tensor cores)" : ""),
                       yr, dv.get(yd, yr.size()), tc ? 2e-5 : 1e-10);
            }
        }
    }
    // Quantized weights read packed (group-ordered columns, groups of whole 16-byte loads): q8 with f16 and
    // bf16 scales, q4 with zero points and without (8), decode and small-batch rows.
    const qcase qcases[] = {{dtype::q8, dtype::f16, 72, 512, 128, false},
                            {dtype::q8, dtype::bf16, 33, 1024, 32, false},
                            {dtype::q4, dtype::f16, 72, 512, 128, true},
                            {dtype::q4, dtype::f16, 40, 2048, 64, false},
                            {dtype::q4, dtype::bf16, 129, 256, 32, true}};
    for (const qcase & qc : qcases) {
        const int64_t G = qc.K / qc.group;
        std::vector<uint8_t> q(qc.type == dtype::q8 ? size_t(qc.N * qc.K) : size_t(qc.N * qc.K / 2));
        for (auto & b : q) b = uint8_t(g_rng());
        const auto sc = raw(rnd(size_t(qc.N * G), 0.01f, 0.05f), qc.scale_type);
        std::vector<uint8_t> z(size_t(qc.N * G));
        for (auto & b : z) b = uint8_t(g_rng() % 16);
        tensor_desc hw = plain(qc.type, qc.N, qc.K, q.data());
        hw.group_size = int32_t(qc.group);
        hw.scale_type = qc.scale_type;
        hw.scales = sc.data();
        if (qc.zeros) hw.zeros = z.data();
        tensor_desc dw = hw;
        dw.data = dv.put(q);
        dw.scales = dv.put(sc);
        if (qc.zeros) dw.zeros = dv.put(z);
        for (int64_t T : {1, 5, 8}) {
            const auto x = rnd(size_t(T * qc.K));
            std::vector<float> yr(size_t(T * qc.N));
            ref_matmul(yr.data(), x.data(), hw, T);
            float * yd = dv.zeros(yr.size());
            be.matmul(yd, dv.put(x), dw, T);
            expect(std::string("matmul packed ") + dtype_name(qc.type) + " scales " + dtype_name(qc.scale_type) +
                       " N=" + std::to_string(qc.N) + " K=" + std::to_string(qc.K) + " group " +
                       std::to_string(qc.group) + (qc.zeros ? " zeros" : "") + " T=" + std::to_string(T),
                   yr, dv.get(yd, yr.size()), 1e-10);
        }
    }
    // Quantized weights (q8 symmetric in groups of 56; q4 with zeros and a g_idx permutation), dequantized on
    // the fly: layouts neither the packed GEMV nor the quantized GEMM take.
    for (dtype qt : {dtype::q8, dtype::q4}) {
        const int64_t N = 40, K = qt == dtype::q8 ? 224 : 256, G = 4;
        std::vector<uint8_t> q(qt == dtype::q8 ? size_t(N * K) : size_t(N * K / 2));
        for (auto & b : q) b = uint8_t(g_rng());
        const auto sc = raw(rnd(size_t(N * G), 0.01f, 0.05f), dtype::f16);
        std::vector<uint8_t> z(size_t(N * G));
        for (auto & b : z) b = uint8_t(g_rng() % 16);
        std::vector<int32_t> perm(static_cast<size_t>(K));
        for (int64_t k = 0; k < K; ++k) perm[size_t(k)] = int32_t(k % G);
        tensor_desc hw = plain(qt, N, K, q.data());
        hw.group_size = int32_t(K / G);
        hw.scale_type = dtype::f16;
        hw.scales = sc.data();
        if (qt == dtype::q4) {
            hw.zeros = z.data();
            hw.perm = perm.data();
        }
        tensor_desc dw = hw;
        dw.data = dv.put(q);
        dw.scales = dv.put(sc);
        if (qt == dtype::q4) {
            dw.zeros = dv.put(z);
            dw.perm = dv.put(perm);
        }
        for (int64_t T : {1, 17}) {
            const auto x = rnd(size_t(T * K));
            std::vector<float> yr(size_t(T * N));
            ref_matmul(yr.data(), x.data(), hw, T);
            float * yd = dv.zeros(yr.size());
            be.matmul(yd, dv.put(x), dw, T);
            expect(std::string("matmul ") + dtype_name(qt) + " T=" + std::to_string(T), yr, dv.get(yd, yr.size()), 1e-10);
        }
    }
}

// The bf16 / f16 tensor-core GEMM (gemm.cu: mma.sync, cp.async pipeline) against the plain CPU op: T across
// every tile shape (16 / 32 / 64 / 128 rows) and its edges, up to 1030 rows (raster groups of 8 row tiles and a
// partial one); odd N; K = 1024, 4096, 16384 and K a multiple of 8 but not of 64 (a zero-filled last step); the
// 128 x 256 tiles, which only grids of at least one block per SM take (N = 12801 and 4353, and the 0.5B LM head,
// 73448 rows: 150+ blocks, enough up to 148 SMs). K = 16384 over 200 rows underfills any GPU: split-K, run twice
// (bit-identical).
// Then the paths the GEMM does not take: K not a multiple of 8 and weight rows that are not 16-byte aligned
// (the warp-per-row kernel, GEMV and large T), and f16 activations past f16's range (rows scaled by a power
// of two). Activations are rounded once to 16 bits: the NMSE bound is the 16-bit GEMM's.
void test_gemm16(backend & be) {
    device dv{be};
    struct gcase {
        int64_t              N, K;
        std::vector<int64_t> Ts;
    };
    const gcase cases[] = {{77, 1024, {9, 16, 17, 32, 33, 63, 64, 65, 128, 300, 1030}},
                           {300, 256, {100, 1030}},
                           {131, 4096, {1, 8, 9, 65, 300}},
                           {200, 16384, {1, 9, 64}},
                           {96, 1000, {24, 129}},
                           {12801, 136, {260}},
                           {4353, 72, {1100}}};
    for (dtype wt : {dtype::bf16, dtype::f16}) {
        for (const gcase & c : cases) {
            const auto        w = raw(rnd(size_t(c.N * c.K)), wt);
            const tensor_desc hw = plain(wt, c.N, c.K, w.data());
            const tensor_desc dw = plain(wt, c.N, c.K, dv.put(w));
            for (int64_t T : c.Ts) {
                const auto         x = rnd(size_t(T * c.K));
                std::vector<float> yr(size_t(T * c.N));
                ref_matmul(yr.data(), x.data(), hw, T);
                float * xd = dv.put(x);
                float * yd = dv.zeros(yr.size()), * y2 = dv.zeros(yr.size());
                be.matmul(yd, xd, dw, T);
                const auto        a = dv.get(yd, yr.size());
                const bool        split = c.K == 16384 && T > 8;
                const std::string name = "matmul " + std::string(dtype_name(wt)) + " N=" + std::to_string(c.N) +
                                         " K=" + std::to_string(c.K) + " T=" + std::to_string(T) +
                                         (T <= 8 ? " (gemv)" : split ? " (mma gemm, split-K)" : " (mma gemm)");
                expect(name, yr, a, T > 8 ? 2e-5 : 1e-10);
                if (!split) continue;
                be.matmul(y2, xd, dw, T);
                const auto b = dv.get(y2, yr.size());
                CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0, "%s: two calls bit-identical",
                      name.c_str());
            }
        }
    }
    {
        const int64_t     N = 73448, K = 1024, T = 72;  // the MiniCPM4-0.5B LM head (tied embeddings, bf16)
        const auto        w = raw(rnd(size_t(N * K)), dtype::bf16);
        const tensor_desc hw = plain(dtype::bf16, N, K, w.data());
        const auto        x = rnd(size_t(T * K));
        std::vector<float> yr(size_t(T * N));
        ref_matmul(yr.data(), x.data(), hw, T);
        float * yd = dv.zeros(yr.size());
        be.matmul(yd, dv.put(x), plain(dtype::bf16, N, K, dv.put(w)), T);
        expect("matmul bf16 LM head N=73448 K=1024 T=72 (mma gemm)", yr, dv.get(yd, yr.size()), 2e-5);
    }
    // K = 100 (rows not whole 16-byte chunks), and K = 1024 rows starting 2 bytes past a 16-byte boundary.
    for (dtype wt : {dtype::bf16, dtype::f16}) {
        for (const bool shifted : {false, true}) {
            const int64_t     N = 40, K = shifted ? 1024 : 100, off = shifted ? 2 : 0;
            const auto        w = raw(rnd(size_t(N * K + 1)), wt);
            const tensor_desc hw = plain(wt, N, K, w.data() + off);
            const tensor_desc dw = plain(wt, N, K, dv.put(w) + off);
            for (int64_t T : {1, 17}) {
                const auto         x = rnd(size_t(T * K));
                std::vector<float> yr(size_t(T * N));
                ref_matmul(yr.data(), x.data(), hw, T);
                float * yd = dv.zeros(yr.size());
                be.matmul(yd, dv.put(x), dw, T);
                expect("matmul " + std::string(dtype_name(wt)) + " N=40 K=" + std::to_string(K) +
                           (shifted ? " rows 2 bytes off 16-byte alignment" : "") + " T=" + std::to_string(T) +
                           " (warp-per-row kernel)", yr, dv.get(yd, yr.size()), 1e-10);
            }
        }
    }
    // Activations past f16's range in some rows (7e4, 1e5 and 3e9 beside values in [-1, 1]): those rows are
    // scaled by a power of two on their way to f16, the others are not; bf16 alike, for comparison. NMSE per
    // row (the worst printed), so that the rows of large values do not hide the others.
    for (dtype wt : {dtype::f16, dtype::bf16}) {
        const int64_t     N = 64, K = 1024, T = 17;
        const auto        w = raw(rnd(size_t(N * K)), wt);
        const tensor_desc hw = plain(wt, N, K, w.data());
        auto              x = rnd(size_t(T * K));
        x[size_t(3 * K + 5)] = 1e5f;
        x[size_t(10 * K + 700)] = -3e9f;
        x[size_t(16 * K + 1023)] = 70000.0f;
        std::vector<float> yr(size_t(T * N));
        ref_matmul(yr.data(), x.data(), hw, T);
        float * yd = dv.zeros(yr.size());
        be.matmul(yd, dv.put(x), plain(wt, N, K, dv.put(w)), T);
        const auto yg = dv.get(yd, yr.size());
        double     worst = -1.0;
        int64_t    at = 0;
        for (int64_t t = 0; t < T; ++t) {
            const std::vector<float> r(yr.begin() + t * N, yr.begin() + (t + 1) * N);
            const std::vector<float> g(yg.begin() + t * N, yg.begin() + (t + 1) * N);
            const double e = nmse(r, g);
            if (e > worst) worst = e, at = t;
        }
        CHECK(worst <= 2e-5,
              "matmul %s N=64 K=1024 T=17 activations up to 3e9 (mma gemm): worst row nmse %.3e (row %lld, thr 2e-05)",
              dtype_name(wt), worst, (long long) at);
    }
}

// The sm_90 wgmma GEMM (sm90/gemm-wgmma.cu), on a compute capability 9.0 device only (skipped with the reason
// elsewhere): the start-up probe's verdict, then MiniCPM4 prefill shapes (0.5B and 8B projections, odd N, the
// LM head; T = 128 .. 2048, T not a multiple of the 128-row tile; T = 128 on N = 4096 splits K) against the plain
// CPU op on sampled rows (the reference is too slow for all of them), and against the mma.sync GEMM on every
// output. wgmma and mma.sync add the same rounded products in another order: close (nmse <= 1e-10), not expected
// bit-identical; the share of identical outputs is printed.
void test_gemm_sm90(backend & be) {
#if MINICPM_CUDA
    const cuda::wgmma_state st = cuda::gemm16_wgmma_state();
    if (!st.sm90) {
        std::printf("SKIP gemm-sm90: the device is not compute capability 9.0; the wgmma gemm runs only there\n");
        return;
    }
    std::printf("gemm-sm90: start-up probe:%s\n", st.report.c_str());
    CHECK(st.built, "gemm-sm90: the library holds the sm_90a wgmma kernel");
    CHECK(st.enabled, "gemm-sm90: the start-up probe passed (wgmma vs mma.sync bit-identical on its exact inputs)");
    if (!st.enabled) return;
    struct scase {
        const char *         name;
        dtype                wt;
        int64_t              N, K;
        std::vector<int64_t> Ts;
    };
    const scase cases[] = {{"0.5B q/o", dtype::bf16, 1024, 1024, {128, 300, 2048}},
                           {"0.5B gate/up", dtype::f16, 4096, 1024, {129, 512}},
                           {"0.5B down", dtype::bf16, 1024, 4096, {512}},
                           {"odd N, K tail", dtype::f16, 1001, 1000, {255, 640}},
                           {"odd N, K tail", dtype::bf16, 333, 72, {130}},
                           {"8B q/o", dtype::bf16, 4096, 4096, {128, 512, 2048}},
                           {"8B gate/up", dtype::bf16, 16384, 4096, {512}},
                           {"8B down", dtype::f16, 4096, 16384, {256}},
                           {"0.5B LM head", dtype::bf16, 73448, 1024, {128, 300}}};
    for (const scase & c : cases) {
        device            dv{be};
        const auto        w = raw(rnd(size_t(c.N * c.K)), c.wt);
        const tensor_desc hw = plain(c.wt, c.N, c.K, w.data());
        const tensor_desc dw = plain(c.wt, c.N, c.K, dv.put(w));
        for (int64_t T : c.Ts) {
            const auto x = rnd(size_t(T * c.K));
            float *    xd = dv.put(x);
            float *    ya = dv.zeros(size_t(T * c.N)), * yb = dv.zeros(size_t(T * c.N));
            be.matmul(ya, xd, dw, T);
            force_mma_sync(true);
            be.matmul(yb, xd, dw, T);
            force_mma_sync(false);
            const auto a = dv.get(ya, size_t(T * c.N)), b = dv.get(yb, size_t(T * c.N));
            // Sampled rows: both ends of the first and last row tiles and the middle.
            std::vector<int64_t> rows = {0, 1, 63, 64, 127, T / 2, T - 2, T - 1};
            std::sort(rows.begin(), rows.end());
            rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
            std::vector<float> xs, ref(rows.size() * size_t(c.N)), got;
            for (int64_t r : rows) {
                xs.insert(xs.end(), x.begin() + r * c.K, x.begin() + (r + 1) * c.K);
                got.insert(got.end(), a.begin() + r * c.N, a.begin() + (r + 1) * c.N);
            }
            ref_matmul(ref.data(), xs.data(), hw, int64_t(rows.size()));
            const std::string name = "matmul " + std::string(dtype_name(c.wt)) + " " + c.name + " N=" +
                                     std::to_string(c.N) + " K=" + std::to_string(c.K) + " T=" + std::to_string(T);
            expect(name + " (wgmma gemm, " + std::to_string(rows.size()) + " rows vs CPU)", ref, got, 2e-5);
            size_t same = 0;
            for (size_t i = 0; i < a.size(); ++i) same += std::memcmp(&a[i], &b[i], sizeof(float)) == 0;
            CHECK(nmse(b, a) <= 1e-10, "%s wgmma vs mma.sync: nmse %.3e (thr 1e-10), %zu of %zu outputs bit-identical "
                  "(not expected of all: another order of the same sums)", name.c_str(), nmse(b, a), same, a.size());
        }
    }
#endif
}

// A random q8 / q4 tensor in the engine's layout, on the host and on the device (group >= K: one per row).
struct qweights {
    std::vector<uint8_t> q, sc, z;
    tensor_desc          host, dev;
};

qweights make_qweights(device & dv, dtype type, dtype scale_type, int64_t N, int64_t K, int64_t group, bool zeros) {
    qweights w;
    const int64_t G = (K + group - 1) / group;
    w.q.resize(type == dtype::q8 ? size_t(N * K) : size_t(N * K / 2));
    for (auto & b : w.q) b = uint8_t(g_rng());
    w.sc = raw(rnd(size_t(N * G), 0.01f, 0.05f), scale_type);
    w.z.resize(size_t(N * G));
    for (auto & b : w.z) b = uint8_t(g_rng() % 16);
    w.host = plain(type, N, K, w.q.data());
    w.host.group_size = int32_t(group);
    w.host.scale_type = scale_type;
    w.host.scales = w.sc.data();
    if (zeros) w.host.zeros = w.z.data();
    w.dev = w.host;
    w.dev.data = dv.put(w.q);
    w.dev.scales = dv.put(w.sc);
    if (zeros) w.dev.zeros = dv.put(w.z);
    return w;
}

// The quantized tensor-core GEMM (mma.sync on weights dequantized in registers) against the plain CPU op, over
// odd N (not a multiple of the 128-row tile), K = 64 m, every group size and scale type, zero points or none,
// and T across the GEMV / GEMM switch and every tile shape (16, 32, 64 rows); then the LM head shape.
// Activations are rounded to bf16 once, weights are exact: the NMSE bound is the bf16 GEMM's.
void test_qgemm(backend & be) {
    device dv{be};
    const qcase cases[] = {{dtype::q8, dtype::f16, 77, 64, 32, false},    {dtype::q8, dtype::bf16, 200, 192, 64, false},
                           {dtype::q8, dtype::f32, 131, 512, 128, false}, {dtype::q8, dtype::f16, 129, 320, 320, false},
                           {dtype::q4, dtype::f16, 77, 128, 32, true},    {dtype::q4, dtype::bf16, 250, 576, 64, false},
                           {dtype::q4, dtype::f16, 300, 1024, 128, true}, {dtype::q4, dtype::f32, 65, 192, 192, true},
                           {dtype::q4, dtype::f16, 96, 320, 128, true}};
    for (const qcase & qc : cases) {
        const qweights w = make_qweights(dv, qc.type, qc.scale_type, qc.N, qc.K, qc.group, qc.zeros);
        for (int64_t T : {1, 7, 8, 9, 16, 17, 31, 32, 33, 64, 65, 100, 300}) {
            const auto x = rnd(size_t(T * qc.K));
            std::vector<float> yr(size_t(T * qc.N));
            ref_matmul(yr.data(), x.data(), w.host, T);
            float * yd = dv.zeros(yr.size());
            be.matmul(yd, dv.put(x), w.dev, T);
            const bool tc = T > 8;
            expect(std::string("matmul ") + dtype_name(qc.type) + " scales " + dtype_name(qc.scale_type) +
                       " N=" + std::to_string(qc.N) + " K=" + std::to_string(qc.K) + " group " +
                       (qc.group >= qc.K ? std::string("per-row") : std::to_string(qc.group)) +
                       (qc.zeros ? " zeros" : "") + " T=" + std::to_string(T) + (tc ? " (mma q-gemm)" : " (gemv)"),
                   yr, dv.get(yd, yr.size()), tc ? 2e-5 : 1e-10);
        }
    }
    // The MiniCPM4-0.5B LM head (73448 rows, 1024 columns), q4 groups of 128 with zero points and q8 per row.
    for (dtype t : {dtype::q4, dtype::q8}) {
        const int64_t N = 73448, K = 1024, T = t == dtype::q4 ? 20 : 40;
        const qweights w = make_qweights(dv, t, dtype::f16, N, K, t == dtype::q4 ? 128 : K, t == dtype::q4);
        const auto x = rnd(size_t(T * K));
        std::vector<float> yr(size_t(T * N));
        ref_matmul(yr.data(), x.data(), w.host, T);
        float * yd = dv.zeros(yr.size());
        be.matmul(yd, dv.put(x), w.dev, T);
        expect(std::string("matmul ") + dtype_name(t) + " LM head N=73448 K=1024 T=" + std::to_string(T) +
                   " (mma q-gemm)", yr, dv.get(yd, yr.size()), 2e-5);
    }
}

// A g_idx for K columns in groups of `group`: each group holds group columns (the last one the rest), the
// columns of a group scattered over K (GPTQ act-order).
std::vector<int32_t> act_order_g_idx(int64_t K, int64_t group) {
    std::vector<int32_t> g(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) g[size_t(k)] = int32_t(k / group);
    std::shuffle(g.begin(), g.end(), g_rng);
    return g;
}

// GPTQ act-order (a g_idx permutation): the backend's prepared copy (columns sorted by group) against the plain
// CPU op on the permuted weight, through the packed GEMV (T <= 8: gathered f32 activations, the NMSE bound of
// the group-ordered GEMV) and the quantized GEMM (bf16 activations: its bound). The copy is read alone: the
// descriptor's stored rows are dropped as the model drops them. Then a g_idx with a group index outside the
// scales (refused, _INVALID_ARGUMENT) and one whose groups are uneven (no copy: the dequantizing kernel).
void test_act_order(backend & be) {
    device dv{be};
    const qcase cases[] = {{dtype::q4, dtype::f16, 200, 1024, 32, true},  {dtype::q4, dtype::f16, 136, 2048, 128, false},
                           {dtype::q4, dtype::bf16, 77, 640, 128, true},  {dtype::q8, dtype::f16, 200, 1024, 32, false},
                           {dtype::q8, dtype::f16, 96, 2048, 128, false}, {dtype::q8, dtype::f32, 130, 576, 128, false}};
    for (const qcase & ac : cases) {
        qweights   w = make_qweights(dv, ac.type, ac.scale_type, ac.N, ac.K, ac.group, ac.zeros);
        const auto g_idx = act_order_g_idx(ac.K, ac.group);
        w.host.perm = g_idx.data();
        w.dev.perm = dv.put(g_idx);
        dv.held.push_back(be.prepare_weights(w.dev));
        const std::string name = std::string("matmul act-order ") + dtype_name(ac.type) + " scales " +
                                 dtype_name(ac.scale_type) + " N=" + std::to_string(ac.N) + " K=" +
                                 std::to_string(ac.K) + " group " + std::to_string(ac.group) + (ac.zeros ? " zeros" : "");
        CHECK(dv.held.back().data != nullptr, "%s: the backend prepared a reordered copy", name.c_str());
        if (dv.held.back().data == nullptr) continue;
        tensor_desc dw = w.dev;
        dw.packed = dv.held.back().data;
        dw.data = nullptr;
        for (int64_t T : {1, 5, 9, 64, 300}) {
            const auto x = rnd(size_t(T * ac.K));
            std::vector<float> yr(size_t(T * ac.N));
            ref_matmul(yr.data(), x.data(), w.host, T);
            float * yd = dv.zeros(yr.size());
            be.matmul(yd, dv.put(x), dw, T);
            expect(name + " T=" + std::to_string(T) + (T > 8 ? " (mma q-gemm)" : " (gemv)"), yr, dv.get(yd, yr.size()),
                   T > 8 ? 2e-5 : 1e-10);
        }
    }
    const int64_t N = 64, K = 512, group = 128;
    qweights      w = make_qweights(dv, dtype::q4, dtype::f16, N, K, group, true);
    auto          bad = act_order_g_idx(K, group);
    bad[77] = int32_t(K / group);
    w.dev.perm = dv.put(bad);
    int32_t     status = MINICPM_STATUS_OK;
    std::string why;
    try {
        dv.held.push_back(be.prepare_weights(w.dev));
    } catch (const error & e) {
        status = e.status();
        why = e.what();
    }
    CHECK(status == MINICPM_STATUS_INVALID_ARGUMENT && why.find("g_idx[77]") != std::string::npos,
          "act-order g_idx with a group outside the scales refused: status %d (%s)", status, why.c_str());
    auto uneven = act_order_g_idx(K, group);
    std::replace(uneven.begin(), uneven.end(), 3, 2);  // group 2 holds 256 columns, group 3 none
    w.host.perm = uneven.data();
    w.dev.perm = dv.put(uneven);
    const buffer none = be.prepare_weights(w.dev);
    CHECK(none.data == nullptr, "act-order g_idx with uneven groups: no reordered copy (dequantizing kernel)");
    for (int64_t T : {1, 17}) {
        const auto x = rnd(size_t(T * K));
        std::vector<float> yr(size_t(T * N));
        ref_matmul(yr.data(), x.data(), w.host, T);
        float * yd = dv.zeros(yr.size());
        be.matmul(yd, dv.put(x), w.dev, T);
        expect("matmul q4 g_idx with uneven groups T=" + std::to_string(T), yr, dv.get(yd, yr.size()), 1e-10);
    }
}

// Split-K of the quantized GEMM on the 8B MLP down projection (N 4096, K 16384): at T = 9 .. 64 its output tiles
// are fewer than the SMs of a data-centre GPU (32 or 64 blocks; 132 SMs on an H200), so K is cut into spans whose
// partials are added in a fixed order. Against the plain op, then the same call twice: bit-identical.
void test_qgemm_split(backend & be) {
    device dv{be};
    const int64_t N = 4096, K = 16384;
    for (dtype t : {dtype::q4, dtype::q8}) {
        const int64_t  group = t == dtype::q4 ? 128 : 32;
        const qweights w = make_qweights(dv, t, dtype::f16, N, K, group, t == dtype::q4);
        for (int64_t T : t == dtype::q4 ? std::vector<int64_t>{9, 24, 64} : std::vector<int64_t>{16, 40}) {
            const auto x = rnd(size_t(T * K));
            std::vector<float> yr(size_t(T * N));
            ref_matmul(yr.data(), x.data(), w.host, T);
            float * xd = dv.put(x);
            float * yd = dv.zeros(yr.size()), * y2 = dv.zeros(yr.size());
            be.matmul(yd, xd, w.dev, T);
            be.matmul(y2, xd, w.dev, T);
            const auto a = dv.get(yd, yr.size()), b = dv.get(y2, yr.size());
            const std::string name = std::string("matmul split-K ") + dtype_name(t) + " 8B down N=4096 K=16384 group " +
                                     std::to_string(group) + " T=" + std::to_string(T);
            expect(name, yr, a, 2e-5);
            CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0, "%s: two calls bit-identical",
                  name.c_str());
        }
    }
}

void test_kv_attention(backend & be) {
    struct tcase {
        int32_t nh, nkv, hd;
        std::vector<std::pair<int32_t, int32_t>> segs;  // (n_past, n_rows)
        bool tree;
        bool gaps = false;  // a batch row before each segment that no segment names: the ops leave it alone
    };
    // The first four take the one-block-per-head kernel (many rows or a short context); the others, at most
    // 64 rows with a context of 256 slots or more, the split-K kernel (GQA 8: 16/2 heads, GQA 16: 32/2), with
    // rows whose own context is short beside long ones (partitions past a row's context are empty). Then
    // segments of no rows over a long context (alone: a batch of no rows), and two cases that leave rows out
    // (as InfLLM v2's dense op runs over some rows only): their outputs and KV slots stay as they were.
    const tcase cases[] = {{16, 2, 64, {{0, 70}, {63, 3}, {130, 1}}, false},
                           {32, 2, 128, {{0, 17}, {64, 2}, {65, 65}}, false},
                           {16, 2, 64, {{61, 10}}, true},
                           {6, 3, 48, {{1, 5}, {127, 1}}, false},
                           {16, 2, 64, {{255, 1}, {5, 1}, {3000, 1}, {37, 1}}, false},
                           {32, 2, 128, {{2047, 1}, {5000, 2}, {0, 1}}, false},
                           {16, 2, 64, {{700, 10}}, true},
                           {32, 2, 128, {{300, 1}}, false},
                           {16, 2, 64, {{4000, 1}}, false},
                           {12, 3, 64, {{640, 4}, {70, 1}}, false},
                           {16, 2, 64, {{300, 0}, {5, 1}}, false},
                           {16, 2, 64, {{300, 0}}, false},
                           {16, 2, 64, {{0, 20}, {100, 3}}, false, true},
                           {16, 2, 64, {{300, 1}, {1000, 2}}, false, true}};
    for (const tcase & c : cases) {
        for (dtype kvt : {dtype::f32, dtype::bf16, dtype::f16}) {
            device dv{be};
            int32_t nb = 0, T = 0;
            for (auto & s : c.segs) {
                nb += (s.first + s.second + 63) / 64;
                T += s.second + (c.gaps ? 1 : 0);
            }
            std::vector<int32_t> order(static_cast<size_t>(nb));
            for (int32_t i = 0; i < nb; ++i) order[size_t(i)] = nb - 1 - i;
            std::vector<std::vector<int32_t>> tables;
            std::vector<uint64_t> mask;
            int32_t next = 0;
            for (auto & s : c.segs) {
                const int32_t k = (s.first + s.second + 63) / 64;
                tables.emplace_back(order.begin() + next, order.begin() + next + k);
                next += k;
            }
            if (c.tree) {  // node j's parent is (j - 1) / 2: a binary tree
                mask.assign(size_t(c.segs[0].second), 0);
                for (int32_t j = 1; j < c.segs[0].second; ++j)
                    mask[size_t(j)] = mask[size_t((j - 1) / 2)] | (uint64_t(1) << ((j - 1) / 2));
            }
            std::vector<kv_segment> segs;
            int32_t row = 0;
            for (size_t i = 0; i < c.segs.size(); ++i) {
                row += c.gaps ? 1 : 0;
                segs.push_back({row, c.segs[i].second, c.segs[i].first, tables[i].data(), c.tree ? mask.data() : nullptr});
                row += c.segs[i].second;
            }
            const size_t pool = size_t(nb) * c.nkv * 64 * c.hd;
            const auto k0 = raw(rnd(pool), kvt), v0 = raw(rnd(pool), kvt);
            std::vector<uint8_t> kh = k0, vh = v0;
            const kv_layer hk = {kvt, kh.data(), vh.data(), c.nkv, c.hd};
            const auto k = rnd(size_t(T) * c.nkv * c.hd), v = rnd(size_t(T) * c.nkv * c.hd);
            const auto q = rnd(size_t(T) * c.nh * c.hd, -2, 2);
            ref_kv_store(hk, k.data(), v.data(), segs.data(), int32_t(segs.size()));
            std::vector<float> outr(q.size());
            const float scale = 1.0f / std::sqrt(float(c.hd));
            ref_attention(outr.data(), q.data(), hk, segs.data(), int32_t(segs.size()), c.nh, scale);

            uint8_t * kd = dv.put(k0);
            uint8_t * vd = dv.put(v0);
            const kv_layer dk = {kvt, kd, vd, c.nkv, c.hd};
            be.kv_store(dk, dv.put(k), dv.put(v), segs.data(), int32_t(segs.size()));
            float * od = dv.zeros(q.size());
            be.attention(od, dv.put(q), dk, segs.data(), int32_t(segs.size()), c.nh, scale);
            const bool same = dv.get(kd, kh.size()) == kh && dv.get(vd, vh.size()) == vh;
            CHECK(same, "kv_store kv=%s nh=%d hd=%d%s%s: pools %s", dtype_name(kvt), c.nh, c.hd, c.tree ? " tree" : "",
                  c.gaps ? " rows left out" : "", same ? "byte-identical" : "DIFFER");
            int32_t ctx = 0;
            for (auto & s : c.segs) ctx = std::max(ctx, s.first + s.second);
            expect(std::string("attention kv=") + dtype_name(kvt) + " nh=" + std::to_string(c.nh) + " nkv=" +
                       std::to_string(c.nkv) + " hd=" + std::to_string(c.hd) + " rows=" + std::to_string(T) +
                       " ctx=" + std::to_string(ctx) + (c.tree ? " tree" : "") + (c.gaps ? " rows left out" : ""),
                   outr, dv.get(od, outr.size()), 1e-10);
        }
    }
}

// InfLLM v2 vs the reference ops. Compression: the device builds the C1/C2 caches in two calls (the committed
// slots, then the new rows, as decode does) and they must equal the reference's one-call caches bit for bit.
// Selection: the selected block sets of every (row, KV head) must be identical; attention output within NMSE.
// Small top-k / window / dense_len make short contexts select a strict subset of their blocks; the last cases
// run the 8B sparse_config on the 8B attention shape past dense_len.
struct sparse_case {
    int32_t nh, nkv, hd;
    std::vector<std::pair<int32_t, int32_t>> segs;  // (n_past, n_rows)
    dtype kvt;
    sparse_attn_params sp;
};

sparse_attn_params small_sparse(sparse_variant v, sparse_lse l, int32_t ks = 32, int32_t st = 16) {
    sparse_attn_params sp;
    sp.kernel_size = ks;
    sp.kernel_stride = st;
    sp.window_blocks = 2;
    sp.topk = 4;
    sp.dense_len = 300;
    sp.variant = v;
    sp.lse = l;
    return sp;
}

sparse_attn_params sparse_8b(sparse_variant v, sparse_lse l) {
    sparse_attn_params sp;
    sp.variant = v;
    sp.lse = l;
    return sp;
}

void test_sparse_case(backend & be, const sparse_case & c) {
    device  dv{be};
    int32_t nb = 0, T = 0, max_nb = 0;
    for (auto & s : c.segs) {
        nb += (s.first + s.second + 63) / 64;
        T += s.second;
        max_nb = std::max(max_nb, (s.first + s.second + 63) / 64);
    }
    std::vector<int32_t> order(static_cast<size_t>(nb));
    for (int32_t i = 0; i < nb; ++i) order[size_t(i)] = nb - 1 - i;  // tables out of order
    std::vector<kv_segment> segs, past;
    std::vector<int32_t>    from, zero;
    int32_t                 row = 0, next = 0;
    for (auto & s : c.segs) {
        segs.push_back({row, s.second, s.first, order.data() + next, nullptr});
        past.push_back({0, s.first, 0, order.data() + next, nullptr});
        from.push_back(s.first);
        zero.push_back(0);
        row += s.second;
        next += (s.first + s.second + 63) / 64;
    }
    const int32_t ns = int32_t(segs.size());
    const size_t  pool = size_t(nb) * c.nkv * 64 * c.hd;
    auto          kh = raw(rnd(pool), c.kvt), vh = raw(rnd(pool), c.kvt);
    const auto    q = rnd(size_t(T) * c.nh * c.hd, -2, 2);
    const kv_layer hk = {c.kvt, kh.data(), vh.data(), c.nkv, c.hd};
    const kv_compressed proto = make_kv_compressed(c.sp, c.nkv, c.hd, nullptr);
    std::vector<float>  side_h(size_t(nb) * size_t(proto.block_floats), 0.0f);
    const kv_compressed cch = make_kv_compressed(c.sp, c.nkv, c.hd, side_h.data());
    ref_kv_compress(cch, hk, segs.data(), zero.data(), ns);
    const int32_t         words = (max_nb + 63) / 64;
    std::vector<uint64_t> sel_r(size_t(T) * c.nkv * words), sel_d(sel_r.size(), ~uint64_t(0));
    std::vector<float>    out_r(q.size());
    const float           scale = 1.0f / std::sqrt(float(c.hd));
    ref_sparse_attention(out_r.data(), q.data(), hk, cch, segs.data(), ns, c.nh, scale, c.sp, sel_r.data(), words);

    const kv_layer      dk = {c.kvt, dv.put(kh), dv.put(vh), c.nkv, c.hd};
    float *             side_d = dv.zeros(side_h.size());
    const kv_compressed ccd = make_kv_compressed(c.sp, c.nkv, c.hd, side_d);
    be.kv_compress(ccd, dk, past.data(), zero.data(), ns);
    be.kv_compress(ccd, dk, segs.data(), from.data(), ns);
    float * od = dv.zeros(q.size());
    be.sparse_attention(od, dv.put(q), dk, ccd, segs.data(), ns, c.nh, scale, c.sp, sel_d.data(), words);

    std::string name = std::string(c.sp.variant == sparse_variant::hf ? "hf" : "v2") +
                       (c.sp.lse == sparse_lse::c1 ? " lse=c1" : " lse=c2") + " kv=" + dtype_name(c.kvt) +
                       " nh=" + std::to_string(c.nh) + " nkv=" + std::to_string(c.nkv) + " hd=" + std::to_string(c.hd) +
                       " ks/st=" + std::to_string(c.sp.kernel_size) + "/" + std::to_string(c.sp.kernel_stride) + " segs";
    for (auto & s : c.segs) name += " " + std::to_string(s.first) + "+" + std::to_string(s.second);
    const std::vector<float> side_got = dv.get(side_d, side_h.size());
    double max_diff = 0;
    for (size_t i = 0; i < side_h.size(); ++i) max_diff = std::max(max_diff, std::fabs(double(side_got[i]) - side_h[i]));
    CHECK(side_got == side_h, "kv_compress %s: C1/C2 caches %s (max |diff| %.3e)", name.c_str(),
          side_got == side_h ? "bit-identical" : "DIFFER", max_diff);
    // Selection: every (row, KV head) set, and how many of them are a strict subset of the causal blocks.
    int32_t differ = 0, strict = 0;
    int64_t n_sel = 0;
    for (int32_t s = 0, r0 = 0; s < ns; r0 += segs[size_t(s)].n_rows, ++s)
        for (int32_t j = 0; j < segs[size_t(s)].n_rows; ++j)
            for (int32_t g = 0; g < c.nkv; ++g) {
                const size_t at = (size_t(r0 + j) * c.nkv + g) * words;
                int32_t      cnt = 0;
                for (int32_t w = 0; w < words; ++w) {
                    differ += sel_r[at + w] != sel_d[at + w];
                    cnt += __builtin_popcountll(sel_r[at + w]);
                }
                n_sel += cnt;
                strict += cnt < (segs[size_t(s)].n_past + j) / 64 + 1;
            }
    CHECK(differ == 0, "sparse select %s: %d of %d (row, KV head) block sets differ; %lld blocks selected, %d sets sparse",
          name.c_str(), differ, T * c.nkv, (long long) n_sel, strict);
    expect("sparse attention " + name, out_r, dv.get(od, out_r.size()), 1e-10);
}

void test_sparse(backend & be) {
    using V = sparse_variant;
    using L = sparse_lse;
    const sparse_case cases[] = {
        {16, 2, 64, {{1500, 1}, {2900, 1}, {100, 1}, {299, 1}}, dtype::f32, small_sparse(V::hf, L::c1)},
        {16, 2, 64, {{1500, 1}, {2900, 1}, {100, 1}, {299, 1}}, dtype::bf16, small_sparse(V::v2, L::c2)},
        {16, 2, 64, {{1500, 1}, {2900, 1}}, dtype::f16, small_sparse(V::hf, L::c2)},
        {16, 2, 64, {{1500, 1}, {2900, 1}}, dtype::f32, small_sparse(V::v2, L::c1)},
        {32, 2, 128, {{0, 700}, {1000, 90}}, dtype::bf16, small_sparse(V::hf, L::c1)},  // prefill, chunked prefill
        {32, 2, 128, {{0, 700}, {1000, 90}}, dtype::bf16, small_sparse(V::v2, L::c2)},
        {4, 4, 32, {{2000, 3}, {640, 64}}, dtype::f16, small_sparse(V::v2, L::c1)},  // G = 1
        {6, 2, 48, {{1200, 5}, {63, 2}}, dtype::f32, small_sparse(V::hf, L::c2)},    // G = 3
        {8, 2, 64, {{1800, 2}}, dtype::f32, small_sparse(V::hf, L::c1, 48, 16)},     // other kernel geometries
        {8, 2, 64, {{1800, 2}}, dtype::f32, small_sparse(V::v2, L::c2, 64, 32)},
        {32, 2, 128, {{10000, 1}, {8190, 2}, {12287, 1}}, dtype::bf16, sparse_8b(V::hf, L::c1)},  // 8B, past dense_len
        {32, 2, 128, {{10000, 1}, {8190, 2}, {12287, 1}}, dtype::bf16, sparse_8b(V::v2, L::c2)},
    };
    for (const sparse_case & c : cases) test_sparse_case(be, c);
}

// Token trees vs the reference op (cpu/ops-sparse.h, sparse_row_view): each tree row selects and attends on the
// sequence plain decoding holds after its ancestors, with the compressed kernels that end among them (tail
// kernels) computed for that row alone. The caches cover the committed slots only and every float past them is
// NaN on both sides, so a kernel read from the caches instead of the row's own shows up as a NaN. One batch:
// several trees (n_past straddling dense_len, 16-slot kernel ends, 64-slot block ends) and one plain decode row.
// A tree's rows below dense_len belong to the dense op: their output and selection must stay as they were.
struct sparse_tree_case {
    int32_t              nh, nkv, hd;
    std::vector<int32_t> trees;  // n_past of each tree
    int32_t              tree_rows, decode_past;
    dtype                kvt;
    sparse_attn_params   sp;
};

// Ancestor masks of an n-row tree: row 0 the root; a row's parent is mostly the row before it (deep chains,
// whose tail kernels complete inside them), else any earlier row (siblings).
std::vector<uint64_t> tree_masks(int32_t n) {
    std::vector<uint64_t> m(size_t(n), 0);
    for (int32_t j = 1; j < n; ++j) {
        const int32_t up = g_rng() % 3 == 0 ? int32_t(g_rng() % uint32_t(j)) : j - 1;
        m[size_t(j)] = m[size_t(up)] | uint64_t(1) << up;
    }
    return m;
}

void test_sparse_tree_case(backend & be, const sparse_tree_case & c) {
    device                dv{be};
    const int32_t         n_trees = int32_t(c.trees.size()), ns = n_trees + 1;
    std::vector<int32_t>  past(c.trees);
    past.push_back(c.decode_past);
    std::vector<std::vector<uint64_t>> masks;
    for (int32_t t = 0; t < n_trees; ++t) masks.push_back(tree_masks(c.tree_rows));
    int32_t nb = 0, max_nb = 0;
    for (int32_t s = 0; s < ns; ++s) {
        const int32_t rows = s < n_trees ? c.tree_rows : 1, n = (past[size_t(s)] + rows + 63) / 64;
        nb += n;
        max_nb = std::max(max_nb, n);
    }
    std::vector<int32_t> order(static_cast<size_t>(nb));
    for (int32_t i = 0; i < nb; ++i) order[size_t(i)] = i;
    std::shuffle(order.begin(), order.end(), g_rng);  // block tables out of order
    std::vector<kv_segment> segs, comp;
    std::vector<int32_t>    zero(size_t(ns), 0);
    int32_t                 T = 0;
    for (int32_t s = 0, next = 0; s < ns; ++s) {
        const bool    tree = s < n_trees;
        const int32_t rows = tree ? c.tree_rows : 1;
        segs.push_back({T, rows, past[size_t(s)], order.data() + next, tree ? masks[size_t(s)].data() : nullptr});
        comp.push_back({T, tree ? 0 : rows, past[size_t(s)], order.data() + next, nullptr});  // committed slots
        T += rows;
        next += (past[size_t(s)] + rows + 63) / 64;
    }
    const size_t       pool = size_t(nb) * c.nkv * 64 * c.hd;
    std::vector<float> kf = rnd(pool);
    // The trees' keys larger than the committed ones: the kernels ending among a row's ancestors then weigh in
    // each head's LSE by a different amount, so that leaving them out changes selections (uniform keys would
    // shift every head's LSE alike and leave the ranking as it is).
    for (int32_t s = 0; s < n_trees; ++s)
        for (int32_t t = past[size_t(s)]; t < past[size_t(s)] + c.tree_rows; ++t)
            for (int32_t h = 0; h < c.nkv; ++h)
                for (int32_t d = 0; d < c.hd; ++d)
                    kf[((size_t(segs[size_t(s)].blocks[t / 64]) * c.nkv + h) * 64 + t % 64) * c.hd + d] *= 16.0f;
    const auto kh = raw(kf, c.kvt), vh = raw(rnd(pool), c.kvt);
    const auto q = rnd(size_t(T) * c.nh * c.hd, -2, 2);
    const kv_layer      hk = {c.kvt, (void *) kh.data(), (void *) vh.data(), c.nkv, c.hd};
    const int64_t       side_floats = int64_t(nb) * make_kv_compressed(c.sp, c.nkv, c.hd, nullptr).block_floats;
    std::vector<float>  side_h(size_t(side_floats), NAN);
    const std::vector<float> side_0 = side_h;
    const kv_compressed cch = make_kv_compressed(c.sp, c.nkv, c.hd, side_h.data());
    ref_kv_compress(cch, hk, comp.data(), zero.data(), ns);
    const int32_t         words = (max_nb + 63) / 64;
    const uint64_t        fill = 0x5a5a5a5a5a5a5a5aull;  // selection words a row leaves alone keep it
    std::vector<uint64_t> sel_r(size_t(T) * c.nkv * words, fill), sel_d(sel_r.size(), fill);
    std::vector<float>    out_r(q.size(), NAN);
    const float           scale = 1.0f / std::sqrt(float(c.hd));
    ref_sparse_attention(out_r.data(), q.data(), hk, cch, segs.data(), ns, c.nh, scale, c.sp, sel_r.data(), words);

    const kv_layer      dk = {c.kvt, dv.put(kh), dv.put(vh), c.nkv, c.hd};
    float *             side_d = dv.put(side_0);
    const kv_compressed ccd = make_kv_compressed(c.sp, c.nkv, c.hd, side_d);
    be.kv_compress(ccd, dk, comp.data(), zero.data(), ns);
    float * od = dv.put(std::vector<float>(q.size(), NAN));
    be.sparse_attention(od, dv.put(q), dk, ccd, segs.data(), ns, c.nh, scale, c.sp, sel_d.data(), words);
    const std::vector<float> out_d = dv.get(od, q.size()), side_got = dv.get(side_d, side_h.size());

    // Per row: its p as plain decoding holds it, whether it is sparse, whether it has tail kernels.
    int32_t n_dense = 0, n_sparse = 0, n_tail = 0, max_depth = 0, untouched = 0;
    std::vector<float> ref_rows, got_rows;
    sparse_row_view    v;
    for (int32_t s = 0; s < ns; ++s)
        for (int32_t j = 0; j < segs[size_t(s)].n_rows; ++j) {
            sparse_row_view_of(v, segs[size_t(s)], j);
            const int32_t row = segs[size_t(s)].row_begin + j;
            const size_t  o = size_t(row) * c.nh * c.hd, n = size_t(c.nh) * c.hd;
            max_depth = std::max(max_depth, int32_t(v.tail.size()) - 1);
            if (segs[size_t(s)].mask != nullptr && v.p + 1 < c.sp.dense_len) {
                ++n_dense;
                bool same = true;  // NaN output, selection words still the fill
                for (size_t e = 0; e < n; ++e) same &= std::isnan(out_d[o + e]);
                for (size_t w = 0; w < size_t(c.nkv) * words; ++w) same &= sel_d[size_t(row) * c.nkv * words + w] == fill;
                untouched += same;
                continue;
            }
            ++n_sparse;
            n_tail += !v.tail.empty() && cch.c1.count(int64_t(v.p) + 1) > cch.c1.count(v.n_fixed);
            ref_rows.insert(ref_rows.end(), out_r.begin() + o, out_r.begin() + o + n);
            got_rows.insert(got_rows.end(), out_d.begin() + o, out_d.begin() + o + n);
        }
    int32_t differ = 0, strict = 0;
    for (int32_t r = 0; r < T; ++r)
        for (int32_t g = 0; g < c.nkv; ++g) {
            const size_t at = (size_t(r) * c.nkv + g) * words;
            differ += !std::equal(sel_r.begin() + at, sel_r.begin() + at + words, sel_d.begin() + at);
            int32_t cnt = 0, top = -1;
            for (int32_t w = 0; w < words && sel_r[at] != fill; ++w) {
                cnt += __builtin_popcountll(sel_r[at + w]);
                if (sel_r[at + w]) top = 64 * w + 63 - __builtin_clzll(sel_r[at + w]);
            }
            strict += sel_r[at] != fill && cnt < top + 1;
        }
    std::string name = std::string(c.sp.variant == sparse_variant::hf ? "hf" : "v2") +
                       (c.sp.lse == sparse_lse::c1 ? " lse=c1" : " lse=c2") + " kv=" + dtype_name(c.kvt) +
                       " nh=" + std::to_string(c.nh) + " nkv=" + std::to_string(c.nkv) + " hd=" + std::to_string(c.hd) +
                       " ks/st=" + std::to_string(c.sp.kernel_size) + "/" + std::to_string(c.sp.kernel_stride) +
                       " dense_len=" + std::to_string(c.sp.dense_len) + " trees " + std::to_string(c.tree_rows) + "@";
    for (int32_t t = 0; t < n_trees; ++t) name += (t ? "," : "") + std::to_string(c.trees[size_t(t)]);
    name += " +decode@" + std::to_string(c.decode_past);
    CHECK(std::memcmp(side_got.data(), side_h.data(), side_h.size() * sizeof(float)) == 0,
          "kv_compress %s: committed C1/C2 caches bit-identical, NaN past them untouched", name.c_str());
    CHECK(n_tail > 0 && n_dense > 0 && n_sparse > n_tail,
          "sparse tree rows %s: dense %d, sparse %d (%d with tail kernels), depth <= %d: every kind present",
          name.c_str(), n_dense, n_sparse, n_tail, max_depth);
    CHECK(untouched == n_dense, "sparse tree dense-op %s: %d of %d rows untouched (output and selection)",
          name.c_str(), untouched, n_dense);
    CHECK(differ == 0, "sparse tree select %s: %d of %d (row, KV head) block sets differ; %d sets sparse",
          name.c_str(), differ, T * c.nkv, strict);
    expect("sparse tree attention " + name, ref_rows, got_rows, 1e-10);
}

void test_sparse_trees(backend & be) {
    using V = sparse_variant;
    using L = sparse_lse;
    auto tree_sp = [](V v, L l) {  // test-sparse's tree geometry: dense_len 1700, 3 local blocks, top-k 6
        sparse_attn_params sp = small_sparse(v, l);
        sp.window_blocks = 3;
        sp.topk = 6;
        sp.dense_len = 1700;
        return sp;
    };
    // n_past 1690: straddles dense_len; 1711: a 16-slot kernel end and a 64-slot block end inside; 1727: starts on
    // a block's last slot; 1775: crosses a C2 kernel end (1791).
    const std::vector<int32_t> around = {1690, 1711, 1727, 1775};
    // The same data whatever ran before (a mutation that drops tail kernels fails every case); the later tests
    // draw what they drew before.
    const std::mt19937 before = g_rng;
    g_rng.seed(1212);
    const sparse_tree_case cases[] = {
        {16, 2, 64, around, 40, 2000, dtype::f32, tree_sp(V::hf, L::c1)},
        {32, 2, 128, around, 40, 2000, dtype::bf16, tree_sp(V::v2, L::c2)},
        {6, 2, 48, {290, 600, 639}, 24, 900, dtype::f16, small_sparse(V::hf, L::c2)},            // G = 3
        {8, 2, 64, {280, 300, 511}, 33, 700, dtype::f32, small_sparse(V::v2, L::c1, 64, 32)},     // ks/st 64/32
        {32, 2, 128, {8180, 8191, 9000}, 32, 12287, dtype::bf16, sparse_8b(V::hf, L::c1)},      // 8B config
    };
    for (const sparse_tree_case & c : cases) test_sparse_tree_case(be, c);
    g_rng = before;
}

// Device sampling vs engine/sampler.cpp (the specification). Greedy: the same token, exactly, on a full-size
// vocabulary with bias, penalties and ties. Sampled: the draws of many counters follow the host sampler's
// distribution (chi-square over the kept tokens, none drawn outside them), and one seed gives the same tokens.
sampler make_sampler(const minicpm_sampling_params & sp, int32_t V, const std::vector<int32_t> & prompt,
                     const std::vector<int32_t> & bias_ids, const std::vector<float> & bias_values) {
    return sampler(sp, V, {}, nullptr, 0, bias_ids.data(), bias_values.data(), int32_t(bias_ids.size()),
                   prompt.data(), int32_t(prompt.size()));
}

void test_sample_greedy(backend & be) {
    device dv{be};
    const int32_t V = 73448, R = 6;
    std::vector<float> logits = rnd(size_t(R) * V, -8, 8);
    for (int32_t r = 0; r < 2; ++r)  // rows of ties: logits on a grid of 1/4, several share the maximum
        for (int32_t i = 0; i < V; ++i) logits[size_t(r) * V + i] = std::round(logits[size_t(r) * V + i] * 4) / 4;
    std::vector<sample_row> rows(R);
    std::vector<sample_adjust> adjust;
    std::vector<int32_t> want(R);
    std::vector<float> want_lp(R);
    sampler_scratch sc;
    for (int32_t r = 0; r < R; ++r) {
        const float * row = logits.data() + size_t(r) * V;
        std::vector<int32_t> order(V);
        for (int32_t i = 0; i < V; ++i) order[size_t(i)] = i;
        std::partial_sort(order.begin(), order.begin() + 8, order.end(),
                          [&](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
        minicpm_sampling_params sp;
        default_sampling_params(sp);
        sp.temperature = 0.0f;
        sp.logprobs = 1;
        if (r % 2 == 1) {  // penalties on the prompt's tokens: the best ones, so the winner moves
            sp.repetition_penalty = 1.5f;
            sp.presence_penalty = 0.4f;
            sp.frequency_penalty = 0.3f;
        }
        const std::vector<int32_t> prompt = {order[0], order[1], order[1], order[5]};
        const std::vector<int32_t> bias_ids = {order[2], order[3], 17};
        const std::vector<float>   bias_values = {-INFINITY, r == 4 ? 0.05f : -0.02f, 0.5f};
        sampler smp = make_sampler(sp, V, prompt, bias_ids, bias_values);
        smp.accept(order[4]);
        if (!smp.device_row(rows[size_t(r)], adjust)) fail(MINICPM_STATUS_INTERNAL, "test: no device row");
        const sample_result res = smp.sample(row, sc);
        want[size_t(r)] = res.token;
        want_lp[size_t(r)] = res.logprob;
    }
    std::vector<sample_out> got(R);
    const bool ran = be.sample(dv.put(logits), V, rows.data(), R, adjust.data(), int32_t(adjust.size()), got.data());
    int32_t same = 0;
    float   lp_err = 0.0f;
    for (int32_t r = 0; r < R; ++r) {
        same += got[size_t(r)].token == want[size_t(r)];
        lp_err = std::max(lp_err, std::fabs(got[size_t(r)].logprob - want_lp[size_t(r)]));
    }
    CHECK(ran && same == R, "sample greedy V=%d: %d/%d tokens equal to the host sampler", V, same, R);
    CHECK(ran && lp_err < 1e-4f, "sample greedy logprob: max |diff| %.2e (thr 1e-4)", double(lp_err));
}

// Upper 1e-4 tail of chi-square with df degrees of freedom (Wilson-Hilferty).
double chi2_critical(int df) {
    const double z = 3.719, a = 2.0 / (9.0 * df);
    return df * std::pow(1.0 - a + z * std::sqrt(a), 3.0);
}

void test_sample_distribution(backend & be) {
    device dv{be};
    const int32_t V = 64, N = 40000;
    // Smooth logits, and logits on a grid of 1/2 where many tie (top-k and top-p then cut ties by id).
    std::vector<float> smooth = rnd(size_t(V), -3, 3), tied = smooth;
    for (float & x : tied) x = std::round(x * 2) / 2;
    std::vector<float> logits[2];
    for (int32_t i = 0; i < N; ++i) {
        logits[0].insert(logits[0].end(), smooth.begin(), smooth.end());
        logits[1].insert(logits[1].end(), tied.begin(), tied.end());
    }
    const float * dlogits[2] = {dv.put(logits[0]), dv.put(logits[1])};
    struct scase {
        const char * name;
        float        temp, top_p, min_p;
        int32_t      top_k;
        bool         penalties, ties;
    };
    const scase cases[] = {{"T=0.7 top_k=20", 0.7f, 1.0f, 0.0f, 20, false, false},
                           {"T=1 top_p=0.8", 1.0f, 0.8f, 0.0f, 0, false, false},
                           {"T=1.3 top_k=40 top_p=0.9 min_p=0.05 penalties bias", 1.3f, 0.9f, 0.05f, 40, true, false},
                           {"T=0.5 min_p=0.2", 0.5f, 1.0f, 0.2f, 0, false, false},
                           {"T=1 top_k=12 ties", 1.0f, 1.0f, 0.0f, 12, false, true},
                           {"T=0.8 top_p=0.7 ties", 0.8f, 0.7f, 0.0f, 0, false, true}};
    for (const scase & c : cases) {
        const std::vector<float> & one = c.ties ? tied : smooth;
        minicpm_sampling_params sp;
        default_sampling_params(sp);
        sp.temperature = c.temp;
        sp.top_p = c.top_p;
        sp.min_p = c.min_p;
        sp.top_k = c.top_k;
        sp.seed = 1234;
        std::vector<int32_t> prompt, bias_ids;
        std::vector<float> bias_values;
        if (c.penalties) {
            sp.repetition_penalty = 1.2f;
            sp.presence_penalty = 0.3f;
            sp.frequency_penalty = 0.1f;
            prompt = {1, 2, 3, 3, 9};
            bias_ids = {5, 7};
            bias_values = {2.0f, -INFINITY};
        }
        sampler smp = make_sampler(sp, V, prompt, bias_ids, bias_values);
        if (c.penalties) {
            smp.accept(3);
            smp.accept(11);
        }
        sampler_scratch sc;
        int32_t best = -1;
        const double total = smp.distribution(one.data(), sc, &best);
        std::vector<double> prob(size_t(V), 0.0);
        for (const auto & [w, id] : sc.cand) prob[size_t(id)] = double(w) / total;
        std::vector<sample_row> rows(N);
        std::vector<sample_adjust> adjust;
        smp.device_row(rows[0], adjust);
        for (int32_t i = 0; i < N; ++i) {
            rows[size_t(i)] = rows[0];
            rows[size_t(i)].counter = uint64_t(i);
        }
        std::vector<sample_out> got(N), again(N);
        be.sample(dlogits[c.ties], V, rows.data(), N, adjust.data(), int32_t(adjust.size()), got.data());
        be.sample(dlogits[c.ties], V, rows.data(), N, adjust.data(), int32_t(adjust.size()), again.data());
        std::vector<double> count(size_t(V), 0.0);
        int32_t outside = 0, repeat = 0;
        for (int32_t i = 0; i < N; ++i) {
            const int32_t t = got[size_t(i)].token;
            if (t < 0 || t >= V || prob[size_t(t)] == 0.0) {
                ++outside;
            } else {
                count[size_t(t)] += 1;
            }
            repeat += got[size_t(i)].token == again[size_t(i)].token;
        }
        // Bins with fewer than 5 expected draws are pooled into one.
        double chi2 = 0.0, pool_e = 0.0, pool_o = 0.0;
        int    bins = 0;
        for (int32_t t = 0; t < V; ++t) {
            const double e = prob[size_t(t)] * N;
            if (e == 0.0) continue;
            if (e < 5.0) {
                pool_e += e;
                pool_o += count[size_t(t)];
                continue;
            }
            chi2 += (count[size_t(t)] - e) * (count[size_t(t)] - e) / e;
            ++bins;
        }
        if (pool_e > 0.0) {
            chi2 += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
            ++bins;
        }
        const int df = std::max(bins - 1, 1);
        CHECK(outside == 0 && chi2 <= chi2_critical(df),
              "sample %-52s %d draws: chi2 %.1f (df %d, 1e-4 critical %.1f), %d outside the host's %zu kept", c.name,
              N, chi2, df, chi2_critical(df), outside, sc.cand.size());
        CHECK(repeat == N, "sample %-52s same seed and counters twice: %d/%d tokens equal", c.name, repeat, N);
    }
}

// A GPTQ desc_act checkpoint (AutoGPTQ v1 layout: qweight [K/8][N], qzeros [G][N/8] holding zero - 1, f16
// scales [G][N], g_idx [K] with each group's columns scattered) of the tiny model's shape: random nibbles,
// zero points and scales for every projection; the other tensors as write_tiny_model writes them.
void write_act_order_model(const std::string & dir, const minicpm_test::tiny_model_spec & spec, int32_t group) {
    std::vector<minicpm_test::raw_tensor> out;
    for (minicpm_test::raw_tensor & t : minicpm_test::tiny_raw_tensors(spec)) {
        const std::string suffix = ".weight";
        if (t.name.find("_proj.weight") == std::string::npos) {
            out.push_back(std::move(t));
            continue;
        }
        const std::string p = t.name.substr(0, t.name.size() - suffix.size());
        const int64_t     N = t.shape[0], K = t.shape[1], G = K / group;
        std::vector<int32_t> qw(size_t(K / 8 * N)), qz(size_t(G * N / 8), 0);
        for (int32_t & v : qw) v = int32_t(g_rng());
        for (int64_t g = 0; g < G; ++g)
            for (int64_t n = 0; n < N; ++n)
                qz[size_t(g * (N / 8) + n / 8)] |= int32_t(uint32_t(g_rng() % 15) << (4 * (n % 8)));
        std::vector<uint16_t> sc(size_t(G * N));
        for (uint16_t & v : sc) v = f32_to_f16(std::uniform_real_distribution<float>(0.004f, 0.012f)(g_rng));
        const std::vector<int32_t> g_idx = act_order_g_idx(K, group);
        auto bytes = [](const void * d, size_t n) { return std::string((const char *) d, n); };
        out.push_back({p + ".qweight", "I32", {K / 8, N}, bytes(qw.data(), qw.size() * 4)});
        out.push_back({p + ".qzeros", "I32", {G, N / 8}, bytes(qz.data(), qz.size() * 4)});
        out.push_back({p + ".scales", "F16", {G, N}, bytes(sc.data(), sc.size() * 2)});
        out.push_back({p + ".g_idx", "I32", {K}, bytes(g_idx.data(), g_idx.size() * 4)});
    }
    std::string cfg = minicpm_test::tiny_config_json(spec);
    cfg.insert(cfg.rfind('}'), ",\n  \"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": " +
                                   std::to_string(group) + ", \"desc_act\": true, \"sym\": false}\n");
    minicpm_test::write_file(dir + "/config.json", cfg);
    minicpm_test::write_file(dir + "/model.safetensors", minicpm_test::safetensors_bytes(out));
}

// The whole model through the public API: CUDA logits vs the CPU reference ops on the same checkpoint.
// sparse: a checkpoint with an InfLLM v2 sparse_config (G = 8, dense_len 300, top-k 3, window 2 blocks), 640
// tokens of prefill then 8 decode calls, so that both paths run sparse rows through kv_compress and
// sparse_attention on the device. act_order: a GPTQ desc_act checkpoint (groups of 32), 100 tokens of prefill
// (the act-order q-gemm) then 8 decode calls (the act-order GEMV), with the device's original rows released.
void test_model(bool sparse, bool act_order = false) {
    const std::string dir = minicpm_test::make_temp_dir("cuda-model");
    minicpm_test::tiny_model_spec spec;
    spec.tie_word_embeddings = false;
    if (sparse) {
        // f32 weights: the CUDA matmul then keeps f32 activations (no bf16 tensor-core GEMM), so that q and k
        // stay close enough to the reference's for the block selections to agree.
        spec.weight_type = dtype::f32;
        spec.n_embd = 256;
        spec.n_head = 16;
        spec.n_head_kv = 2;
        spec.n_ff = 256;
    }
    if (act_order) {
        write_act_order_model(dir, spec, 32);
    } else {
        minicpm_test::write_tiny_model(dir, spec);
    }
    if (sparse) minicpm_test::add_sparse_config(dir, 128, 3, 300);
    const int32_t n_prompt = sparse ? 640 : 100, n_decode = sparse || act_order ? 8 : 0, V = spec.n_vocab;
    std::vector<int32_t> toks(size_t(n_prompt + n_decode));
    for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t((i * 37 + 5) % 500);
    std::vector<float> logits[2];
    for (int b = 0; b < 2; ++b) {
        minicpm_model_params mp;
        minicpm_model_default_params(&mp);
        mp.backend = b == 0 ? MINICPM_BACKEND_CPU : MINICPM_BACKEND_CUDA;
        minicpm_model_t * m = nullptr;
        if (minicpm_model_load(dir.c_str(), &mp, &m) != MINICPM_STATUS_OK) {
            char msg[256] = "";
            minicpm_last_error(msg, int32_t(sizeof(msg)));
            std::printf("model load (%s): %s\n", b == 0 ? "cpu" : "cuda", msg);
            break;
        }
        minicpm_context_params cp;
        minicpm_context_default_params(&cp);
        cp.n_ctx = sparse ? 1024 : 256;
        cp.use_reference = b == 0;
        minicpm_context_t * ctx = nullptr;
        minicpm_context_init(m, &cp, &ctx);
        std::vector<uint8_t> out(size_t(n_prompt), 1);
        logits[b].resize(toks.size() * size_t(V));
        int32_t n = minicpm_context_eval(ctx, toks.data(), nullptr, out.data(), n_prompt, logits[b].data(),
                                         int64_t(n_prompt) * V);
        for (int32_t i = 0; i < n_decode && n >= 0; ++i) {
            const int32_t got = minicpm_context_eval(ctx, toks.data() + n_prompt + i, nullptr, out.data(), 1,
                                                     logits[b].data() + size_t(n_prompt + i) * V, V);
            n = got < 0 ? got : n + got;
        }
        if (n != int32_t(toks.size())) {
            char msg[256] = "";
            minicpm_last_error(msg, int32_t(sizeof(msg)));
            std::printf("eval (%s): %d rows: %s\n", b == 0 ? "cpu" : "cuda", n, msg);
            logits[b].clear();
        }
        minicpm_context_free(ctx);
        minicpm_model_free(m);
    }
    minicpm_test::remove_dir(dir);
    const bool ran = !logits[0].empty() && logits[0].size() == logits[1].size();
    const double e = ran ? nmse(logits[0], logits[1]) : 1.0;
    CHECK(ran && e < 1e-4, "model logits, %d tokens%s, CUDA vs CPU reference: nmse %.3e (thr 1e-4)",
          int32_t(toks.size()), sparse ? " (InfLLM v2 hf, prefill + decode)" : act_order ? " (GPTQ act-order q4)" : "",
          e);
}

// Speculative decoding on an InfLLM v2 target past dense_len, on the given backend (test-spec-sparse's checkpoint
// and requests, greedy): verify trees run through the sparse op, each tree row as plain decoding would after its
// ancestors, so the output must equal plain decoding on the same backend token for token. Drafters: the target
// itself (deep trees, accepted), a weak model (rejections). f32 weights keep the device matmul in f32 at every
// batch size, so a verify batch rounds like the plain one up to the attention kernels' order of sums.
void test_spec_sparse(int32_t backend_request) {
    constexpr int32_t dense_len = 200;
    const std::string dir = minicpm_test::make_temp_dir("cuda-spec-sparse");
    std::filesystem::create_directories(dir + "/target");
    std::filesystem::create_directories(dir + "/weak");
    minicpm_test::tiny_model_spec spec = minicpm_test::spec_target();
    spec.weight_type = dtype::f32;
    minicpm_test::write_tiny_model(dir + "/target", spec);
    minicpm_test::add_sparse_config(dir + "/target", 128, 2, dense_len);  // 2 local blocks, top-k 2: sparse past 256
    minicpm_test::tiny_model_spec weak = spec;
    weak.seed = 777;
    weak.n_layer = 1;
    minicpm_test::write_tiny_model(dir + "/weak", weak);
    try {
        const auto target = model::load(dir + "/target", true, backend_request);
        const auto weak_model = model::load(dir + "/weak", true, backend_request);
        minicpm_engine_params ep;
        minicpm_engine_default_params(&ep);
        ep.n_chunk = 64;
        ep.n_ctx = 384;
        ep.kv_dtype = MINICPM_DTYPE_F32;
        ep.kv_bytes = uint64_t(64) * kv_pool::bytes_per_block(target->config(), dtype::f32);
        using minicpm_test::greedy;
        using minicpm_test::prompt_of;
        // Crossing dense_len while generating, starting past it, staying below it.
        const std::vector<minicpm_test::spec_request> reqs = {{prompt_of(190, 1), greedy(100)},
                                                              {prompt_of(230, 2), greedy(60)},
                                                              {prompt_of(120, 3), greedy(110)},
                                                              {prompt_of(40, 4), greedy(50)},
                                                              {prompt_of(175, 5), greedy(90)}};
        std::vector<std::vector<int32_t>> plain;
        {
            scheduler s(*target, ep);
            plain = minicpm_test::run_all(s, reqs, 120);
        }
        struct arm {
            const char * label;
            const model * draft;
            tree_shape   shape;
        };
        for (const arm & a : {arm{"target as drafter", target.get(), tree_shape{4, 4, 16}},
                              arm{"weak draft model", weak_model.get(), tree_shape{}}}) {
            scheduler s(*target, ep);
            auto      d = std::make_shared<minicpm_test::counting_drafter>(
                std::make_shared<model_drafter>(*a.draft, target->config().n_vocab, s.backend_ref(), dtype::f32, 96,
                                                a.shape),
                dense_len);
            s.set_drafter(d, a.shape.tree_size - 1);
            const std::vector<std::vector<int32_t>> spec_out = minicpm_test::run_all(s, reqs, 120);
            struct minicpm_engine_stats st{};
            s.stats(st);
            int64_t total = 0, first_diff = -1;
            for (size_t i = 0; i < reqs.size(); ++i) {
                for (size_t t = 0; first_diff < 0 && t < plain[i].size(); ++t)
                    if (t >= spec_out[i].size() || spec_out[i][t] != plain[i][t]) first_diff = total + int64_t(t);
                total += int64_t(plain[i].size());
            }
            CHECK(spec_out == plain && d->n_past_dense > 0 && total == 410,
                  "spec sparse %s on %s (tree %d/%d/%d): output == plain decoding for %lld tokens in 5 greedy "
                  "requests (first difference at token %lld); %lld trees, %lld reaching past dense_len %d; %llu "
                  "verifies, %llu drafts accepted of %lld tree depths", a.label, s.backend_ref().name(),
                  a.shape.num_iter, a.shape.top_k, a.shape.tree_size, (long long) total, (long long) first_diff,
                  (long long) d->n_trees, (long long) d->n_past_dense, dense_len,
                  (unsigned long long) st.n_spec_verifies, (unsigned long long) st.n_spec_accepted,
                  (long long) d->sum_depth);
        }
    } catch (const std::exception & e) {
        CHECK(false, "spec sparse: unexpected exception: %s", e.what());
    }
    minicpm_test::remove_dir(dir);
}

// The engine on the CUDA backend samples on the device (one plain row per request): each greedy token of a
// batch of requests must be the argmax of the CUDA logits at its position (recomputed by a context; within a
// margin, as a batch may group rows differently), and a seeded sampled request repeats itself.
std::vector<int32_t> run_engine(minicpm_engine_t * eng, const std::vector<std::vector<int32_t>> & prompts,
                                const minicpm_sampling_params & sp, std::vector<std::vector<int32_t>> & out) {
    std::vector<uint64_t> ids(prompts.size(), 0);
    for (size_t i = 0; i < prompts.size(); ++i)
        minicpm_engine_submit(eng, prompts[i].data(), int32_t(prompts[i].size()), &sp, nullptr, 0, nullptr, nullptr,
                              0, &ids[i]);
    out.assign(prompts.size(), {});
    std::vector<int32_t> finish(prompts.size(), -1);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (size_t done = 0; done < prompts.size() && std::chrono::steady_clock::now() < deadline;) {
        for (size_t i = 0; i < prompts.size(); ++i) {
            minicpm_event ev[16];
            const int32_t n = ids[i] && finish[i] < 0 ? minicpm_engine_drain(eng, ids[i], ev, 16) : 0;
            for (int32_t e = 0; e < n; ++e) {
                if (ev[e].token >= 0) out[i].push_back(ev[e].token);
                if (ev[e].finish_reason != MINICPM_FINISH_NONE) {
                    finish[i] = ev[e].finish_reason;
                    ++done;
                }
            }
        }
        std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    return finish;
}

void test_engine_sampling() {
    const std::string dir = minicpm_test::make_temp_dir("cuda-engine");
    minicpm_test::tiny_model_spec spec;
    spec.tie_word_embeddings = false;
    minicpm_test::write_tiny_model(dir, spec);
    minicpm_model_params mp;
    minicpm_model_default_params(&mp);
    mp.backend = MINICPM_BACKEND_CUDA;
    minicpm_model_t * m = nullptr;
    minicpm_engine_t * eng = nullptr;
    minicpm_engine_params ep;
    minicpm_engine_default_params(&ep);
    ep.n_ctx = 256;
    const bool up = minicpm_model_load(dir.c_str(), &mp, &m) == MINICPM_STATUS_OK &&
                    minicpm_engine_init(m, &ep, &eng) == MINICPM_STATUS_OK;
    char why[256] = "loaded";
    if (!up) minicpm_last_error(why, int32_t(sizeof(why)));
    CHECK(up, "engine on CUDA: %s", why);
    if (!up) {
        minicpm_model_free(m);
        minicpm_test::remove_dir(dir);
        return;
    }
    std::vector<std::vector<int32_t>> prompts;
    for (int32_t p = 0; p < 4; ++p) {
        prompts.emplace_back();
        for (int32_t i = 0; i < 20 + 7 * p; ++i) prompts.back().push_back(int32_t((i * 37 + p * 101 + 5) % 500));
    }
    std::vector<std::vector<int32_t>> got;
    const std::vector<int32_t> fin = run_engine(eng, prompts, minicpm_test::greedy(12), got);
    int32_t n_tok = 0, n_ok = 0;
    float   worst = 0.0f;
    for (size_t i = 0; i < prompts.size(); ++i) {
        // The prompt in one call and then one generated token a call, as the engine runs them (a prompt
        // chunk, then decode rows), so the kernels and roundings are the same.
        minicpm_context_params cp;
        minicpm_context_default_params(&cp);
        cp.n_ctx = 256;
        cp.kv_dtype = ep.kv_dtype;
        minicpm_context_t * ctx = nullptr;
        if (minicpm_context_init(m, &cp, &ctx) != MINICPM_STATUS_OK) break;
        std::vector<float> logits(got[i].size() * 512);
        int32_t rows = minicpm_context_eval(ctx, prompts[i].data(), nullptr, nullptr, int32_t(prompts[i].size()),
                                            logits.data(), 512);
        for (size_t j = 0; j + 1 < got[i].size() && rows == int32_t(j) + 1; ++j)
            rows += minicpm_context_eval(ctx, &got[i][j], nullptr, nullptr, 1, logits.data() + (j + 1) * 512, 512);
        minicpm_context_free(ctx);
        for (int32_t r = 0; r < rows; ++r) {
            const float * l = logits.data() + size_t(r) * 512;
            const float   top = *std::max_element(l, l + 512);
            const float   gap = top - l[got[i][size_t(r)]];
            worst = std::max(worst, gap);
            n_ok += gap <= 1e-3f * std::max(1.0f, std::fabs(top));
            ++n_tok;
        }
    }
    CHECK(n_tok == 48 && n_ok == n_tok && fin[0] == MINICPM_FINISH_LENGTH,
          "engine greedy on the device, 4 requests x 12: %d/%d tokens are the argmax of the CUDA logits (largest "
          "gap %.2e)", n_ok, n_tok, double(worst));
    minicpm_sampling_params sp;
    minicpm_sampling_default_params(&sp);
    sp.temperature = 0.9f;
    sp.top_k = 50;
    sp.top_p = 0.95f;
    sp.repetition_penalty = 1.1f;
    sp.seed = 77;
    sp.n_max_tokens = 16;
    sp.ignore_eos = 1;
    std::vector<std::vector<int32_t>> a, b;
    run_engine(eng, {prompts[0], prompts[1]}, sp, a);
    run_engine(eng, {prompts[1], prompts[0]}, sp, b);
    CHECK(a.size() == 2 && a[0].size() == 16 && a[0] == b[1] && a[1] == b[0],
          "engine sampled on the device, seed 77: the same tokens in either batch order (%s | %s)",
          minicpm_test::str(a[0]).c_str(), minicpm_test::str(b[1]).c_str());
    minicpm_engine_free(eng);
    minicpm_model_free(m);
    minicpm_test::remove_dir(dir);
}

// The device arena: sized by the first CUDA backend of the process (here the model load's, before any other
// exists), reported in model_info, bounding weights (a clear load error) and the engine's KV budget.
void test_arena() {
    const std::string dir = minicpm_test::make_temp_dir("cuda-arena");
    minicpm_test::tiny_model_spec spec;
    minicpm_test::write_tiny_model(dir, spec);
    char why[512] = "";
    minicpm_model_params mp;
    minicpm_model_default_params(&mp);
    mp.backend = MINICPM_BACKEND_CUDA;
    mp.device_memory = 64 << 10;
    minicpm_model_t * m = nullptr;
    int32_t rc = minicpm_model_load(dir.c_str(), &mp, &m);
    minicpm_last_error(why, int32_t(sizeof(why)));
    CHECK(rc == MINICPM_STATUS_OUT_OF_MEMORY && std::strstr(why, "weights") && std::strstr(why, "device arena"),
          "load with a 64 KiB device arena: status %d: %s", rc, why);
    mp.device_memory = uint64_t(1) << 50;
    rc = minicpm_model_load(dir.c_str(), &mp, &m);
    minicpm_last_error(why, int32_t(sizeof(why)));
    CHECK(rc == MINICPM_STATUS_OUT_OF_MEMORY && std::strstr(why, "exceeds"), "load with a 1 PiB limit: status %d: %s",
          rc, why);
    mp.device_memory = uint64_t(256) << 20;
    rc = minicpm_model_load(dir.c_str(), &mp, &m);
    struct minicpm_model_info info;
    info.size = sizeof(info);
    const bool loaded = rc == MINICPM_STATUS_OK && minicpm_model_info(m, &info) == MINICPM_STATUS_OK;
    CHECK(loaded && info.device_arena_bytes == mp.device_memory && info.device_memory_total >= info.device_memory_free &&
              info.device_memory_free > 0 && info.device_arena_free + info.weight_bytes <= info.device_arena_bytes,
          "load with a 256 MiB arena: arena %llu MiB, %llu MiB left after %llu MiB of weights; device %llu of %llu MiB "
          "free at load",
          (unsigned long long) (info.device_arena_bytes >> 20), (unsigned long long) (info.device_arena_free >> 20),
          (unsigned long long) (info.weight_bytes >> 20), (unsigned long long) (info.device_memory_free >> 20),
          (unsigned long long) (info.device_memory_total >> 20));
    if (loaded) {
        minicpm_engine_params ep;
        minicpm_engine_default_params(&ep);
        ep.n_ctx = 256;
        ep.kv_bytes = uint64_t(1) << 30;
        minicpm_engine_t * eng = nullptr;
        rc = minicpm_engine_init(m, &ep, &eng);
        minicpm_last_error(why, int32_t(sizeof(why)));
        CHECK(rc == MINICPM_STATUS_OUT_OF_MEMORY && std::strstr(why, "kv_bytes"),
              "engine with kv_bytes 1 GiB in a 256 MiB arena: status %d: %s", rc, why);
        ep.kv_bytes = 0;
        ep.n_batch_max = 4;
        rc = minicpm_engine_init(m, &ep, &eng);
        struct minicpm_engine_stats st;
        st.size = sizeof(st);
        const bool up = rc == MINICPM_STATUS_OK && minicpm_engine_stats(eng, &st) == MINICPM_STATUS_OK;
        CHECK(up && st.kv_tokens_total == 4 * 256, "engine with the default KV budget: status %d, %d KV tokens (want "
              "4 x 256: all that the requests can use)", rc, up ? st.kv_tokens_total : -1);
        minicpm_engine_free(eng);
    }
    minicpm_model_free(m);
    minicpm_test::remove_dir(dir);
}

// CUDA graphs for decode steps: the same prompts and decode steps on a model loaded with graphs and on one
// without; every step's logits must be bit-identical. Three sequences decode together, then two (a new batch
// size), then three again (a replay of the first graph); one context grows from 250 across 256 slots, where the
// attention changes from the plain kernel to split-K (a recorded graph no longer matches: fallback, then a new
// recording). The graphs must actually have been recorded and replayed.
void test_step_graphs() {
    const std::string dir = minicpm_test::make_temp_dir("cuda-graphs");
    minicpm_test::tiny_model_spec spec;
    minicpm_test::write_tiny_model(dir, spec);
    const int32_t V = spec.n_vocab, n_steps = 14;
    const int32_t prompt_len[3] = {40, 250, 5};
    std::vector<float> logits[2];
    step_graph_stats   gs[2];
    std::string        off_reason[2];  // gs[g].off_reason lives as long as its backend
    bool               ran[2] = {false, false};
    for (int g = 0; g < 2; ++g) {
        minicpm_model_params mp;
        minicpm_model_default_params(&mp);
        mp.backend = MINICPM_BACKEND_CUDA;
        mp.cuda_graphs = uint8_t(g);
        minicpm_model_t *      m = nullptr;
        minicpm_context_t *    ctx = nullptr;
        minicpm_context_params cp;
        minicpm_context_default_params(&cp);
        cp.n_ctx = 512;
        cp.n_seq_max = 3;
        if (minicpm_model_load(dir.c_str(), &mp, &m) != MINICPM_STATUS_OK ||
            minicpm_context_init(m, &cp, &ctx) != MINICPM_STATUS_OK) {
            char msg[256] = "";
            minicpm_last_error(msg, int32_t(sizeof(msg)));
            std::printf("step graphs: model or context (cuda_graphs = %d): %s\n", g, msg);
            minicpm_model_free(m);
            break;
        }
        std::vector<float> last(static_cast<size_t>(V));
        bool ok = true;
        for (int32_t sq = 0; sq < 3 && ok; ++sq) {
            std::vector<int32_t> toks(size_t(prompt_len[sq])), ids(toks.size(), sq);
            for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t((i * 31 + 7 * size_t(sq) + 3) % 500);
            ok = minicpm_context_eval(ctx, toks.data(), ids.data(), nullptr, int32_t(toks.size()), last.data(), V) == 1;
        }
        for (int32_t step = 0; step < n_steps && ok; ++step) {
            const int32_t nb = step >= 6 && step < 10 ? 2 : 3;  // batch 3, then 2, then 3 again
            std::vector<int32_t> toks, ids;
            for (int32_t sq = 0; sq < nb; ++sq) {
                toks.push_back((step * 17 + sq * 5 + 11) % 500);
                ids.push_back(sq);
            }
            const std::vector<uint8_t> out(size_t(nb), 1);
            std::vector<float>         l(size_t(nb) * V);
            ok = minicpm_context_eval(ctx, toks.data(), ids.data(), out.data(), nb, l.data(), int64_t(l.size())) == nb;
            logits[g].insert(logits[g].end(), l.begin(), l.end());
        }
        ran[g] = ok;
        if (!ok) {
            char msg[256] = "";
            minicpm_last_error(msg, int32_t(sizeof(msg)));
            std::printf("step graphs: eval (cuda_graphs = %d): %s\n", g, msg);
        }
        gs[g] = ctx->impl->backend_ref().graph_stats();
        off_reason[g] = gs[g].off_reason;
        minicpm_context_free(ctx);
        minicpm_model_free(m);
    }
    minicpm_test::remove_dir(dir);
    const bool same_size = logits[0].size() == logits[1].size();
    size_t     differ = same_size ? 0 : logits[0].size() + 1;
    double     max_diff = 0;
    for (size_t i = 0; same_size && i < logits[0].size(); ++i)
        if (std::memcmp(&logits[0][i], &logits[1][i], sizeof(float)) != 0) {
            ++differ;
            max_diff = std::max(max_diff, std::fabs(double(logits[0][i]) - double(logits[1][i])));
        }
    std::printf("step graphs: %s\n", gs[1].enabled ? "on" : off_reason[1].c_str());
    CHECK(ran[0] && ran[1] && !logits[0].empty() && differ == 0,
          "CUDA graph decode steps vs eager: %zu of %zu logits differ (max |diff| %.3e), %d steps, batch 3 -> 2 -> 3, "
          "context 250 -> %d", differ, logits[0].size(), n_steps, 250 + n_steps);
    CHECK(!gs[0].enabled && gs[0].captures == 0 && gs[0].replays == 0,
          "cuda_graphs = 0: graphs off (%s), %llu captures, %llu replays", off_reason[0].c_str(),
          (unsigned long long) gs[0].captures, (unsigned long long) gs[0].replays);
    CHECK(gs[1].enabled && gs[1].captures >= 2 && gs[1].replays >= 6 && gs[1].fallbacks >= 1,
          "cuda_graphs = 1: %llu captures (>= 2: batch 3 and 2), %llu replays (>= 6), %llu fallbacks (>= 1: the "
          "split-K switch at 256 slots)", (unsigned long long) gs[1].captures, (unsigned long long) gs[1].replays,
          (unsigned long long) gs[1].fallbacks);
}

// Seconds per call of fn, after one warm-up call, averaged over reps.
template <typename F> double time_calls(backend & be, int reps, F && fn) {
    fn();
    be.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) fn();
    be.synchronize();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

// `test-cuda --perf` (scripts/gpu-check.sh): GEMV GB/s per weight format, tensor-core GEMM TFLOP/s (quantized:
// group order, GPTQ act-order, split-K on the 8B down projection), split-K decode attention (KV GB/s) and the
// device sampler, on MiniCPM4 shapes. Weights are a constant pattern: only the time matters here.
void perf_sparse(backend & be);

// A constant-pattern q4 weight in groups of 128 with zero points, on the device; bytes: what one pass reads.
tensor_desc perf_q4(device & dv, int64_t N, int64_t K, double & bytes) {
    const int64_t              G = K / 128;
    const std::vector<uint8_t> w4(size_t(N * K / 2), 0x87), sc(size_t(N * G) * 2, 0x1c), zp(size_t(N * G), 8);
    tensor_desc                dw = plain(dtype::q4, N, K, dv.put(w4));
    dw.group_size = 128;
    dw.scale_type = dtype::f16;
    dw.scales = dv.put(sc);
    dw.zeros = dv.put(zp);
    bytes = double(w4.size() + sc.size() + zp.size());
    return dw;
}

void perf(backend & be) {
    device dv{be};
    {
        // bf16 weights on MiniCPM4 shapes: the tensor-core GEMM at prefill rows (T = 512, 2048: TFLOP/s), and
        // on the 8B ones also the GEMV at T = 1 and batched decode at T = 16, 64 (GB/s of weights: bound by the
        // weight stream; the 8B down projection splits K). Weights are released after each shape.
        struct pshape {
            const char * name;
            int64_t      N, K;
        };
        const bool wgmma = wgmma_on();  // sm_90: timed against mma.sync too
        const pshape shapes[] = {{"0.5B gate/up", 4096, 1024}, {"0.5B down", 1024, 4096}, {"0.5B LM head", 73448, 1024},
                                 {"8B q/o", 4096, 4096},       {"8B gate/up", 16384, 4096},
                                 {"8B down", 4096, 16384},     {"8B LM head", 73448, 4096}};
        for (const pshape & p : shapes) {
            const bool   b8 = p.name[0] == '8';
            device       pd{be};
            const double bytes = double(p.N * p.K) * 2;
            const tensor_desc dw = plain(dtype::bf16, p.N, p.K, pd.put(std::vector<uint8_t>(size_t(bytes), 0x3c)));
            for (int64_t T : b8 ? std::vector<int64_t>{1, 16, 64, 512, 2048} : std::vector<int64_t>{512, 2048}) {
                float *      xd = pd.put(rnd(size_t(T * p.K)));
                float *      yd = pd.zeros(size_t(T * p.N));
                const double s = time_calls(be, T <= 64 ? 50 : 10, [&] { be.matmul(yd, xd, dw, T); });
                const double tf = 2.0 * double(T * p.N * p.K) / s / 1e12;
                if (T <= 64) {
                    std::printf("perf: %s bf16 %s %lldx%lld T=%lld: %.1f GB/s of weights (%.3f ms, %.2f TFLOP/s)\n",
                                T == 1 ? "GEMV" : "GEMM", p.name, (long long) p.N, (long long) p.K, (long long) T,
                                bytes / s / 1e9, s * 1e3, tf);
                } else {
                    std::printf("perf: GEMM bf16 %s %lldx%lld T=%lld%s: %.1f TFLOP/s (%.3f ms)\n", p.name,
                                (long long) p.N, (long long) p.K, (long long) T, wgmma ? " wgmma" : "", tf, s * 1e3);
                }
                if (T >= 128 && wgmma) {  // the same shape on mma.sync, for the wgmma GEMM's gain
                    force_mma_sync(true);
                    const double sm = time_calls(be, 10, [&] { be.matmul(yd, xd, dw, T); });
                    const double tfm = 2.0 * double(T * p.N * p.K) / sm / 1e12;
                    force_mma_sync(false);
                    std::printf("perf: GEMM bf16 %s %lldx%lld T=%lld mma.sync: %.1f TFLOP/s (%.3f ms)\n", p.name,
                                (long long) p.N, (long long) p.K, (long long) T, tfm, sm * 1e3);
                }
            }
        }
    }
    {
        const int64_t N = 14336, K = 4096, G = K / 128;  // an 8B-shaped FFN projection, groups of 128
        const std::vector<uint8_t> w16(size_t(N * K) * 2, 0x3c), w8(size_t(N * K), 0x11), w4(size_t(N * K / 2), 0x87);
        const std::vector<uint8_t> sc(size_t(N * G) * 2, 0x1c), zp(size_t(N * G), 8);
        float * xd = dv.put(rnd(size_t(K)));
        float * yd = dv.zeros(size_t(N));
        for (dtype t : {dtype::bf16, dtype::q8, dtype::q4}) {
            tensor_desc dw = plain(t, N, K, dv.put(t == dtype::bf16 ? w16 : t == dtype::q8 ? w8 : w4));
            size_t bytes = t == dtype::bf16 ? w16.size() : t == dtype::q8 ? w8.size() : w4.size();
            if (t != dtype::bf16) {
                dw.group_size = 128;
                dw.scale_type = dtype::f16;
                dw.scales = dv.put(sc);
                bytes += sc.size();
                if (t == dtype::q4) {
                    dw.zeros = dv.put(zp);
                    bytes += zp.size();
                }
            }
            const double s = time_calls(be, 50, [&] { be.matmul(yd, xd, dw, 1); });
            std::printf("perf: GEMV %s %lldx%lld T=1: %.1f GB/s (%.3f ms)\n", dtype_name(t), (long long) N,
                        (long long) K, double(bytes) / s / 1e9, s * 1e3);
            if (t == dtype::bf16) continue;
            // The quantized tensor-core GEMM on the same weights: batched decode and prefill row counts
            // (including the bf16 rounding of the activations, as the engine runs it).
            for (int64_t T : {int64_t(16), int64_t(64), int64_t(512), int64_t(2048)}) {
                float * xt = dv.put(rnd(size_t(T * K)));
                float * yt = dv.zeros(size_t(T * N));
                const double st = time_calls(be, T <= 64 ? 50 : 10, [&] { be.matmul(yt, xt, dw, T); });
                std::printf("perf: GEMM %s mma T=%lld %lldx%lld group 128: %.1f TFLOP/s (%.3f ms, %.1f GB/s of "
                            "weights)\n", dtype_name(t), (long long) T, (long long) N, (long long) K,
                            2.0 * double(T * N * K) / st / 1e12, st * 1e3, double(bytes) / st / 1e9);
            }
        }
    }
    {
        // The same q4 projection (groups of 128, zero points) in GPTQ act-order, from its reordered copy: the
        // GEMV and the GEMM with the activations gathered, to set beside the group-ordered lines above.
        const int64_t N = 14336, K = 4096;
        double        bytes = 0;
        tensor_desc   dw = perf_q4(dv, N, K, bytes);
        dw.perm = dv.put(act_order_g_idx(K, 128));
        dv.held.push_back(be.prepare_weights(dw));
        dw.packed = dv.held.back().data;
        for (int64_t T : {int64_t(1), int64_t(16), int64_t(512)}) {
            float * xt = dv.put(rnd(size_t(T * K)));
            float * yt = dv.zeros(size_t(T * N));
            const double st = time_calls(be, T <= 64 ? 50 : 10, [&] { be.matmul(yt, xt, dw, T); });
            if (T == 1) {
                std::printf("perf: GEMV q4 act-order %lldx%lld T=1: %.1f GB/s (%.3f ms)\n", (long long) N,
                            (long long) K, bytes / st / 1e9, st * 1e3);
            } else {
                std::printf("perf: GEMM q4 act-order mma T=%lld %lldx%lld group 128: %.1f TFLOP/s (%.3f ms, %.1f GB/s "
                            "of weights)\n", (long long) T, (long long) N, (long long) K,
                            2.0 * double(T * N * K) / st / 1e12, st * 1e3, bytes / st / 1e9);
            }
        }
    }
    {
        // Split-K: the 8B MLP down projection (N 4096, K 16384) at batched-decode rows, where the q-gemm's
        // output tiles underfill the SMs; weight bandwidth is the headline. T = 8 (the GEMV) for comparison.
        const int64_t     N = 4096, K = 16384;
        double            bytes = 0;
        const tensor_desc dw = perf_q4(dv, N, K, bytes);
        for (int64_t T : {int64_t(8), int64_t(9), int64_t(16), int64_t(32), int64_t(64)}) {
            float * xt = dv.put(rnd(size_t(T * K)));
            float * yt = dv.zeros(size_t(T * N));
            const double st = time_calls(be, 50, [&] { be.matmul(yt, xt, dw, T); });
            std::printf("perf: GEMM q4 %s T=%lld %lldx%lld group 128: %.1f GB/s of weights (%.3f ms, %.2f TFLOP/s)\n",
                        T > 8 ? "split-K mma" : "gemv", (long long) T, (long long) N, (long long) K, bytes / st / 1e9,
                        st * 1e3, 2.0 * double(T * N * K) / st / 1e12);
        }
    }
    {
        const int32_t nh = 32, nkv = 2, hd = 128;  // 8B attention, bf16 KV
        for (int32_t ctx : {4096, 32768}) {
            for (int32_t R : {1, 8}) {
                const int32_t per_seq = (ctx + 63) / 64, nb = per_seq * R;
                const size_t  pool = size_t(nb) * nkv * 64 * hd * 2;
                const std::vector<uint8_t> fill(pool, 0x3c);
                const kv_layer kv = {dtype::bf16, dv.put(fill), dv.put(fill), nkv, hd};
                std::vector<int32_t> table(static_cast<size_t>(nb));
                for (int32_t i = 0; i < nb; ++i) table[size_t(i)] = i;
                std::vector<kv_segment> segs;
                for (int32_t r = 0; r < R; ++r) segs.push_back({r, 1, ctx - 1, table.data() + size_t(r) * per_seq, nullptr});
                float * qd = dv.put(rnd(size_t(R) * nh * hd));
                float * od = dv.zeros(size_t(R) * nh * hd);
                const double s = time_calls(be, 20, [&] { be.attention(od, qd, kv, segs.data(), R, nh, 0.088f); });
                std::printf("perf: attention decode nh=%d nkv=%d hd=%d ctx=%d rows=%d: %.1f GB/s of KV (%.3f ms)\n", nh,
                            nkv, hd, ctx, R, double(R) * ctx * nkv * hd * 2 * 2 / s / 1e9, s * 1e3);
            }
        }
    }
    {
        const int32_t V = 73448;
        for (int32_t R : {1, 32}) {
            const float * ld = dv.put(rnd(size_t(R) * V, -10, 10));
            for (bool greedy : {true, false}) {
                std::vector<sample_row> rows(static_cast<size_t>(R));
                for (auto & r : rows) {
                    r.temperature = greedy ? 0.0f : 0.8f;
                    r.top_p = greedy ? 1.0f : 0.9f;
                    r.top_k = greedy ? 0 : 50;
                }
                std::vector<sample_out> out(static_cast<size_t>(R));
                const double s = time_calls(be, 20, [&] { be.sample(ld, V, rows.data(), R, nullptr, 0, out.data()); });
                std::printf("perf: sample V=%d rows=%d %s: %.1f us per call (ids copied back)\n", V, R,
                            greedy ? "greedy" : "top-k 50 top-p 0.9", s * 1e6);
            }
        }
    }
}


// One decode step's attention on the 8B shape (nh 32, nkv 2, hd 128, bf16 KV) at long contexts, dense vs
// InfLLM v2 (hf, 8B sparse_config: compression of the new slot, selection, attention over 96 blocks; a verify
// tree's rows past dense_len).
void perf_sparse(backend & be) {
    device dv{be};
    const int32_t nh = 32, nkv = 2, hd = 128;
    const sparse_attn_params sp;
    for (int32_t ctx : {32768, 131072}) {
        const int32_t nb = (ctx + 63) / 64;
        const kv_layer kv = {dtype::bf16, dv.put(raw(rnd(size_t(nb) * nkv * 64 * hd), dtype::bf16)),
                             dv.put(raw(rnd(size_t(nb) * nkv * 64 * hd), dtype::bf16)), nkv, hd};
        const kv_compressed proto = make_kv_compressed(sp, nkv, hd, nullptr);
        const kv_compressed cc = make_kv_compressed(sp, nkv, hd, dv.zeros(size_t(nb) * size_t(proto.block_floats)));
        std::vector<int32_t> table(static_cast<size_t>(nb));
        for (int32_t i = 0; i < nb; ++i) table[size_t(i)] = i;
        const kv_segment seg = {0, 1, ctx - 1, table.data(), nullptr};
        const int32_t    zero = 0, last = ctx - 1;
        be.kv_compress(cc, kv, &seg, &zero, 1);
        float * qd = dv.put(rnd(size_t(nh) * hd));
        float * od = dv.zeros(size_t(nh) * hd);
        for (int rep = 0; rep < 2; ++rep) {  // interleaved: dense, sparse, dense, sparse
            const double dense = time_calls(be, 20, [&] { be.attention(od, qd, kv, &seg, 1, nh, 0.088f); });
            const double sparse = time_calls(be, 20, [&] {
                be.kv_compress(cc, kv, &seg, &last, 1);
                be.sparse_attention(od, qd, kv, cc, &seg, 1, nh, 0.088f, sp, nullptr, 0);
            });
            std::printf("perf: sparse decode nh=%d nkv=%d hd=%d ctx=%d rows=1: dense %.3f ms, sparse (hf, 96 blocks) "
                        "%.3f ms per layer\n", nh, nkv, hd, ctx, dense * 1e3, sparse * 1e3);
        }
        // A verify tree of 16 rows ending the context (binary: row j's parent is (j - 1) / 2) against the same rows
        // as a causal chunk: what the per-row views and tail kernels cost.
        constexpr int32_t n = 16;
        std::vector<uint64_t> mask(size_t(n), 0);
        for (int32_t j = 1; j < n; ++j) mask[size_t(j)] = mask[size_t((j - 1) / 2)] | uint64_t(1) << ((j - 1) / 2);
        const kv_segment chunk = {0, n, ctx - n, table.data(), nullptr}, tree = {0, n, ctx - n, table.data(), mask.data()};
        float * qn = dv.put(rnd(size_t(n) * nh * hd));
        float * on = dv.zeros(size_t(n) * nh * hd);
        for (int rep = 0; rep < 2; ++rep) {  // interleaved
            const double causal = time_calls(be, 20, [&] {
                be.sparse_attention(on, qn, kv, cc, &chunk, 1, nh, 0.088f, sp, nullptr, 0);
            });
            const double treed = time_calls(be, 20, [&] {
                be.sparse_attention(on, qn, kv, cc, &tree, 1, nh, 0.088f, sp, nullptr, 0);
            });
            std::printf("perf: sparse verify nh=%d nkv=%d hd=%d ctx=%d rows=%d: causal chunk %.3f ms, tree (binary) "
                        "%.3f ms per layer\n", nh, nkv, hd, ctx, n, causal * 1e3, treed * 1e3);
        }
    }
}

// ---- the run: every section in a process of its own (fork, before anything touches CUDA). A kernel fault
// poisons its process's CUDA context for good (sticky errors): every later call fails, so the sections after it
// would report that one fault again as failures of their own. A section that crashes, or runs past its time, is
// one FAIL line naming it; the others still run and report.

struct section {
    const char * name;
    bool         on_backend;  // runs on a CUDA backend made for it (the others load models, which make their own)
    void (*run)(backend * be);
};

const section k_sections[] = {
    {"arena", false, [](backend *) { test_arena(); }},  // a process's first CUDA backend sizes its arena
    {"elementwise", true, [](backend * be) { test_elementwise(*be); }},
    {"matmul", true,
     [](backend * be) {
         test_matmul(*be);
         test_gemm16(*be);
     }},
    {"gemm-sm90", true, [](backend * be) { test_gemm_sm90(*be); }},
    {"attention", true, [](backend * be) { test_kv_attention(*be); }},
    {"sample", true,
     [](backend * be) {
         test_sample_greedy(*be);
         test_sample_distribution(*be);
     }},
    {"model", false, [](backend *) { test_model(false); }},
    {"engine", false, [](backend *) { test_engine_sampling(); }},
    {"sparse", true, [](backend * be) { test_sparse(*be); }},
    {"sparse-trees", true, [](backend * be) { test_sparse_trees(*be); }},
    {"sparse-model", false, [](backend *) { test_model(true); }},
    {"spec-sparse", false, [](backend *) { test_spec_sparse(MINICPM_BACKEND_CUDA); }},
    {"graphs", false, [](backend *) { test_step_graphs(); }},
    {"qgemm", true, [](backend * be) { test_qgemm(*be); }},
    {"act-order", true, [](backend * be) { test_act_order(*be); }},
    {"act-order-model", false, [](backend *) { test_model(false, true); }},
    {"qgemm-split", true, [](backend * be) { test_qgemm_split(*be); }},
    {"perf", true,
     [](backend * be) {
         perf(*be);
         perf_sparse(*be);
     }},
};

// What a section's process reports through its pipe when it gets to the end.
struct section_counts {
    int32_t checks = 0, failures = 0;
};

// fd: the pipe to the parent (< 0: the section runs in this process).
void run_section(const section & s, int fd) {
    std::unique_ptr<backend> be;
    try {
        if (s.on_backend) be = make_backend(backend_kind::cuda, backend_options{});
        s.run(be.get());
        if (be) be->synchronize();  // a fault in the section's last kernels is its own, reported here
    } catch (const std::exception & e) {
        CHECK(false, "section %s: %s", s.name, e.what());
    }
    const section_counts c = {minicpm_test::n_checks(), minicpm_test::n_failures()};
    std::fflush(stdout);
    if (fd >= 0 && write(fd, &c, sizeof(c)) != ssize_t(sizeof(c))) _exit(3);
}

// How a child process ended: its counts (when it got to write them), its exit status (-1: killed or died of a
// signal) and, when it did not end well, why.
struct child_end {
    section_counts counts;
    bool           counted = false;
    int            status = -1;
    std::string    why;
};

// Runs fn(fd) in a child process, for at most timeout_s seconds; fn writes its counts to fd.
template <typename F> child_end in_child(F && fn, double timeout_s) {
    child_end end;
    int       fds[2];
    if (pipe(fds) != 0) {
        end.why = "pipe failed";
        return end;
    }
    std::fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        minicpm_test::n_checks() = 0;  // the child counts its own checks only
        minicpm_test::n_failures() = 0;
        fn(fds[1]);
        std::fflush(stdout);
        _exit(0);  // no static destructors: the parent's process is the one that finishes
    }
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        end.why = "fork failed";
        return end;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    int  status = 0;
    bool timed_out = false;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            timed_out = true;
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    end.counted = read(fds[0], &end.counts, sizeof(end.counts)) == ssize_t(sizeof(end.counts));
    close(fds[0]);
    char buf[96] = "";
    if (timed_out) {
        std::snprintf(buf, sizeof(buf), "ran past its %.0f s and was killed", timeout_s);
    } else if (WIFSIGNALED(status)) {
        std::snprintf(buf, sizeof(buf), "died of signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    } else {
        end.status = WEXITSTATUS(status);
        if (end.status != 0) std::snprintf(buf, sizeof(buf), "exited with status %d", end.status);
    }
    if (!end.counted && buf[0] == '\0') std::snprintf(buf, sizeof(buf), "ended without reporting its checks");
    end.why = buf;
    return end;
}

int usage() {
    std::printf("usage: test-cuda [--perf] [--timeout SECONDS | --in-process] [SECTION...]\nsections:");
    for (const section & s : k_sections) std::printf(" %s", s.name);
    std::printf("\n(default: every section but perf; --perf adds it; each runs in a process of its own, killed after "
                "--timeout seconds, default 300; --in-process: all in this one, as compute-sanitizer wants them)\n");
    return 2;
}

}  // namespace

int main(int argc, char ** argv) {
    bool                      with_perf = false, in_process = false;
    double                    timeout_s = 300;
    std::vector<std::string> names;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--perf") {
            with_perf = true;
        } else if (a == "--in-process") {
            in_process = true;
        } else if (a == "--timeout" && i + 1 < argc) {
            timeout_s = std::atof(argv[++i]);
        } else if (std::any_of(std::begin(k_sections), std::end(k_sections),
                               [&](const section & s) { return a == s.name; })) {
            names.push_back(a);
        } else {
            return usage();
        }
    }
    if (timeout_s <= 0) return usage();
    const auto chosen = [&](const section & s) {
        const bool perf_one = std::strcmp(s.name, "perf") == 0;
        return (names.empty() ? !perf_one : std::find(names.begin(), names.end(), s.name) != names.end()) ||
               (perf_one && with_perf);
    };
    if (in_process) {
        try {
            make_backend(backend_kind::cuda, backend_options{});
        } catch (const error & e) {
            std::printf("SKIPPED: CUDA op tests: %s\n", e.what());
            return 77;
        }
        for (const section & s : k_sections)
            if (chosen(s)) run_section(s, -1);
        return minicpm_test::finish();
    }
    // The device check runs in a child too: this process must never touch CUDA before it forks.
    const child_end probe = in_child(
        [](int fd) {
            try {
                const std::unique_ptr<backend> be = make_backend(backend_kind::cuda, backend_options{});
                std::printf("backend: %s (%s)\n", be->name(), be->features());
            } catch (const error & e) {
                std::printf("SKIPPED: CUDA op tests: %s\n", e.what());
                std::fflush(stdout);
                _exit(77);
            }
            const section_counts none;
            if (write(fd, &none, sizeof(none)) != ssize_t(sizeof(none))) _exit(3);
        },
        60);
    if (probe.status == 77) return 77;
    if (!probe.why.empty()) {
        CHECK(false, "CUDA device check: %s", probe.why.c_str());
        return minicpm_test::finish();
    }
    int32_t checks = 0, failures = 0;
    for (const section & s : k_sections) {
        if (!chosen(s)) continue;
        const auto      t0 = std::chrono::steady_clock::now();
        const child_end end = in_child([&](int fd) { run_section(s, fd); }, timeout_s);
        if (!end.why.empty())
            CHECK(false, "section %s: %s%s", s.name, end.why.c_str(),
                  end.counted ? " after its checks" : " (the checks it printed before are not counted)");
        checks += end.counts.checks;
        failures += end.counts.failures;
        std::printf("section %s: %d checks, %d failed, %.1f s\n", s.name, end.counts.checks, end.counts.failures,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    minicpm_test::n_checks() += checks;
    minicpm_test::n_failures() += failures;
    return minicpm_test::finish();
}
