// The integer quantized-matmul kernels (cpu/qmatmul.h), every variant this CPU runs, against the plain
// dequantize-then-multiply op (ref_matmul, the specification):
//   1. integer part exact: unit scales and activations that quantize without rounding (each block's max |x| is
//      127) make every result an integer below 2^24, so each variant must equal the reference bit for bit;
//      the largest products (q8 -128 and 127 against -127 / 127) included;
//   2. random data: the error comes from quantizing activations to int8 per 32 columns alone; printed, bounded;
//   3. the round-to-nearest quantizer (q8 symmetric, q4 asymmetric): |w - dequant(w)| <= scale / 2;
//   4. GPTQ (AutoGPTQ v1) pack -> gptq_to_q4 round trip, symmetric and asymmetric, with a g_idx permutation;
//   5. the packed copy unpacks to the stored bytes, and with the stored rows dropped every path stays exact.
// Cases 1 and 2 run each variant on the stored rows and, where it has a packed kernel, again on the packed copy
// (cpu/qpack.h) the CPU backend prepares ("+packed" in the case name).
#include "core/status.h"
#include "core/threadpool.h"
#include "cpu/cpu-common.h"
#include "cpu/ops-ref.h"
#include "cpu/qmatmul.h"
#include "model/quantize.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace minicpm;

namespace {

int          g_failures = 0, g_cases = 0;
std::mt19937 g_rng(77);

bool check(bool ok, const char * fmt, ...) __attribute__((format(printf, 2, 3)));
bool check(bool ok, const char * fmt, ...) {
    ++g_cases;
    if (!ok) ++g_failures;
    std::printf("%-4s ", ok ? "ok" : "FAIL");
    va_list ap;
    va_start(ap, fmt);
    std::vprintf(fmt, ap);
    va_end(ap);
    std::printf("\n");
    return ok;
}

struct qw {
    std::vector<uint8_t>  data, zeros, pack;
    std::vector<uint16_t> scales;
    tensor_desc           d;
};

// Sets w.d.packed to a packed copy of w's current values (64-byte aligned inside w.pack) when packed is true.
void pack_weights(qw & w, bool packed) {
    w.d.packed = nullptr;
    if (!packed) return;
    w.pack.assign(qpack_bytes(w.d) + 64, 0);
    uint8_t * p = w.pack.data() + (64 - uintptr_t(w.pack.data()) % 64) % 64;
    qpack(w.d, p);
    w.d.packed = p;
}

const char * path_name(bool packed) { return packed ? "+packed" : ""; }

// Random integer weights; scales = 1 when unit, else random in [0.002, 0.05].
qw random_weights(dtype t, int64_t N, int64_t K, int32_t group, bool zeros, bool unit) {
    qw w;
    const int64_t G = (K + group - 1) / group;
    w.data.assign(t == dtype::q8 ? size_t(N * K) : size_t(N * K + 1) / 2, 0);
    for (int64_t i = 0; i < N * K; ++i) {
        if (t == dtype::q8) w.data[size_t(i)] = uint8_t(int8_t(int32_t(g_rng() % 255) - 127));
        else w.data[size_t(i / 2)] |= uint8_t((g_rng() % 16) << (4 * (i % 2)));
    }
    std::uniform_real_distribution<float> sd(0.002f, 0.05f);
    w.scales.resize(size_t(N * G));
    for (auto & s : w.scales) s = f32_to_f16(unit ? 1.0f : sd(g_rng));
    if (zeros) {
        w.zeros.resize(size_t(N * G));
        for (auto & z : w.zeros) z = uint8_t(g_rng() % 16);
    }
    w.d.type = t;
    w.d.rows = N;
    w.d.cols = K;
    w.d.data = w.data.data();
    w.d.group_size = group;
    w.d.scale_type = dtype::f16;
    w.d.scales = w.scales.data();
    w.d.zeros = zeros ? w.zeros.data() : nullptr;
    return w;
}

double rel_err(const std::vector<float> & ref, const std::vector<float> & got, double * nmse) {
    double max_abs = 0, max_ref = 0, se = 0, sr = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        const double d = double(got[i]) - double(ref[i]);
        if (!std::isfinite(got[i])) return INFINITY;
        max_abs = std::max(max_abs, std::fabs(d));
        max_ref = std::max(max_ref, std::fabs(double(ref[i])));
        se += d * d;
        sr += double(ref[i]) * double(ref[i]);
    }
    *nmse = sr > 0 ? se / sr : se;
    return max_ref > 0 ? max_abs / max_ref : max_abs;
}

void test_exact(thread_pool & tp, const qmatmul_variant & v, bool packed) {
    struct c {
        dtype   t;
        int64_t N, K;
        int32_t group;
        bool    zeros;
    } cases[] = {{dtype::q8, 37, 256, 128, false}, {dtype::q8, 19, 192, 64, false}, {dtype::q8, 8, 128, 128, false},
                 {dtype::q8, 45, 192, 32, false},  {dtype::q8, 33, 128, 1 << 20, false},
                 {dtype::q4, 33, 256, 128, false}, {dtype::q4, 21, 320, 64, true},  {dtype::q4, 6, 128, 128, true},
                 {dtype::q4, 27, 256, 32, true},   {dtype::q4, 40, 192, 32, false},
                 // packed: 4 panels side by side at T = 1, then single ones, the last one short
                 {dtype::q8, 83, 256, 32, false},  {dtype::q4, 70, 192, 64, true},
                 // an odd number of 64-column steps (group 32), an odd number of 128-column groups
                 {dtype::q8, 21, 320, 32, false},  {dtype::q8, 50, 384, 128, false}, {dtype::q4, 29, 384, 128, true}};
    // Every T from 1 to 70: the packed kernels' paths (VNNI; AMX pipelined below 64 tokens, its q4 blocks
    // unpacked ahead in one pass up to 32 and whole panels from 33; AMX unpipelined from 64) and their edges (odd
    // N and T, a short last panel pair, a zero second token tile) in one line per case.
    for (const c & k : cases) {
        int64_t bad = 0, total = 0, first_bad_T = 0;
        for (int64_t T = 1; T <= 70; ++T) {
            qw w = random_weights(k.t, k.N, k.K, k.group, k.zeros, true);
            pack_weights(w, packed);
            // integers in [-127, 127], each 32-block holding a +-127 so its scale is exactly 1
            std::vector<float> x(size_t(T * k.K));
            for (size_t i = 0; i < x.size(); ++i) x[i] = float(int32_t(g_rng() % 255) - 127);
            for (size_t b = 0; b < x.size(); b += 32) x[b + g_rng() % 32] = (g_rng() & 1) ? 127.0f : -127.0f;
            std::vector<float> ref(size_t(T * k.N)), got(ref.size(), NAN);
            ref_matmul(ref.data(), x.data(), w.d, T);
            qmatmul(v, tp, got.data(), x.data(), w.d, T);
            int64_t bad_T = 0;
            for (size_t i = 0; i < ref.size(); ++i) bad_T += ref[i] != got[i];
            if (bad_T > 0 && first_bad_T == 0) first_bad_T = T;
            bad += bad_T;
            total += int64_t(ref.size());
        }
        check(bad == 0, "exact %s%-14s %s g=%d%s N=%lld K=%lld T=1..70: %lld of %lld results differ (first differing T: %lld, 0 for none)",
              v.name, path_name(packed), dtype_name(k.t), k.group, k.zeros ? " zeros" : "", (long long) k.N,
              (long long) k.K, (long long) bad, (long long) total, (long long) first_bad_T);
    }
}

// The largest products: q8 weights of -128 (a stored int8 may hold it) and 127 against activations of -127 / 127,
// signs chosen so every product of a row has the same sign; no partial sum of any variant may overflow.
void test_extremes(thread_pool & tp, const qmatmul_variant & v, bool packed) {
    const int64_t N = 4, K = 128, T = 3;
    qw w = random_weights(dtype::q8, N, K, 128, false, true);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) w.data[size_t(n * K + k)] = uint8_t(int8_t(n % 2 ? 127 : -128));
    pack_weights(w, packed);
    std::vector<float> x(size_t(T * K));
    for (int64_t t = 0; t < T; ++t)
        for (int64_t k = 0; k < K; ++k) x[size_t(t * K + k)] = t == 1 ? 127.0f : -127.0f;
    std::vector<float> ref(size_t(T * N)), got(ref.size(), NAN);
    ref_matmul(ref.data(), x.data(), w.d, T);
    qmatmul(v, tp, got.data(), x.data(), w.d, T);
    int64_t bad = 0;
    for (size_t i = 0; i < ref.size(); ++i) bad += ref[i] != got[i];
    check(bad == 0, "extremes %s%-9s q8 -128/127 x -127/127 N=%lld K=%lld T=%lld: %lld of %zu differ (y[0] %.0f, want %.0f)",
          v.name, path_name(packed), (long long) N, (long long) K, (long long) T, (long long) bad, ref.size(), got[0], ref[0]);
}

void test_random(thread_pool & tp, const qmatmul_variant & v, bool packed) {
    struct c {
        dtype   t;
        int64_t N, K;
        int32_t group;
        bool    zeros;
    } cases[] = {{dtype::q8, 40, 512, 128, false}, {dtype::q8, 17, 256, 256, false}, {dtype::q8, 50, 256, 32, false},
                 {dtype::q4, 35, 512, 128, true},  {dtype::q4, 16, 384, 64, false},  {dtype::q4, 24, 256, 256, true},
                 {dtype::q4, 33, 320, 32, true}};
    for (const c & k : cases)
        for (int64_t T : {1, 4, 7, 33, 64}) {
            qw w = random_weights(k.t, k.N, k.K, k.group, k.zeros, false);
            pack_weights(w, packed);
            std::uniform_real_distribution<float> xd(-2.0f, 2.0f);
            std::vector<float> x(size_t(T * k.K));
            for (auto & e : x) e = xd(g_rng);
            std::vector<float> ref(size_t(T * k.N)), got(ref.size(), NAN);
            ref_matmul(ref.data(), x.data(), w.d, T);
            qmatmul(v, tp, got.data(), x.data(), w.d, T);
            double nmse = 0;
            const double rel = rel_err(ref, got, &nmse);
            // int8 activations per 32: relative step 1/127 per element; random-walk sums give NMSE ~1e-5.
            check(nmse < 1e-4 && rel < 2e-2, "random %s%-14s %s g=%d%s N=%lld K=%lld T=%lld: max rel %.3e nmse %.3e (thr 1e-4)",
                  v.name, path_name(packed), dtype_name(k.t), k.group, k.zeros ? " zeros" : "", (long long) k.N, (long long) k.K,
                  (long long) T, rel, nmse);
        }
}

// qunpack_rows gives back the stored bytes the packing was made from: every row, whole and in ranges that
// start and end inside panels (N not a multiple of 16), q8 with -128 and q4 with every nibble.
void test_unpack() {
    for (dtype t : {dtype::q8, dtype::q4})
        for (int64_t N : {5, 16, 37}) {
            qw w = random_weights(t, N, 192, 64, t == dtype::q4, false);
            if (t == dtype::q8) w.data[3] = 0x80;
            pack_weights(w, true);
            const size_t         row = size_t(t == dtype::q8 ? 192 : 96);
            std::vector<uint8_t> got(w.data.size(), 0x5a);
            qunpack_rows(w.d, 0, N, got.data());
            int64_t bad = 0;
            for (size_t i = 0; i < got.size(); ++i) bad += got[i] != w.data[i];
            const int64_t r0 = N / 3, nr = N - N / 3 - 1;
            std::vector<uint8_t> part(size_t(nr) * row, 0xa5);
            qunpack_rows(w.d, r0, nr, part.data());
            for (size_t i = 0; i < part.size(); ++i) bad += part[i] != w.data[size_t(r0) * row + i];
            check(bad == 0, "unpack %s N=%lld K=192 (rows 0..%lld and %lld..%lld): %lld bytes differ from the stored ones",
                  dtype_name(t), (long long) N, (long long) N - 1, (long long) r0, (long long) (r0 + nr - 1), (long long) bad);
        }
}

// Stored rows dropped (data nullptr, as the model does once a projection is packed): every variant, including
// those without packed kernels and their batched paths, and the plain op itself still give the exact results.
void test_dropped(thread_pool & tp, const qmatmul_variant & v) {
    for (dtype t : {dtype::q8, dtype::q4})
        for (int64_t T : {1, 9, 70}) {
            qw w = random_weights(t, 45, 256, 64, t == dtype::q4, true);
            std::vector<float> x(size_t(T * 256));
            for (size_t i = 0; i < x.size(); ++i) x[i] = float(int32_t(g_rng() % 255) - 127);
            for (size_t b = 0; b < x.size(); b += 32) x[b + g_rng() % 32] = 127.0f;
            std::vector<float> ref(size_t(T * 45)), got(ref.size(), NAN), plain(ref.size(), NAN);
            ref_matmul(ref.data(), x.data(), w.d, T);
            pack_weights(w, true);
            w.d.data = nullptr;
            qmatmul(v, tp, got.data(), x.data(), w.d, T);
            ref_matmul(plain.data(), x.data(), w.d, T);
            int64_t bad = 0, bad_plain = 0;
            for (size_t i = 0; i < ref.size(); ++i) bad += ref[i] != got[i], bad_plain += ref[i] != plain[i];
            check(bad == 0 && bad_plain == 0, "dropped rows %-14s %s N=45 K=256 T=%lld: %lld of %zu differ (plain op %lld)",
                  v.name, dtype_name(t), (long long) T, (long long) bad, ref.size(), (long long) bad_plain);
        }
}

// On the packed copy a batch gives every row the same bits as that row alone (the batch kernels keep the
// single-row kernel's order of f32 operations), so a prompt, a decode step and a speculative verify agree; random
// scales and activations, so that any other order would round differently.
void test_rows_match(thread_pool & tp, const qmatmul_variant & v) {
    for (dtype t : {dtype::q8, dtype::q4})
        for (int32_t group : {32, 128})
            for (int64_t T : {2, 9, 16, 37, 70}) {
                const int64_t N = 83, K = 384;
                qw w = random_weights(t, N, K, group, t == dtype::q4 && group == 32, false);
                pack_weights(w, true);
                std::uniform_real_distribution<float> xd(-2.0f, 2.0f);
                std::vector<float> x(size_t(T * K));
                for (auto & e : x) e = xd(g_rng);
                std::vector<float> batch(size_t(T * N), NAN), rows(batch.size(), NAN);
                qmatmul(v, tp, batch.data(), x.data(), w.d, T);
                for (int64_t r = 0; r < T; ++r) qmatmul(v, tp, rows.data() + r * N, x.data() + r * K, w.d, 1);
                int64_t bad = 0;
                for (size_t i = 0; i < rows.size(); ++i) bad += std::memcmp(&rows[i], &batch[i], 4) != 0;
                check(bad == 0, "rows %s+packed %s g%d N=%lld K=%lld T=%lld: %lld of %zu results differ in bits from row-at-a-time",
                      v.name, dtype_name(t), group, (long long) N, (long long) K, (long long) T, (long long) bad, rows.size());
            }
}

// A packed variant's own activation quantizer against qpack_quantize (the definition): the same bits, on values
// of every magnitude, an all-zero block, exact ties (x.5 after scaling) and a group that ends early.
void test_quantize(const qmatmul_variant & v) {
    for (int64_t group : {32, 64, 128, 1 << 20}) {
        const int64_t K = 320, G = (K + group - 1) / group;
        std::vector<float> x(static_cast<size_t>(K));
        std::uniform_real_distribution<float> ud(-1.0f, 1.0f);
        for (int64_t k = 0; k < K; ++k) x[size_t(k)] = ud(g_rng) * std::ldexp(1.0f, int(g_rng() % 40) - 20);
        for (int64_t k = 32; k < 64; ++k) x[size_t(k)] = 0.0f;
        for (int64_t k = 64; k < 96; ++k) x[size_t(k)] = float(k - 80) + 0.5f;  // max 15.5 * 127/15.5: ties
        x[64] = 127.0f;
        std::vector<int8_t> qr(static_cast<size_t>(K)), qv(static_cast<size_t>(K));
        std::vector<float>  sr(static_cast<size_t>(K / 32)), sv(sr.size()), gr(static_cast<size_t>(G)), gv(gr.size());
        qpack_quantize(x.data(), K, group, qr.data(), sr.data(), gr.data());
        v.packed->quantize(x.data(), K, group, qv.data(), sv.data(), gv.data());
        int64_t bad = 0;
        for (int64_t k = 0; k < K; ++k) bad += qr[size_t(k)] != qv[size_t(k)];
        for (size_t b = 0; b < sr.size(); ++b) bad += std::memcmp(&sr[b], &sv[b], 4) != 0;
        for (size_t g = 0; g < gr.size(); ++g) bad += std::memcmp(&gr[g], &gv[g], 4) != 0;
        check(bad == 0, "quantize %-14s K=%lld group %lld: %lld of %lld values differ from qpack_quantize", v.name,
              (long long) K, (long long) group, (long long) bad, (long long) (K + K / 32 + G));
    }
}

void test_rtn() {
    for (dtype t : {dtype::q8, dtype::q4})
        for (int32_t group : {64, 128, 1 << 20}) {
            const int64_t N = 13, K = 256;
            std::vector<uint16_t> bf(size_t(N * K));
            std::normal_distribution<float> nd(0.0f, 0.02f);
            for (auto & b : bf) b = f32_to_bf16(nd(g_rng));
            bf[5] = f32_to_bf16(0.0f);
            tensor_desc src;
            src.type = dtype::bf16;
            src.rows = N;
            src.cols = K;
            src.data = bf.data();
            const quantized_tensor q = quantize_rtn(src, t, group, "test");
            const tensor_desc      d = q.desc();
            std::vector<float>     row(static_cast<size_t>(K));
            double worst = 0, err2 = 0, ref2 = 0;
            for (int64_t n = 0; n < N; ++n) {
                dequantize_row(d, n, row.data());
                for (int64_t k = 0; k < K; ++k) {
                    const float s = load_f32(d.scales, d.scale_type, n * d.n_groups() + k / d.group_size);
                    const double e = std::fabs(double(row[size_t(k)]) - double(bf16_to_f32(bf[size_t(n * K + k)])));
                    worst = std::max(worst, e / (double(s) * 0.5 + 1e-30));
                    err2 += e * e;
                    ref2 += double(bf16_to_f32(bf[size_t(n * K + k)])) * bf16_to_f32(bf[size_t(n * K + k)]);
                }
            }
            check(worst <= 1.0001, "rtn %s group %d: max |w - dq(w)| = %.4f x scale/2, weight NMSE %.3e", dtype_name(t),
                  d.group_size, worst, err2 / ref2);
        }
}

// AutoGPTQ v1 packing of q4 values (the test's own packer, independent of gptq_to_q4).
void test_gptq_roundtrip() {
    for (bool sym : {true, false})
        for (bool act_order : {false, true}) {
            const int64_t N = 24, K = 256;
            const int32_t group = 64;
            const int64_t G = K / group;
            std::vector<int32_t> q(size_t(N * K)), g_idx(static_cast<size_t>(K));
            for (auto & v : q) v = int32_t(g_rng() % 16);
            for (int64_t k = 0; k < K; ++k) g_idx[size_t(k)] = int32_t(k / group);
            if (act_order) std::shuffle(g_idx.begin(), g_idx.end(), g_rng);
            std::vector<int32_t>  qweight(size_t(K / 8 * N), 0), qzeros(size_t(G * N / 8), 0);
            std::vector<uint16_t> scales(size_t(G * N));
            std::vector<uint8_t>  zero(size_t(N * G));
            for (int64_t n = 0; n < N; ++n)
                for (int64_t k = 0; k < K; ++k)
                    qweight[size_t(k / 8 * N + n)] |= int32_t(uint32_t(q[size_t(n * K + k)]) << (4 * (k % 8)));
            for (int64_t g = 0; g < G; ++g)
                for (int64_t n = 0; n < N; ++n) {
                    zero[size_t(n * G + g)] = sym ? 8 : uint8_t(1 + g_rng() % 15);
                    qzeros[size_t(g * N / 8 + n / 8)] |= int32_t(uint32_t(zero[size_t(n * G + g)] - 1) << (4 * (n % 8)));
                    scales[size_t(g * N + n)] = f32_to_f16(0.01f + 0.001f * float(g_rng() % 10));
                }
            const quantized_tensor t =
                gptq_to_q4(qweight.data(), qzeros.data(), scales.data(), g_idx.data(), N, K, group, "test");
            int64_t bad = 0;
            for (int64_t n = 0; n < N; ++n)
                for (int64_t k = 0; k < K; ++k) {
                    const int64_t i = n * K + k;
                    const int32_t v = (t.data[size_t(i / 2)] >> (4 * (i % 2))) & 0xf;
                    const int64_t g = g_idx[size_t(k)];
                    const int32_t z = t.zeros.empty() ? 8 : t.zeros[size_t(n * G + g)];
                    bad += v != q[size_t(i)] || z != zero[size_t(n * G + g)] ||
                           t.scales[size_t(n * G + g)] != scales[size_t(g * N + n)];
                }
            check(bad == 0 && t.zeros.empty() == sym && t.perm.empty() == !act_order,
                  "gptq v1 unpack %s%s: %lld mismatches, zeros %s, perm %s", sym ? "sym" : "asym",
                  act_order ? " desc_act" : "", (long long) bad, t.zeros.empty() ? "none" : "stored",
                  t.perm.empty() ? "none" : "g_idx");
            bool threw = false;
            g_idx[3] = int32_t(G);
            try {
                gptq_to_q4(qweight.data(), qzeros.data(), scales.data(), g_idx.data(), N, K, group, "test");
            } catch (const error &) {
                threw = true;
            }
            check(threw, "gptq g_idx out of range refused");
        }
}

// Rough speed per variant on a decode-shaped and a prefill-shaped matmul (informational).
void bench(thread_pool & tp, const qmatmul_variant & v, bool packed) {
    for (dtype t : {dtype::q8, dtype::q4}) {
        qw w = random_weights(t, 1024, 1024, 128, t == dtype::q4, false);
        pack_weights(w, packed);
        for (int64_t T : {1, 8, 64, 256}) {
            std::vector<float> x(size_t(T * 1024), 0.5f), y(size_t(T * 1024));
            int reps = 0;
            const auto t0 = std::chrono::steady_clock::now();
            double el = 0;
            do {
                qmatmul(v, tp, y.data(), x.data(), w.d, T);
                ++reps;
                el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            } while (el < 0.05);
            std::printf("info %s%-14s %s 1024x1024 g128 T=%-3lld %8.1f us  %7.1f GMAC/s  %6.1f GB/s of weights\n", v.name,
                        path_name(packed), dtype_name(t), (long long) T, el / reps * 1e6, 1024.0 * 1024 * T * reps / el / 1e9,
                        double(w.d.bytes()) * reps / el / 1e9);
        }
    }
}

// --bench: every (variant, layout) of the list takes turns, sample after sample, so that all see the same
// background load (the machine may be shared; best of 11 samples each): decode-sized batches through 32 copies of
// a 4096 x 1024 matrix (the MiniCPM4-0.5B MLP shape; weights come from memory, tasks as small as the model's) and
// a 512-token prefill through 2 copies. Informational; not part of the test run.
struct bench_run {
    const qmatmul_variant * v;
    bool                    packed;
};

void bench_interleaved(thread_pool & tp, const std::vector<bench_run> & runs) {
    const int64_t N = 4096, K = 1024;
    for (dtype t : {dtype::q8, dtype::q4})
        for (int32_t group : {32, 128}) {
            std::vector<qw>          ws(32);
            std::vector<tensor_desc> plain(ws.size()), packed(ws.size());
            for (size_t i = 0; i < ws.size(); ++i) {
                ws[i] = random_weights(t, N, K, group, false, false);
                pack_weights(ws[i], true);
                packed[i] = ws[i].d;
                plain[i] = ws[i].d;
                plain[i].packed = nullptr;
            }
            for (int64_t T : {1, 2, 4, 8, 16, 32, 512}) {
                const size_t       copies = T == 512 ? 2 : ws.size();
                std::vector<float> x(size_t(T * K), 0.5f), y(size_t(T * N));
                std::vector<double> best(runs.size(), 1e30);
                for (int r = 0; r < 12; ++r)
                    for (size_t i = 0; i < runs.size(); ++i) {
                        const auto t0 = std::chrono::steady_clock::now();
                        for (size_t c = 0; c < copies; ++c)
                            qmatmul(*runs[i].v, tp, y.data(), x.data(), runs[i].packed ? packed[c] : plain[c], T);
                        const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                        if (r > 0) best[i] = std::min(best[i], el);  // sample 0 warms up
                    }
                for (size_t i = 0; i < runs.size(); ++i)
                    std::printf("bench %s%-14s %s g%-3d %zu x %lldx%lld T=%-3lld: %8.3f ms  %6.1f GB/s of weights  %6.1f GMAC/s\n",
                                runs[i].v->name, path_name(runs[i].packed), dtype_name(t), group, copies, (long long) N,
                                (long long) K, (long long) T, best[i] * 1e3,
                                double(ws[0].d.bytes()) * double(copies) / best[i] / 1e9,
                                double(N * K * T) * double(copies) / best[i] / 1e9);
            }
        }
}

}  // namespace

int main(int argc, char ** argv) {
    // --bench [VARIANT[,VARIANT...]]: the interleaved timings only (of the variants named), no tests.
    const bool   large = argc > 1 && std::string(argv[1]) == "--bench";
    const char * only = argc > 2 ? argv[2] : nullptr;
    thread_pool tp(2);
    const qmatmul_variant * v[8];
    const int n = std::min(qmatmul_variants(v, 8), 8);
    std::printf("quantized matmul variants:");
    for (int i = 0; i < n; ++i) std::printf(" [%s]", v[i]->name);
    std::printf("\n");
    test_rtn();
    test_gptq_roundtrip();
    // A variant with a batched path is also run with that path at every T (min_rows 1, and its packed batch
    // kernel too), so that its tile edges are tested at small T too and the two paths can be timed side by side.
    std::vector<qgemm_kernels>   forced_gemm(size_t(n) + 1);
    std::vector<qpacked_kernels> forced_packed(size_t(n) + 1);
    std::vector<qmatmul_variant> forced(size_t(n) + 1);
    std::vector<std::string>     forced_names(size_t(n) + 1);
    std::vector<const qmatmul_variant *> all(v, v + n);
    for (int i = 0; i < n; ++i)
        if (v[i]->gemm != nullptr) {
            forced_gemm[size_t(i)] = *v[i]->gemm;
            forced_gemm[size_t(i)].min_rows = 1;
            forced_names[size_t(i)] = std::string(v[i]->name) + "(T>=1)";
            const qpacked_kernels * pk = v[i]->packed;
            if (pk != nullptr && pk->batch != nullptr) {
                forced_packed[size_t(i)] = *pk;
                forced_packed[size_t(i)].batch_min_rows = 1;
                forced_packed[size_t(i)].batch_min_rows_q4 = 1;
                pk = &forced_packed[size_t(i)];
            }
            forced[size_t(i)] = {forced_names[size_t(i)].c_str(), v[i]->features, v[i]->dot, &forced_gemm[size_t(i)], pk};
            all.push_back(&forced[size_t(i)]);
        }
    if (large) {
        std::vector<bench_run> runs;
        const std::string list = only ? "," + std::string(only) + "," : "";
        for (const qmatmul_variant * q : all)
            if (only ? list.find("," + std::string(q->name) + ",") != std::string::npos : std::strcmp(q->name, "portable") != 0)
                for (bool packed : {false, true})
                    if (!packed || q->packed) runs.push_back({q, packed});
        bench_interleaved(tp, runs);
        return 0;
    }
    test_unpack();
    {
        // A short last group (K = 320, groups of 128): the integer kernels leave it to the dequantizing op.
        const qw w = random_weights(dtype::q8, 50, 320, 128, false, true);
        check(!qmatmul_supported(w.d) && qmatmul_supported(random_weights(dtype::q8, 50, 384, 128, false, true).d),
              "q8 K=320 group 128 (a short last group) not for the integer kernels: %s; K=384 group 128 is",
              qmatmul_supported(w.d) ? "taken" : "declined");
    }
    for (const qmatmul_variant * q : all) test_dropped(tp, *q);
    for (const qmatmul_variant * q : all)
        for (bool packed : {false, true})
            if (!packed || q->packed) {
                if (packed) test_quantize(*q);
                if (packed) test_rows_match(tp, *q);
                test_exact(tp, *q, packed);
                test_extremes(tp, *q, packed);
                test_random(tp, *q, packed);
            }
    for (const qmatmul_variant * q : all)
        for (bool packed : {false, true})
            if (!packed || q->packed) bench(tp, *q, packed);
    std::printf("%d cases, %d failed\n", g_cases, g_failures);
    return g_failures == 0 ? 0 : 1;
}
