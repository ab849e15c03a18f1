// Quantized matmul driver (see qmatmul.h): activation quantization, weight unpacking into the u8 form, threading,
// the portable kernel and the choice of variant.
#include "cpu/qmatmul.h"

#include "core/status.h"
#include "cpu/cpu-common.h"
#include "cpu/ops-fast.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(MINICPM_X86)
#    include <cpuid.h>
#endif

namespace minicpm {

namespace {

constexpr int64_t k_block = 32;      // activation quantization block
constexpr int64_t k_step = 64;       // columns per kernel step
constexpr int64_t k_rows_task = 16;  // weight rows unpacked per task
// Packed weights: batches of at least this many rows run the AMX-INT8 packed kernel, smaller ones the VNNI one.
// bench-engine, 0.5B, q8 g32, interleaved with the previous main in one locked sitting (18:18 UTC, load 2.2-2.6):
// batch 32 624 tok/s with AMX from 17 rows vs 539 with VNNI below 64; batch 8 on VNNI 321 vs 309 (the same
// kernel), where AMX from 2 rows gave 294 vs 315 in an earlier sitting although test-qmatmul --bench timed that
// matmul alone 4-9% faster. q4 keeps VNNI below 64: in test-qmatmul --bench (32 x 4096 x 1024, every path in
// turns) it led AMX at 2-8 rows (g32 T = 8: 5.2 vs 6.2 ms) and was even at 16-32. Both paths spend most of a
// batch on the per-block scaling of the int32 sums, which the tiles do not shorten.
constexpr int64_t k_packed_amx_rows = 17, k_packed_amx_rows_q4 = 64;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Position p inside a 64-column chunk -> the column it holds (q4: even columns first, then odd).
inline int64_t chunk_col(bool q4, int64_t p) { return q4 ? (p < 32 ? 2 * p : 2 * (p - 32) + 1) : p; }

// Quantizes activation row x[K] into q (permuted as the weight format needs), lane scales ls[K/4] and group
// sums gs[G].
void quantize_act_row(const float * x, int64_t K, bool q4, int64_t group, int8_t * q, float * ls, float * gs) {
    float sx[k_step / k_block];
    const int64_t G = ceil_div(K, group);
    for (int64_t g = 0; g < G; ++g) gs[g] = 0.0f;
    for (int64_t c = 0; c < K; c += k_step) {
        int8_t qn[k_step];
        for (int64_t b = 0; b < k_step / k_block; ++b) {
            const int32_t tot = quantize_block32(x + c + b * k_block, qn + b * k_block, &sx[b]);
            gs[(c + b * k_block) / group] += sx[b] * float(tot);
        }
        for (int64_t p = 0; p < k_step; ++p) q[c + p] = qn[chunk_col(q4, p)];
        for (int64_t l = 0; l < k_step / 4; ++l) ls[(c + 4 * l) / 4] = sx[chunk_col(q4, 4 * l) / k_block];
    }
}

// One stored row (K columns) into the u8 form.
void unpack_row(const uint8_t * w, bool q4, int64_t K, uint8_t * u) {
    if (!q4) {
        for (int64_t k = 0; k < K; ++k) u[k] = uint8_t(w[k] ^ 0x80u);
        return;
    }
    for (int64_t c = 0; c < K; c += k_step) {
        const uint8_t * b = w + c / 2;
        for (int64_t j = 0; j < 32; ++j) u[c + j] = uint8_t(b[j] & 0xfu);
        for (int64_t j = 0; j < 32; ++j) u[c + 32 + j] = uint8_t(b[j] >> 4);
    }
}

// A finite f16 as f32, exactly (normals and subnormals: the exponent is rebased by one multiply), branch-free so
// that the loop below vectorizes: a per-element library call cost as much as streaming the weights it scales.
inline float f16_finite_to_f32(uint16_t h) {
    uint32_t bits = uint32_t(h & 0x7fffu) << 13;
    float    f;
    std::memcpy(&f, &bits, 4);
    f *= 0x1p112f;
    std::memcpy(&bits, &f, 4);
    bits |= uint32_t(h & 0x8000u) << 16;
    std::memcpy(&f, &bits, 4);
    return f;
}

// f32 scales and scale * offset per group of rows [n0, n0 + nr) (contiguous: [rows][G]). Scales are finite
// (checked at load).
void row_scales(const tensor_desc & w, int64_t n0, int64_t nr, float * ws, float * wc) {
    const int64_t G = w.n_groups(), i0 = n0 * G, n = nr * G;
    if (w.scale_type == dtype::f16) {
        const uint16_t * s = (const uint16_t *) w.scales + i0;
        for (int64_t i = 0; i < n; ++i) ws[i] = f16_finite_to_f32(s[i]);
    } else {
        std::memcpy(ws, (const float *) w.scales + i0, size_t(n) * 4);
    }
    if (w.type == dtype::q8) {
        for (int64_t i = 0; i < n; ++i) wc[i] = ws[i] * 128.0f;
    } else if (w.zeros) {
        for (int64_t i = 0; i < n; ++i) wc[i] = ws[i] * float(w.zeros[i0 + i]);
    } else {
        for (int64_t i = 0; i < n; ++i) wc[i] = ws[i] * 8.0f;
    }
}

const qmatmul_variant k_portable = {"portable", "", qdot_portable};
#if defined(MINICPM_X86)
// Batches of 8 rows and more go to AMX: below that the VNNI dot kernel keeps up with memory; from 8 rows on its
// per-token conversions make it compute-bound while AMX (weights streamed once, prefetched) is not.
const qgemm_kernels   k_amx_gemm = {qgemm_pack_x_amx, qgemm_rows_amx, 8};
const qpacked_kernels k_packed_avx512 = {qpack_quantize_avx512, qpacked_avx512vnni};
const qpacked_kernels k_packed_amx = {qpack_quantize_avx512, qpacked_avx512vnni, qpacked_amxint8, k_packed_amx_rows,
                                      k_packed_amx_rows_q4};
const qpacked_kernels k_packed_avx2 = {qpack_quantize_avx2, qpacked_avxvnni};
const qmatmul_variant k_amxint8 = {"amx-int8", "amx_tile amx_int8 avx512f avx512bw avx512_vnni", qdot_avx512vnni,
                                   &k_amx_gemm, &k_packed_amx};
const qmatmul_variant k_avx512vnni = {"avx512-vnni", "avx512f avx512bw avx512_vnni", qdot_avx512vnni, nullptr,
                                      &k_packed_avx512};
const qmatmul_variant k_avxvnni = {"avx-vnni", "avx2 avx_vnni", qdot_avxvnni, nullptr, &k_packed_avx2};

struct vnni_features {
    bool avx512vnni = false, avxvnni = false, amxint8 = false;
};

vnni_features detect_vnni() {
    vnni_features f;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(1, 0, &a, &b, &c, &d) || !(c & (1u << 27))) return f;
    unsigned xlo, xhi;
    asm volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    const bool os_avx = (xlo & 0x6) == 0x6, os_avx512 = (xlo & 0xe6) == 0xe6;
    const bool fma = c & (1u << 12);
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    const bool avx2 = b & (1u << 5), avx512f = b & (1u << 16), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
    const bool avx512vnni = c & (1u << 11);
    unsigned a1 = 0, b1, c1, d1;
    __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    f.avx512vnni = os_avx512 && avx512f && avx512bw && avx512vl && avx512vnni && fma;
    f.avxvnni = os_avx && avx2 && fma && (a1 & (1u << 4));
    const bool os_amx = (xlo & 0x60000) == 0x60000;  // XTILECFG and XTILEDATA state enabled
    const bool amx_tile = d & (1u << 24), amx_int8 = d & (1u << 25);
    f.amxint8 = f.avx512vnni && os_amx && amx_tile && amx_int8 && amx_request_permission();
    return f;
}
#endif
#if defined(__aarch64__)
const qmatmul_variant k_neon_i8mm = {"neon-i8mm", "asimddp i8mm", qdot_neon_i8mm};
const qmatmul_variant k_neon_dotprod = {"neon-dotprod", "asimddp", qdot_neon_dotprod};
const qmatmul_variant k_neon = {"neon", "asimd", qdot_neon};
#endif

}  // namespace

int qmatmul_variants(const qmatmul_variant ** out, int cap) {
    int  n = 0;
    auto add = [&](const qmatmul_variant & v) {
        if (n < cap) out[n] = &v;
        ++n;
    };
#if defined(MINICPM_X86)
    static const vnni_features f = detect_vnni();
    if (f.amxint8) add(k_amxint8);
    if (f.avx512vnni) add(k_avx512vnni);
    if (f.avxvnni) add(k_avxvnni);
#endif
#if defined(__aarch64__)
    static const arm_features f = arm_cpu_features();
    if (f.i8mm && f.dotprod) add(k_neon_i8mm);
    if (f.dotprod) add(k_neon_dotprod);
    add(k_neon);
#endif
    add(k_portable);
    return n;
}

const qmatmul_variant & qmatmul_for(const cpu_kernel_table & kt) {
    const qmatmul_variant * v[8];
    const int n = std::min(qmatmul_variants(v, 8), 8);
    const bool wide = std::strncmp(kt.name, "avx512", 6) == 0, avx2 = std::strcmp(kt.name, "avx2") == 0;
    const bool amx = kt.amx_bf16;  // the AMX family: its tiles are set up and permitted on this CPU
    for (int i = 0; i < n; ++i) {
        if (std::strcmp(v[i]->name, "amx-int8") == 0 && amx) return *v[i];
        if (std::strcmp(v[i]->name, "avx512-vnni") == 0 && wide) return *v[i];
        if (std::strcmp(v[i]->name, "avx-vnni") == 0 && (wide || avx2)) return *v[i];
        if (std::strcmp(v[i]->name, "neon-i8mm") == 0 && std::strstr(kt.name, "+i8mm")) return *v[i];
        if (std::strcmp(v[i]->name, "neon-dotprod") == 0 && std::strstr(kt.name, "+dotprod")) return *v[i];
        if (std::strcmp(v[i]->name, "neon") == 0 && std::strcmp(kt.name, "neon") == 0) return *v[i];
    }
    return k_portable;
}

bool qmatmul_packs() {
    const qmatmul_variant * v[8];
    const int n = std::min(qmatmul_variants(v, 8), 8);
    for (int i = 0; i < n; ++i)
        if (v[i]->packed != nullptr) return true;
    return false;
}

bool qmatmul_supported(const tensor_desc & w) {
    if (!w.quantized() || w.perm != nullptr || w.cols % k_step != 0) return false;
    if (w.scale_type != dtype::f32 && w.scale_type != dtype::f16) return false;
    if (w.group_size <= 0) return false;
    if (w.group_size >= w.cols) return true;
    // The stored-row kernels count groups in whole K steps: a short last group is the dequantizing op's.
    return w.cols % w.group_size == 0 && (w.group_size == k_block || w.group_size % k_step == 0);
}

namespace {

// The batched path: activations into int8 tiles (tasks of 16 tokens), then tasks of 32 weight rows. Buffers
// only grow, so a steady state allocates nothing.
void qgemm(const qgemm_kernels & gk, thread_pool & tp, float * y, const float * x, const tensor_desc & w, int64_t T) {
    const int64_t N = w.rows, K = w.cols, G = w.n_groups(), group = std::min<int64_t>(w.group_size, K);
    const int64_t nkb = ceil_div(K, k_block), n_tb = ceil_div(T, 16);
    const bool    q4 = w.type == dtype::q4;
    static thread_local std::vector<int8_t> xa;
    static thread_local std::vector<float>  sx;
    xa.resize(size_t(n_tb * nkb * 512));
    sx.resize(size_t(n_tb * nkb * 16));
    int8_t * xap = xa.data();
    float *  sxp = sx.data();
    tp.run(n_tb, [&](int64_t i, int) { gk.pack_x(xap, sxp, x, T, K, q4, i * 16, i * 16 + 16); });
    tp.run(ceil_div(N, 32), [&](int64_t i, int) {
        static thread_local std::vector<float>  ws, wc;
        static thread_local std::vector<int8_t> scratch;
        const int64_t n0 = i * 32, nr = std::min<int64_t>(32, N - n0);
        ws.resize(size_t(32 * G));
        wc.resize(size_t(32 * G));
        scratch.resize(size_t(qgemm_scratch_bytes(K)));
        row_scales(w, n0, nr, ws.data(), wc.data());
        gk.rows(y, N, xap, sxp, T, K, (const uint8_t *) w.data, q4, ws.data(), w.zeros, G, group, N, n0, nr,
                scratch.data());
    });
}

// The packed path: activations quantized per 32-column block in natural order, then tasks of whole panels,
// a few per thread so that each thread streams long runs of consecutive panels.
void qpacked(const qmatmul_variant & v, thread_pool & tp, float * y, const float * x, const tensor_desc & w,
             int64_t T) {
    const qpack_layout L = qpack_layout_of(w);
    const int64_t      K = L.K, G = L.G, nb = K / k_block;
    static thread_local std::vector<int8_t> xq;
    static thread_local std::vector<float>  xs, xg;
    xq.resize(size_t(T * K));
    xs.resize(size_t(T * nb));
    xg.resize(size_t(T * G));
    // Pointers, not the thread_local vectors themselves: the pool's threads must see this thread's buffers.
    int8_t * xqp = xq.data();
    float *  xsp = xs.data();
    float *  xgp = xg.data();
    const uint8_t * pk = (const uint8_t *) w.packed;
    const bool batch = v.packed->batch != nullptr && T >= (L.q4 ? v.packed->batch_min_rows_q4 : v.packed->batch_min_rows);
    const qpacked_fn rows = batch ? v.packed->batch : v.packed->rows;
    static thread_local std::vector<int8_t> xa;
    int8_t * xap = nullptr;
    if (batch) {
        xa.resize(qpack_tile_bytes(T, K));
        xap = xa.data();
        std::memset(xap + (T + 15) / 16 * 16 * K, 0, size_t(16 * K));  // the extra zero tile
    }
    // Tasks of one 16-token tile: quantized, then regrouped for the batch kernel on the same thread.
    auto quantize = [&](int64_t i) {
        for (int64_t t = 16 * i; t < std::min(T, 16 * i + 16); ++t)
            v.packed->quantize(x + t * K, K, L.group, xqp + t * K, xsp + t * nb, xgp + t * G);
        if (batch) qpack_tile_x(xqp, T, K, i, xap);
    };
    if (T < 16) {
        quantize(0);
    } else {
        tp.run(ceil_div(T, 16), [&](int64_t i, int) { quantize(i); });
    }
    if (batch) xqp = xap;
    // A small matrix (under ~256 KiB of weights) stays on this thread: waking the pool costs more.
    if (L.n_panels * L.panel_bytes < (int64_t(256) << 10) || tp.size() == 1) {
        rows(y, L.N, xqp, xsp, xgp, T, pk, L, 0, L.n_panels);
        return;
    }
    // Task edges on multiples of 4 panels: the decode kernels read 4 side by side. Batches take more tasks, so
    // that a thread slowed by other work on its core leaves its share to the others.
    const int64_t n_tasks = std::min<int64_t>((L.n_panels + 3) / 4, int64_t(tp.size()) * (batch ? 16 : 4));
    auto          edge = [&](int64_t i) { return std::min(L.n_panels, (L.n_panels * i / n_tasks + 3) / 4 * 4); };
    tp.run(n_tasks, [&](int64_t i, int) {
        const int64_t p0 = edge(i), p1 = edge(i + 1);
        rows(y, L.N, xqp, xsp, xgp, T, pk, L, p0, p1);
    });
}

}  // namespace

void qmatmul(const qmatmul_variant & v, thread_pool & tp, float * y, const float * x, const tensor_desc & w,
             int64_t T) {
    if (w.packed != nullptr && v.packed != nullptr) {
        qpacked(v, tp, y, x, w, T);
        return;
    }
    if (v.gemm != nullptr && T >= v.gemm->min_rows && w.data != nullptr) {
        qgemm(*v.gemm, tp, y, x, w, T);
        return;
    }
    const int64_t N = w.rows, K = w.cols, G = w.n_groups();
    const int64_t group = std::min<int64_t>(w.group_size, K), gsteps = group / k_step;
    const bool    q4 = w.type == dtype::q4;
    static thread_local std::vector<int8_t> xq;
    static thread_local std::vector<float>  xls, xgs;
    xq.resize(size_t(T * K));
    xls.resize(size_t(T * K / 4));
    xgs.resize(size_t(T * G));
    int8_t * xqp = xq.data();
    float *  xlsp = xls.data();
    float *  xgsp = xgs.data();
    const int64_t rows_per = std::max<int64_t>(1, (int64_t(1) << 15) / K);
    const int64_t n_act = ceil_div(T, rows_per);
    auto act = [&](int64_t i, int) {
        for (int64_t t = i * rows_per; t < std::min(T, (i + 1) * rows_per); ++t)
            quantize_act_row(x + t * K, K, q4, group, xqp + t * K, xlsp + t * K / 4, xgsp + t * G);
    };
    if (n_act == 1) {
        act(0, 0);
    } else {
        tp.run(n_act, act);
    }

    // Tasks of k_rows_task rows; a small matrix (under ~256 KiB of weights per token group) stays on this thread.
    const int64_t n_tasks = ceil_div(N, k_rows_task);
    const bool    small = int64_t(w.bytes()) * std::min<int64_t>(T, 4) < (int64_t(256) << 10);
    const int64_t row_bytes = q4 ? K / 2 : K;
    auto task = [&](int64_t i, int) {
        static thread_local std::vector<float> ws, wc;
        ws.resize(size_t(k_rows_task * G));
        wc.resize(size_t(k_rows_task * G));
        const int64_t n0 = i * k_rows_task, nr = std::min(k_rows_task, N - n0);
        row_scales(w, n0, nr, ws.data(), wc.data());
        const uint8_t * rows = (const uint8_t *) w.data + n0 * row_bytes;
        if (w.data == nullptr) {  // stored rows dropped (a variant without packed kernels): from the packed copy
            static thread_local std::vector<uint8_t> unpacked;
            unpacked.resize(size_t(nr * row_bytes));
            qunpack_rows(w, n0, nr, unpacked.data());
            rows = unpacked.data();
        }
        v.dot(y, N, xqp, xlsp, xgsp, T, K, rows, q4, ws.data(), wc.data(), nr, n0, G, gsteps);
    };
    if (small) {
        for (int64_t i = 0; i < n_tasks; ++i) task(i, 0);
    } else {
        tp.run(n_tasks, task);
    }
}

void qdot_portable(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                   int64_t K, const uint8_t * w, bool q4, const float * ws, const float * wc, int64_t nr, int64_t n0,
                   int64_t G, int64_t gsteps) {
    static thread_local std::vector<uint8_t> row;
    row.resize(size_t(K));
    // Lane l of a 64-column step belongs to group (k + chunk_col(q4, 4 l)) / group (qmatmul.h).
    const int64_t group = gsteps > 0 ? gsteps * k_step : k_block;
    for (int64_t r = 0; r < nr; ++r) {
        unpack_row(w + r * (q4 ? K / 2 : K), q4, K, row.data());
        const uint8_t * u = row.data();
        for (int64_t t = 0; t < T; ++t) {
            const int8_t * q = xq + t * K;
            const float *  ls = xls + t * K / 4;
            float          tot = 0.0f, corr = 0.0f;
            for (int64_t k = 0; k < K; k += k_step)
                for (int64_t l = 0; l < 16; ++l) {
                    int32_t d = 0;
                    for (int64_t j = 0; j < 4; ++j) d += int32_t(u[k + 4 * l + j]) * int32_t(q[k + 4 * l + j]);
                    tot += float(d) * ls[k / 4 + l] * ws[r * G + (k + chunk_col(q4, 4 * l)) / group];
                }
            for (int64_t g = 0; g < G; ++g) corr += wc[r * G + g] * xgs[t * G + g];
            y[t * ldy + n0 + r] = tot - corr;
        }
    }
}

}  // namespace minicpm
