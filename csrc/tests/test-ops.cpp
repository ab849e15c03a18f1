// Every op of every compiled backend against the reference op (the specification) on random inputs: each CPU
// kernel family this machine runs (AMX, AVX-512, AVX2, portable) as its own backend, every weight and KV
// format, token trees (ancestor masks), sizes that are not multiples of the SIMD width. A backend this build or
// machine lacks (CUDA) is reported as SKIPPED. Prints max abs error, max rel error (max |diff| / max |ref|) and
// NMSE per case and fails when the NMSE exceeds the threshold of the precision path.
#include "core/backend.h"
#include "core/status.h"
#include "core/threadpool.h"
#include "cpu/cpu-common.h"
#include "cpu/ops-fast.h"
#include "cpu/ops-ref.h"
#include "cpu/qmatmul.h"

#include <memory>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using namespace minicpm;

namespace {

// NMSE thresholds per precision path.
constexpr double k_thr_exact = 1e-10;  // f32 products and accumulation; only summation order differs
// Activations rounded to bf16 (relative step 2^-9), exact products, f32 sums: the AMX and BF16 dot-product
// (vdpbf16ps, bfdot/bfmmla) paths. Measured ~4e-6 on uniform random inputs.
constexpr double k_thr_bf16_act = 2e-5;
// BF16 dot-product attention (attention_uses_bf16): q * scale and the softmax weights rounded to bf16, bf16 K
// and V as stored, f32 accumulation. Stated bound; the measured NMSE is printed per case.
constexpr double k_thr_bf16_attn = 2e-5;  // measured <= 4e-6 on these inputs

double attention_thr(const cpu_kernel_table & kt, dtype kv, int32_t hd) {
    return attention_uses_bf16(kt, kv, hd) ? k_thr_bf16_attn : k_thr_exact;
}
const char * attention_path(const cpu_kernel_table & kt, dtype kv, int32_t hd) {
    return attention_uses_bf16(kt, kv, hd) ? "dpbf16" : "f32";
}

int g_failures = 0;
int g_cases = 0;
std::mt19937 g_rng(1234);

std::vector<float> random_floats(size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto & x : v) x = d(g_rng);
    return v;
}

// Raw storage of values in dtype t.
std::vector<uint8_t> to_dtype(const std::vector<float> & v, dtype t) {
    std::vector<uint8_t> out(v.size() * dtype_size(t));
    for (size_t i = 0; i < v.size(); ++i) store_f32(out.data(), t, int64_t(i), v[i]);
    return out;
}

void check(const std::string & name, const float * ref, const float * got, size_t n, double thr) {
    double max_abs = 0, max_ref = 0, se = 0, sr = 0;
    bool finite = true;
    for (size_t i = 0; i < n; ++i) {
        const double d = double(got[i]) - double(ref[i]);
        if (!std::isfinite(got[i])) finite = false;
        max_abs = std::max(max_abs, std::fabs(d));
        max_ref = std::max(max_ref, std::fabs(double(ref[i])));
        se += d * d;
        sr += double(ref[i]) * double(ref[i]);
    }
    const double nmse = sr > 0 ? se / sr : se;
    const double max_rel = max_ref > 0 ? max_abs / max_ref : max_abs;
    const bool ok = finite && nmse <= thr && n > 0;
    ++g_cases;
    if (!ok) ++g_failures;
    std::printf("%-4s %-62s max_abs=%.3e max_rel=%.3e nmse=%.3e (thr %.0e)\n", ok ? "ok" : "FAIL", name.c_str(),
                max_abs, max_rel, nmse, thr);
}

std::vector<const cpu_kernel_table *> variants() {
    const cpu_kernel_table * v[8];
    const int n = cpu_kernel_variants(v, 8);
    return std::vector<const cpu_kernel_table *>(v, v + std::min(n, 8));
}

std::unique_ptr<backend> g_ref;                   // the reference ops
std::vector<std::unique_ptr<backend>> g_backends;  // every compiled backend / kernel family runnable here

tensor_desc plain(dtype t, int64_t rows, int64_t cols, const void * data) {
    tensor_desc d;
    d.type = t;
    d.rows = rows;
    d.cols = cols;
    d.data = data;
    return d;
}

void test_matmul(thread_pool & tp) {
    const dtype types[] = {dtype::bf16, dtype::f16, dtype::f32};
    // {9, 8200}: from T = 2 the split x no longer fits the AVX-512 decode kernel's stack buffer (fallback path),
    // the AVX2 decode kernel splits K into slices, and the BF16 dot-product kernels and the AVX2 prefill kernel
    // split T into several token chunks (and K into panel slices). Odd N and K everywhere but {128, 1024};
    // T covers every remainder of the 6-token (x86) and 4-token (bfmmla) tiles.
    const int64_t shapes[][2] = {{77, 1000}, {128, 1024}, {33, 64}, {100, 4096}, {5, 40}, {9, 8200}, {6, 7}};
    const int64_t Ts[] = {1, 2, 3, 4, 5, 6, 7, 8, 13, 17, 33, 100};
    for (const cpu_kernel_table * kt : variants()) {
        for (dtype wt : types) {
            for (const auto & s : shapes) {
                const int64_t N = s[0], K = s[1];
                const auto wf = random_floats(size_t(N * K));
                const auto wraw = to_dtype(wf, wt);
                const tensor_desc w = plain(wt, N, K, wraw.data());
                for (int64_t T : Ts) {
                    if (N * K * T > 20000000) continue;  // keeps the scalar reference quick
                    const auto x = random_floats(size_t(T * K));
                    std::vector<float> yr(size_t(T * N)), yf(size_t(T * N), NAN);
                    ref_matmul(yr.data(), x.data(), w, T);
                    fast_matmul(*kt, tp, yf.data(), x.data(), w, T);
                    const matmul_path path = select_matmul_path(*kt, wt, T);
                    char name[128];
                    std::snprintf(name, sizeof(name), "matmul %s/%s w=%s N=%lld K=%lld T=%lld", kt->name,
                                  matmul_path_name(path), dtype_name(wt), (long long) N, (long long) K,
                                  (long long) T);
                    check(name, yr.data(), yf.data(), yr.size(),
                          path == matmul_path::fma ? k_thr_exact : k_thr_bf16_act);
                }
            }
        }
    }
}

struct attn_case {
    int32_t n_head, n_head_kv, hd;
    std::vector<std::pair<int32_t, int32_t>> segs;  // (n_past, n_rows)
};

void test_kv_and_attention(thread_pool & tp) {
    const attn_case cases[] = {
        {4, 4, 64, {{0, 1}, {63, 1}, {64, 1}, {65, 1}}},       // decode rows across block boundaries, group 1
        {16, 2, 64, {{0, 70}, {63, 3}, {130, 1}}},             // MiniCPM4-0.5B heads: group 8, prefill + decode
        {32, 2, 128, {{0, 17}, {64, 2}, {65, 65}}},            // MiniCPM4-8B-like group 16, hd 128
        {6, 3, 48, {{1, 5}, {127, 1}}},                        // head dim not a multiple of 64
        {4, 2, 40, {{3, 2}, {64, 1}}},                         // not a multiple of 16 (the exact task runs)
        {2, 1, 18, {{0, 3}, {60, 5}}},                         // nor of 4 (vector tails of the ARM64 KV widening)
    };
    const dtype kv_types[] = {dtype::f32, dtype::bf16, dtype::f16};
    for (const attn_case & c : cases) {
        for (dtype kvt : kv_types) {
            // Pool blocks handed out in a shuffled order, so block tables are not contiguous.
            int32_t n_blocks = 0, T = 0;
            for (auto & s : c.segs) {
                n_blocks += (s.first + s.second + 63) / 64;
                T += s.second;
            }
            std::vector<int32_t> order(static_cast<size_t>(n_blocks));
            std::iota(order.begin(), order.end(), 0);
            std::shuffle(order.begin(), order.end(), g_rng);
            std::vector<std::vector<int32_t>> tables;
            std::vector<kv_segment> segs;
            int32_t next = 0, row = 0;
            for (auto & s : c.segs) {
                const int32_t nb = (s.first + s.second + 63) / 64;
                tables.emplace_back(order.begin() + next, order.begin() + next + nb);
                next += nb;
                segs.push_back({row, s.second, s.first, nullptr, nullptr});
                row += s.second;
            }
            for (size_t i = 0; i < segs.size(); ++i) segs[i].blocks = tables[i].data();

            const size_t pool_elems = size_t(n_blocks) * c.n_head_kv * 64 * c.hd;
            // Past positions hold random values; the rows of this batch are written by kv_store.
            const auto kinit = to_dtype(random_floats(pool_elems), kvt);
            const auto vinit = to_dtype(random_floats(pool_elems), kvt);
            std::vector<uint8_t> kr = kinit, vr = vinit, kf = kinit, vf = vinit;
            kv_layer kv_ref = {kvt, kr.data(), vr.data(), c.n_head_kv, c.hd};
            kv_layer kv_fast = {kvt, kf.data(), vf.data(), c.n_head_kv, c.hd};
            const auto k = random_floats(size_t(T) * c.n_head_kv * c.hd);
            const auto v = random_floats(size_t(T) * c.n_head_kv * c.hd);
            ref_kv_store(kv_ref, k.data(), v.data(), segs.data(), int32_t(segs.size()));
            fast_kv_store(tp, kv_fast, k.data(), v.data(), segs.data(), int32_t(segs.size()));
            const bool same = kr == kf && vr == vf;
            ++g_cases;
            if (!same) ++g_failures;
            std::printf("%-4s kv_store kv=%s nh=%d nkv=%d hd=%d: pools %s\n", same ? "ok" : "FAIL", dtype_name(kvt),
                        c.n_head, c.n_head_kv, c.hd, same ? "byte-identical" : "DIFFER");

            const auto q = random_floats(size_t(T) * c.n_head * c.hd, -2.0f, 2.0f);
            const float scale = 1.0f / std::sqrt(float(c.hd));
            std::vector<float> outr(q.size());
            ref_attention(outr.data(), q.data(), kv_ref, segs.data(), int32_t(segs.size()), c.n_head, scale);
            for (const cpu_kernel_table * kt : variants()) {
                std::vector<float> outf(q.size(), NAN);
                fast_attention(*kt, tp, outf.data(), q.data(), kv_ref, segs.data(), int32_t(segs.size()), c.n_head,
                               scale);
                std::string segdesc;
                for (auto & s : c.segs) segdesc += " " + std::to_string(s.first) + "+" + std::to_string(s.second);
                char name[160];
                std::snprintf(name, sizeof(name), "attention %s/%s kv=%s nh=%d nkv=%d hd=%d segs(past+rows):%s",
                              kt->name, attention_path(*kt, kvt, c.hd), dtype_name(kvt), c.n_head, c.n_head_kv,
                              c.hd, segdesc.c_str());
                check(name, outr.data(), outf.data(), outr.size(), attention_thr(*kt, kvt, c.hd));
            }
        }
    }
}

// Token trees: each row's parent is an earlier row (or none); a row sees its ancestors. Every kernel family
// against the reference, plus the reference against itself with the all-ancestors mask of a causal chain
// (which must equal mask == nullptr exactly).
void test_tree_attention(thread_pool & tp) {
    struct tree_case {
        int32_t n_head, n_head_kv, hd, n_past, n_rows;
        dtype   kv;  // bf16: the BF16 dot-product attention sees the mask too
    };
    const tree_case cases[] = {{16, 2, 64, 0, 12, dtype::f32},   {16, 2, 64, 70, 33, dtype::f32},
                               {32, 2, 128, 60, 64, dtype::f32}, {4, 4, 48, 127, 9, dtype::f32},
                               {16, 2, 64, 70, 33, dtype::bf16}, {4, 4, 48, 127, 9, dtype::bf16}};
    for (const tree_case & c : cases) {
        const int32_t nb = (c.n_past + c.n_rows + 63) / 64;
        std::vector<int32_t> blocks(static_cast<size_t>(nb));
        std::iota(blocks.begin(), blocks.end(), 0);
        std::shuffle(blocks.begin(), blocks.end(), g_rng);
        std::vector<uint64_t> mask(static_cast<size_t>(c.n_rows)), chain(static_cast<size_t>(c.n_rows));
        for (int32_t j = 0; j < c.n_rows; ++j) {
            const int32_t parent = j == 0 ? -1 : int32_t(g_rng() % uint32_t(j + 1)) - 1;  // -1: a root
            mask[size_t(j)] = parent < 0 ? 0 : mask[size_t(parent)] | (uint64_t(1) << parent);
            chain[size_t(j)] = j == 0 ? 0 : (uint64_t(1) << j) - 1;
        }
        kv_segment tree = {0, c.n_rows, c.n_past, blocks.data(), mask.data()};
        kv_segment causal = {0, c.n_rows, c.n_past, blocks.data(), nullptr};
        kv_segment all_bits = {0, c.n_rows, c.n_past, blocks.data(), chain.data()};
        const size_t pool_elems = size_t(nb) * c.n_head_kv * 64 * c.hd;
        const auto kf = random_floats(pool_elems), vf = random_floats(pool_elems);
        auto kb = to_dtype(kf, c.kv), vb = to_dtype(vf, c.kv);
        kv_layer kv = {c.kv, kb.data(), vb.data(), c.n_head_kv, c.hd};
        const auto q = random_floats(size_t(c.n_rows) * c.n_head * c.hd, -2.0f, 2.0f);
        const float scale = 1.0f / std::sqrt(float(c.hd));
        std::vector<float> outr(q.size()), outc(q.size()), outa(q.size());
        ref_attention(outr.data(), q.data(), kv, &tree, 1, c.n_head, scale);
        ref_attention(outc.data(), q.data(), kv, &causal, 1, c.n_head, scale);
        ref_attention(outa.data(), q.data(), kv, &all_bits, 1, c.n_head, scale);
        char name[160];
        std::snprintf(name, sizeof(name), "attention ref: chain mask == causal, past %d rows %d", c.n_past, c.n_rows);
        check(name, outc.data(), outa.data(), outc.size(), 0.0);
        // The mask must matter: rows whose ancestors are not all earlier rows see less than causal rows do.
        int32_t n_tree_rows = 0, n_differ = 0;
        for (int32_t j = 0; j < c.n_rows; ++j) {
            if (mask[size_t(j)] == chain[size_t(j)]) continue;
            ++n_tree_rows;
            const size_t at = size_t(j) * c.n_head * c.hd;
            n_differ += !std::equal(outr.begin() + at, outr.begin() + at + size_t(c.n_head) * c.hd, outc.begin() + at);
        }
        ++g_cases;
        const bool mask_matters = n_tree_rows > 0 && n_differ == n_tree_rows;
        if (!mask_matters) ++g_failures;
        std::printf("%-4s attention ref: %d of %d rows off the causal chain differ from causal attention\n",
                    mask_matters ? "ok" : "FAIL", n_differ, n_tree_rows);
        for (const cpu_kernel_table * kt : variants()) {
            std::vector<float> outf(q.size(), NAN);
            fast_attention(*kt, tp, outf.data(), q.data(), kv, &tree, 1, c.n_head, scale);
            std::snprintf(name, sizeof(name), "attention %s/%s tree kv=%s nh=%d nkv=%d hd=%d past %d rows %d",
                          kt->name, attention_path(*kt, c.kv, c.hd), dtype_name(c.kv), c.n_head, c.n_head_kv, c.hd,
                          c.n_past, c.n_rows);
            check(name, outr.data(), outf.data(), outr.size(), attention_thr(*kt, c.kv, c.hd));
        }
    }
}

// Quantized weights: the reference q8 / q4 matmul equals an f32 matmul over weights dequantized here from the
// format's definition (core/tensor.h), and every backend equals the reference.
void test_quantized_matmul(thread_pool & tp) {
    struct q_case {
        dtype   type;
        int64_t N, K;
        int32_t group;
        bool    zeros, perm;
        dtype   scale_type;
    };
    const q_case cases[] = {
        {dtype::q8, 37, 256, 32, false, false, dtype::f32},  {dtype::q8, 64, 100, 32, false, false, dtype::f16},
        {dtype::q8, 16, 128, 128, false, false, dtype::f32}, {dtype::q4, 33, 256, 64, false, false, dtype::f16},
        {dtype::q4, 20, 130, 32, true, false, dtype::f32},   {dtype::q4, 24, 256, 128, true, true, dtype::f16},
    };
    for (const q_case & c : cases) {
        const int64_t G = (c.K + c.group - 1) / c.group;
        std::vector<int8_t>  q8(size_t(c.N * c.K));
        std::vector<uint8_t> q4(size_t((c.N * c.K + 1) / 2));
        std::vector<int32_t> qv(size_t(c.N * c.K));
        for (size_t i = 0; i < qv.size(); ++i) {
            qv[i] = c.type == dtype::q8 ? int32_t(g_rng() % 255) - 127 : int32_t(g_rng() % 16);
            if (c.type == dtype::q8) q8[i] = int8_t(qv[i]);
            else q4[i / 2] |= uint8_t(qv[i] << (4 * (i % 2)));
        }
        const auto sf = random_floats(size_t(c.N * G), 0.001f, 0.05f);
        const auto sraw = to_dtype(sf, c.scale_type);
        std::vector<uint8_t> zeros(size_t(c.N * G));
        for (auto & z : zeros) z = uint8_t(g_rng() % 16);
        std::vector<int32_t> perm(static_cast<size_t>(c.K));
        for (int64_t k = 0; k < c.K; ++k) perm[size_t(k)] = int32_t(k / c.group);
        if (c.perm) std::shuffle(perm.begin(), perm.end(), g_rng);  // desc_act: groups in activation order

        tensor_desc w = plain(c.type, c.N, c.K, c.type == dtype::q8 ? (const void *) q8.data() : q4.data());
        w.group_size = c.group;
        w.scale_type = c.scale_type;
        w.scales = sraw.data();
        w.zeros = c.zeros ? zeros.data() : nullptr;
        w.perm = c.perm ? perm.data() : nullptr;
        std::vector<float> wf(size_t(c.N * c.K));
        for (int64_t n = 0; n < c.N; ++n)
            for (int64_t k = 0; k < c.K; ++k) {
                const int64_t g = perm[size_t(k)];
                const float   s = load_f32(sraw.data(), c.scale_type, n * G + g);
                const int32_t z = c.type == dtype::q8 ? 0 : (c.zeros ? zeros[size_t(n * G + g)] : 8);
                wf[size_t(n * c.K + k)] = float(qv[size_t(n * c.K + k)] - z) * s;
            }
        const tensor_desc wd = plain(dtype::f32, c.N, c.K, wf.data());
        const size_t want_bytes = (c.type == dtype::q8 ? size_t(c.N * c.K) : size_t(c.N * c.K + 1) / 2) +
                                  size_t(c.N * G) * dtype_size(c.scale_type) + (c.zeros ? size_t(c.N * G) : 0) +
                                  (c.perm ? size_t(c.K) * 4 : 0);
        ++g_cases;
        if (w.bytes() != want_bytes) ++g_failures;
        std::printf("%-4s %s bytes: %zu (want %zu)\n", w.bytes() == want_bytes ? "ok" : "FAIL", dtype_name(c.type),
                    w.bytes(), want_bytes);
        for (int64_t T : {int64_t(1), int64_t(3), int64_t(17)}) {
            const auto x = random_floats(size_t(T * c.K));
            std::vector<float> yq(size_t(T * c.N)), yd(size_t(T * c.N));
            ref_matmul(yq.data(), x.data(), w, T);
            ref_matmul(yd.data(), x.data(), wd, T);
            char name[160];
            std::snprintf(name, sizeof(name), "matmul ref %s g=%d%s%s s=%s N=%lld K=%lld T=%lld vs dequantized f32",
                          dtype_name(c.type), c.group, c.zeros ? " zeros" : "", c.perm ? " perm" : "",
                          dtype_name(c.scale_type), (long long) c.N, (long long) c.K, (long long) T);
            check(name, yd.data(), yq.data(), yd.size(), k_thr_exact);
            const auto fams = variants();  // g_backends[i] runs family fams[i]
            for (size_t i = 0; i < g_backends.size(); ++i) {
                const auto &       be = g_backends[i];
                std::vector<float> yf(yq.size(), NAN);
                be->matmul(yf.data(), x.data(), w, T);
                std::snprintf(name, sizeof(name), "matmul %s/%s %s g=%d%s%s N=%lld K=%lld T=%lld", be->name(),
                              qmatmul_supported(w) ? qmatmul_for(*fams[i]).name : "dequant", dtype_name(c.type),
                              c.group, c.zeros ? " zeros" : "", c.perm ? " perm" : "", (long long) c.N,
                              (long long) c.K, (long long) T);
                // The integer kernels (cpu/qmatmul.h) quantize activations to int8 per 32: NMSE ~1e-5.
                check(name, yq.data(), yf.data(), yq.size(), qmatmul_supported(w) ? 1e-4 : k_thr_exact);
            }
        }
    }
}

void test_elementwise() {
    backend & ref = *g_ref;
    for (const auto & fb : g_backends) {
        backend &   fast = *fb;
        const std::string bn = fast.name();
        const dtype types[] = {dtype::f32, dtype::bf16, dtype::f16};
        for (dtype gt : types) {
            const int64_t H = 1000, T = 40;  // T * H crosses the threading threshold
            const auto x = random_floats(size_t(T * H), -3.0f, 3.0f);
            const auto graw = to_dtype(random_floats(size_t(H)), gt);
            const tensor_desc g = plain(gt, 1, H, graw.data());
            std::vector<float> yr(x.size()), yf = x;  // the fast op runs in place (y aliases x)
            ref.rms_norm(yr.data(), x.data(), g, T, 1e-6f);
            fast.rms_norm(yf.data(), yf.data(), g, T, 1e-6f);
            check(bn + " rms_norm in place g=" + dtype_name(gt) + " H=1000 T=40", yr.data(), yf.data(), yr.size(),
                  k_thr_exact);

            const int64_t V = 300, He = 77;
            const auto eraw = to_dtype(random_floats(size_t(V * He)), gt);
            const tensor_desc e = plain(gt, V, He, eraw.data());
            std::vector<int32_t> toks(50);
            for (auto & t : toks) t = int32_t(g_rng() % V);
            std::vector<float> er(toks.size() * He), ef(toks.size() * He);
            ref.embed(er.data(), toks.data(), e, int64_t(toks.size()), 12.0f);
            fast.embed(ef.data(), toks.data(), e, int64_t(toks.size()), 12.0f);
            check(bn + " embed e=" + dtype_name(gt) + " H=77 T=50", er.data(), ef.data(), er.size(), k_thr_exact);
        }
        {
            const int64_t T = 37;
            const int32_t nh = 3, hd = 64, max_pos = 200;
            const auto cs = random_floats(size_t(max_pos) * hd);
            std::vector<int32_t> pos(T);
            for (auto & p : pos) p = int32_t(g_rng() % max_pos);
            const auto x = random_floats(size_t(T) * nh * hd);
            std::vector<float> xr = x, xf = x;
            ref.rope(xr.data(), pos.data(), cs.data(), T, nh, hd);
            fast.rope(xf.data(), pos.data(), cs.data(), T, nh, hd);
            check(bn + " rope T=37 nh=3 hd=64", xr.data(), xf.data(), xr.size(), k_thr_exact);
        }
        {
            const int64_t n = 100003;
            const auto gate = random_floats(size_t(n), -20.0f, 20.0f);
            const auto up = random_floats(size_t(n));
            std::vector<float> outr(static_cast<size_t>(n)), outf = gate;  // out aliases gate
            ref.silu_mul(outr.data(), gate.data(), up.data(), n);
            fast.silu_mul(outf.data(), outf.data(), up.data(), n);
            check(bn + " silu_mul in place n=100003", outr.data(), outf.data(), outr.size(), k_thr_exact);

            const auto a = random_floats(size_t(n));
            std::vector<float> xr = up, xf = up;
            ref.add_scaled(xr.data(), a.data(), 0.37f, n);
            fast.add_scaled(xf.data(), a.data(), 0.37f, n);
            check(bn + " add_scaled n=100003", xr.data(), xf.data(), xr.size(), k_thr_exact);

            xr = up;
            xf = up;
            ref.div_scalar(xr.data(), 3.0f, n);
            fast.div_scalar(xf.data(), 3.0f, n);
            check(bn + " div_scalar n=100003 d=3", xr.data(), xf.data(), xr.size(), 0.0);
        }
        {
            const int64_t H = 129, T = 20, R = 5;
            const auto src = random_floats(size_t(T * H));
            const int32_t rows[R] = {0, 3, 3, 19, 7};
            std::vector<float> dr(size_t(R * H)), df(size_t(R * H), NAN);
            ref.get_rows(dr.data(), src.data(), rows, R, H);
            fast.get_rows(df.data(), src.data(), rows, R, H);
            check(bn + " get_rows R=5 H=129", dr.data(), df.data(), dr.size(), 0.0);
        }
    }
}

void test_thread_pool(thread_pool & tp) {
    std::vector<std::atomic<int>> hits(1000);
    tp.run(1000, [&](int64_t i, int thread) {
        if (thread < 0 || thread >= tp.size()) hits[size_t(i)] += 100;
        hits[size_t(i)]++;
    });
    int bad = 0;
    for (auto & h : hits) bad += h.load() != 1;
    std::string msg;
    try {
        tp.run(64, [&](int64_t i, int) {
            if (i == 7) fail(MINICPM_STATUS_INTERNAL, "task 7 failed");
        });
    } catch (const error & e) {
        msg = e.what();
    }
    const bool ok = bad == 0 && msg == "task 7 failed";
    ++g_cases;
    if (!ok) ++g_failures;
    std::printf("%-4s thread_pool size=%d: tasks run exactly once (%d wrong), exception rethrown: '%s'\n",
                ok ? "ok" : "FAIL", tp.size(), bad, msg.c_str());
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc > 1 && std::strcmp(argv[1], "--list-families") == 0) {  // for scripts/test.sh: one name a line
        for (auto * v : variants()) std::printf("%s\n", v->name);
        return 0;
    }
    thread_pool tp(2);
    backend_options ro;
    ro.reference = true;
    ro.n_threads = 1;
    g_ref = make_backend(backend_kind::cpu, ro);
    std::printf("cpu_features: '%s'; backends:", cpu_features());
    for (auto * v : variants()) {
        backend_options o;
        o.n_threads = 2;
        o.kernels = v->name;
        g_backends.push_back(make_backend(backend_kind::cpu, o));
        std::printf(" [%s]", g_backends.back()->name());
    }
    std::printf("\n");
    // Families compiled into this build that this CPU cannot run: named, so a skip is visible.
    {
        const char * compiled[16];
        const int    n = std::min(cpu_kernel_compiled_names(compiled, 16), 16);
        for (int i = 0; i < n; ++i)
            if (cpu_kernel_by_name(compiled[i]) == nullptr)
                std::printf("SKIPPED: kernel family %s (this CPU lacks its instructions)\n", compiled[i]);
        const cpu_kernel_table * ex = cpu_kernel_by_name("exact");
        ++g_cases;
        const bool ok = ex != nullptr && cpu_kernels_exact(*ex);
        if (!ok) ++g_failures;
        std::printf("%-4s MINICPM_KERNELS=exact selects '%s'; best family here: '%s'\n", ok ? "ok" : "FAIL",
                    ex ? ex->name : "(none)", cpu_kernels().name);
    }
    try {
        make_backend(backend_kind::cuda, backend_options{});
        std::printf("FAIL cuda backend made in a build without CUDA\n");
        ++g_failures;
    } catch (const error & e) {
        std::printf("SKIPPED: cuda backend (%s)\n", e.what());
    }
    test_thread_pool(tp);
    test_elementwise();
    test_kv_and_attention(tp);
    test_tree_attention(tp);
    test_quantized_matmul(tp);
    test_matmul(tp);
    std::printf("%d cases, %d failed\n", g_cases, g_failures);
    return g_failures == 0 ? 0 : 1;
}
