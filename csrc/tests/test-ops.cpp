// Every fast CPU op against the reference op (the specification) on random inputs: every kernel variant this
// machine runs (AMX, AVX-512, AVX2, portable), every weight and KV dtype, sizes that are not multiples of the
// SIMD width. Prints max abs error, max rel error (max |diff| / max |ref|) and NMSE per case and fails when the
// NMSE exceeds the threshold of the precision path.
#include "core/status.h"
#include "cpu/cpu-common.h"
#include "cpu/ops-fast.h"

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
constexpr double k_thr_bf16_act = 2e-5;  // activations rounded to bf16 (relative step 2^-9)

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

void test_matmul(thread_pool & tp) {
    const dtype types[] = {dtype::bf16, dtype::f16, dtype::f32};
    // {9, 8200}: from T = 2 the split x no longer fits the AVX-512 decode kernel's stack buffer (fallback path).
    const int64_t shapes[][2] = {{77, 1000}, {128, 1024}, {33, 64}, {100, 4096}, {5, 40}, {9, 8200}};
    const int64_t Ts[] = {1, 3, 4, 5, 8, 17, 33, 100};
    for (const cpu_kernel_table * kt : variants()) {
        for (dtype wt : types) {
            for (const auto & s : shapes) {
                const int64_t N = s[0], K = s[1];
                const auto wf = random_floats(size_t(N * K));
                const auto wraw = to_dtype(wf, wt);
                const tensor_view w = {wt, N, K, wraw.data()};
                for (int64_t T : Ts) {
                    if (K >= 4096 && T > 17) continue;  // keeps the scalar reference quick
                    const auto x = random_floats(size_t(T * K));
                    std::vector<float> yr(size_t(T * N)), yf(size_t(T * N), NAN);
                    cpu_reference_ops().matmul(tp, yr.data(), x.data(), w, T);
                    fast_matmul(*kt, tp, yf.data(), x.data(), w, T);
                    const bool amx = kt->amx_bf16 && wt == dtype::bf16 && T >= k_amx_min_tokens;
                    char name[128];
                    std::snprintf(name, sizeof(name), "matmul %s/%s w=%s N=%lld K=%lld T=%lld", kt->name,
                                  amx ? "amx" : "fma", dtype_name(wt), (long long) N, (long long) K, (long long) T);
                    check(name, yr.data(), yf.data(), yr.size(), amx ? k_thr_bf16_act : k_thr_exact);
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
        {6, 3, 48, {{1, 5}, {127, 1}}},                        // head dim not a multiple of 16
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
                segs.push_back({row, s.second, s.first, nullptr});
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
            cpu_reference_ops().kv_store(tp, kv_ref, k.data(), v.data(), segs.data(), int32_t(segs.size()));
            cpu_fast_ops().kv_store(tp, kv_fast, k.data(), v.data(), segs.data(), int32_t(segs.size()));
            const bool same = kr == kf && vr == vf;
            ++g_cases;
            if (!same) ++g_failures;
            std::printf("%-4s kv_store kv=%s nh=%d nkv=%d hd=%d: pools %s\n", same ? "ok" : "FAIL", dtype_name(kvt),
                        c.n_head, c.n_head_kv, c.hd, same ? "byte-identical" : "DIFFER");

            const auto q = random_floats(size_t(T) * c.n_head * c.hd, -2.0f, 2.0f);
            const float scale = 1.0f / std::sqrt(float(c.hd));
            std::vector<float> outr(q.size());
            cpu_reference_ops().attention(tp, outr.data(), q.data(), kv_ref, segs.data(), int32_t(segs.size()),
                                          c.n_head, scale);
            for (const cpu_kernel_table * kt : variants()) {
                std::vector<float> outf(q.size(), NAN);
                fast_attention(*kt, tp, outf.data(), q.data(), kv_ref, segs.data(), int32_t(segs.size()), c.n_head,
                               scale);
                std::string segdesc;
                for (auto & s : c.segs) segdesc += " " + std::to_string(s.first) + "+" + std::to_string(s.second);
                char name[160];
                std::snprintf(name, sizeof(name), "attention %s kv=%s nh=%d nkv=%d hd=%d segs(past+rows):%s",
                              kt->name, dtype_name(kvt), c.n_head, c.n_head_kv, c.hd, segdesc.c_str());
                check(name, outr.data(), outf.data(), outr.size(), k_thr_exact);
            }
        }
    }
}

void test_elementwise(thread_pool & tp) {
    const backend_ops & ref = cpu_reference_ops();
    const backend_ops & fast = cpu_fast_ops();
    const dtype types[] = {dtype::f32, dtype::bf16, dtype::f16};
    for (dtype gt : types) {
        const int64_t H = 1000, T = 40;  // T * H crosses the threading threshold
        const auto x = random_floats(size_t(T * H), -3.0f, 3.0f);
        const auto graw = to_dtype(random_floats(size_t(H)), gt);
        const tensor_view g = {gt, 1, H, graw.data()};
        std::vector<float> yr(x.size()), yf = x;  // the fast op runs in place (y aliases x)
        ref.rms_norm(tp, yr.data(), x.data(), g, T, 1e-6f);
        fast.rms_norm(tp, yf.data(), yf.data(), g, T, 1e-6f);
        check(std::string("rms_norm in place g=") + dtype_name(gt) + " H=1000 T=40", yr.data(), yf.data(), yr.size(),
              k_thr_exact);

        const int64_t V = 300, He = 77;
        const auto eraw = to_dtype(random_floats(size_t(V * He)), gt);
        const tensor_view e = {gt, V, He, eraw.data()};
        std::vector<int32_t> toks(50);
        for (auto & t : toks) t = int32_t(g_rng() % V);
        std::vector<float> er(toks.size() * He), ef(toks.size() * He);
        ref.embed(tp, er.data(), toks.data(), e, int64_t(toks.size()), 12.0f);
        fast.embed(tp, ef.data(), toks.data(), e, int64_t(toks.size()), 12.0f);
        check(std::string("embed e=") + dtype_name(gt) + " H=77 T=50", er.data(), ef.data(), er.size(), k_thr_exact);
    }
    {
        const int64_t T = 37;
        const int32_t nh = 3, hd = 64, max_pos = 200;
        const auto cs = random_floats(size_t(max_pos) * hd);
        std::vector<int32_t> pos(T);
        for (auto & p : pos) p = int32_t(g_rng() % max_pos);
        const auto x = random_floats(size_t(T) * nh * hd);
        std::vector<float> xr = x, xf = x;
        ref.rope(tp, xr.data(), pos.data(), cs.data(), T, nh, hd);
        fast.rope(tp, xf.data(), pos.data(), cs.data(), T, nh, hd);
        check("rope T=37 nh=3 hd=64", xr.data(), xf.data(), xr.size(), k_thr_exact);
    }
    {
        const int64_t n = 100003;
        const auto gate = random_floats(size_t(n), -20.0f, 20.0f);
        const auto up = random_floats(size_t(n));
        std::vector<float> outr(static_cast<size_t>(n)), outf = gate;  // out aliases gate
        ref.silu_mul(tp, outr.data(), gate.data(), up.data(), n);
        fast.silu_mul(tp, outf.data(), outf.data(), up.data(), n);
        check("silu_mul in place n=100003", outr.data(), outf.data(), outr.size(), k_thr_exact);

        const auto a = random_floats(size_t(n));
        std::vector<float> xr = up, xf = up;
        ref.add_scaled(tp, xr.data(), a.data(), 0.37f, n);
        fast.add_scaled(tp, xf.data(), a.data(), 0.37f, n);
        check("add_scaled n=100003", xr.data(), xf.data(), xr.size(), k_thr_exact);
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

int main() {
    thread_pool tp(2);
    std::printf("cpu_features: '%s'; fast table: %s; variants:", cpu_features(), cpu_fast_ops().name);
    for (auto * v : variants()) std::printf(" %s", v->name);
    std::printf("\n");
    test_thread_pool(tp);
    test_elementwise(tp);
    test_kv_and_attention(tp);
    test_matmul(tp);
    std::printf("%d cases, %d failed\n", g_cases, g_failures);
    return g_failures == 0 ? 0 : 1;
}
