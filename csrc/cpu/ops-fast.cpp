// The fast CPU op table: threading and scratch here, inner kernels per instruction set (see ops-fast.h).
// Precision per path:
//   matmul FMA (avx512 / avx2 / portable): exact f32 products of the stored weights, f32 accumulation.
//   matmul AMX (bf16 weights, T >= 5) and BF16 dot products (vdpbf16ps, bfdot/bfmmla; bf16 weights, every T
//   in the families that have them): activations rounded to bf16 once per call, exact products, f32
//   accumulation. Which path runs is select_matmul_path() (ops-fast.h).
//   attention: f32, online softmax over 64-token blocks, polynomial exp (~2 ulp); in the families with
//   attention_bf16 and a bf16 KV cache, q and the softmax weights are rounded to bf16 (attention_uses_bf16).
//   rms_norm, rope, embed, kv_store, add_scaled: f32 as the reference; silu_mul: polynomial exp.
#include "core/status.h"
#include "cpu/cpu-common.h"
#include "cpu/ops-fast.h"
#include "cpu/ops-ref.h"
#include "cpu/qmatmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace minicpm {

namespace {


// Elementwise work below this many elements runs on the calling thread: waking the pool costs more.
constexpr int64_t k_par_min = 1 << 15;
constexpr int64_t k_matmul_par_bytes = int64_t(512) << 10;  // likewise for matmuls reading less weight data

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits [0, n) into chunks of at least min_chunk for the pool and calls fn(begin, end) per chunk.
template <typename F> void parallel_range(thread_pool & tp, int64_t n, int64_t min_chunk, F fn) {
    const int64_t n_tasks = std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, min_chunk), int64_t(tp.size()) * 4));
    if (n_tasks == 1) {
        fn(int64_t(0), n);
        return;
    }
    const int64_t chunk = ceil_div(n, n_tasks);
    tp.run(ceil_div(n, chunk), [&](int64_t i, int) { fn(i * chunk, std::min(n, (i + 1) * chunk)); });
}

void load_row(float * dst, const tensor_desc & v, int64_t r) {
    const uint8_t * src = v.row(r);
    switch (v.type) {
        case dtype::f32: std::memcpy(dst, src, size_t(v.cols) * 4); break;
        case dtype::bf16:
            for (int64_t i = 0; i < v.cols; ++i) dst[i] = bf16_to_f32(((const uint16_t *) src)[i]);
            break;
        case dtype::f16:
            for (int64_t i = 0; i < v.cols; ++i) dst[i] = f16_to_f32(((const uint16_t *) src)[i]);
            break;
        default: fail(MINICPM_STATUS_INTERNAL, "load_row: a quantized tensor needs dequantize_row");
    }
}

void matmul_amx(thread_pool & tp, float * y, const float * x, const tensor_desc & w, int64_t T) {
#if defined(MINICPM_X86)
    const int64_t N = w.rows, K = w.cols, Kp = amx_k_pad(K), Tp = amx_t_pad(T);
    static thread_local std::vector<uint16_t> xb;
    xb.resize(size_t(Tp * Kp));
    uint16_t * xbp = xb.data();
    parallel_range(tp, Tp / 16, std::max<int64_t>(1, k_par_min / (16 * K)),
                   [&](int64_t b0, int64_t b1) { amx_pack_x(xbp, x, T, K, b0 * 16, b1 * 16); });

    const int64_t n_blocks = ceil_div(N, 32);
    // Several 32-row blocks per task: each token pair's results are written as one contiguous piece per row.
    // Still >= 4 tasks per thread so uneven progress balances.
    // A task's weight rows (copied in tile order) are re-read for every 32 tokens: keep them within ~512 KiB so
    // they stay in L2.
    const int64_t l2_blocks = std::max<int64_t>(1, (int64_t(512) << 10) / (32 * K * 2));
    const int64_t per_task = std::max<int64_t>(
        1, std::min({k_amx_rows_per_task / 32, l2_blocks, n_blocks / (4 * int64_t(tp.size()))}));
    tp.run(ceil_div(n_blocks, per_task), [&](int64_t i, int) {
        if (!amx_request_permission()) fail(MINICPM_STATUS_UNSUPPORTED, "AMX tile data permission refused");
        static thread_local std::vector<uint16_t> scratch;
        if (scratch.size() < size_t(per_task * 32 * Kp)) scratch.resize(size_t(per_task * 32 * Kp));
        const int64_t n0 = i * per_task * 32, n1 = std::min(N, n0 + per_task * 32);
        amx_matmul_rows(y, N, xbp, T, (const uint16_t *) w.data, K, N, n0, n1, scratch.data());
    });
#else
    fail(MINICPM_STATUS_INTERNAL, "AMX kernel selected on a non-x86 build");
#endif
}

// Row tasks for a matmul that streams W: whole 4-row groups, about 8 tasks per thread so the atomic hand-out
// balances uneven progress. A small matrix (decode's k and v projections) stays on the calling thread: a
// wake-up costs about what it saves, and far more when the other cores are busy.
int64_t matmul_row_chunk(thread_pool & tp, const tensor_desc & w, int64_t T) {
    const int64_t N = w.rows;
    const bool small = int64_t(w.bytes()) * std::min<int64_t>(T, 4) < k_matmul_par_bytes;
    return small ? N : std::max<int64_t>(16, ceil_div(ceil_div(N, 8 * int64_t(tp.size())), 4) * 4);
}

// BF16 dot-product kernels: x rounded to bf16 once, then row tasks. With many tokens a task's weight block is
// re-read from L2 once per token chunk (see the kernel files), so it is kept to about 256 KiB.
void matmul_dpbf16(const cpu_kernel_table & kt, thread_pool & tp, float * y, const float * x, const tensor_desc & w,
                   int64_t T) {
    const int64_t N = w.rows, K = w.cols, kb = kt.bf16_k_block, Kp = ceil_div(K, kb) * kb;
    static thread_local std::vector<uint16_t> xb;
    if (xb.size() < size_t(T * Kp)) xb.resize(size_t(T * Kp));
    uint16_t * xbp = xb.data();
    parallel_range(tp, T, std::max<int64_t>(1, k_par_min / K),
                   [&](int64_t t0, int64_t t1) { kt.bf16_pack_x(xbp, x, K, Kp, t0, t1); });
    int64_t chunk = matmul_row_chunk(tp, w, T);
    if (T > 8) chunk = std::min(chunk, std::max<int64_t>(4, (int64_t(256) << 10) / (K * 2) / 4 * 4));
    tp.run(ceil_div(N, chunk), [&](int64_t i, int) {
        const int64_t n0 = i * chunk, n1 = std::min(N, n0 + chunk);
        kt.matmul_bf16_rows(y, N, xbp, Kp, T, (const uint16_t *) w.data, K, n0, n1);
    });
}

}  // namespace

void fast_rms_norm(const cpu_kernel_table & kt, thread_pool & tp, float * y, const float * x, const tensor_desc & g, int64_t T, float eps) {
    const int64_t H = g.cols;
    static thread_local std::vector<float> gf;
    gf.resize(size_t(H));
    load_row(gf.data(), g, 0);
    const float * gp = gf.data();
    parallel_range(tp, T, std::max<int64_t>(1, k_par_min / H), [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) kt.rms_norm_row(y + t * H, x + t * H, gp, H, eps);
    });
}

void fast_embed(thread_pool & tp, float * out, const int32_t * tokens, const tensor_desc & e, int64_t T, float scale) {
    const int64_t H = e.cols;
    parallel_range(tp, T, std::max<int64_t>(1, k_par_min / H), [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            float * o = out + t * H;
            if (e.quantized()) {
                dequantize_row(e, tokens[t], o);
            } else {
                load_row(o, e, tokens[t]);
            }
            for (int64_t i = 0; i < H; ++i) o[i] *= scale;
        }
    });
}

void fast_rope(thread_pool & tp, float * x, const int32_t * pos, const float * cos_sin, int64_t T, int32_t n_heads,
               int32_t hd) {
    const int32_t half = hd / 2;
    parallel_range(tp, T, std::max<int64_t>(1, k_par_min / (int64_t(n_heads) * hd)), [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            const float * cs = cos_sin + int64_t(pos[t]) * hd;
            for (int32_t h = 0; h < n_heads; ++h) {
                float * u = x + (t * n_heads + h) * hd;
                for (int32_t i = 0; i < half; ++i) {
                    const float c = cs[2 * i], s = cs[2 * i + 1];
                    const float a = u[i], b = u[i + half];
                    u[i] = a * c - b * s;
                    u[i + half] = b * c + a * s;
                }
            }
        }
    });
}

void fast_kv_store(thread_pool & tp, const kv_layer & kv, const float * k, const float * v, const kv_segment * segs,
                   int32_t n_segs) {
    const int32_t nkv = kv.n_head_kv, hd = kv.head_dim;
    for (int32_t s = 0; s < n_segs; ++s) {
        const kv_segment & sg = segs[s];
        for (int32_t r = 0; r < sg.n_rows; ++r) {
            const int32_t p = sg.n_past + r;
            const int32_t block = sg.blocks[p / MINICPM_KV_BLOCK_SIZE], slot = p % MINICPM_KV_BLOCK_SIZE;
            const int64_t row = int64_t(sg.row_begin + r) * nkv * hd;
            for (int32_t h = 0; h < nkv; ++h) {
                const int64_t dst = kv_offset(kv, block, h, slot);
                const float * ks = k + row + h * hd;
                const float * vs = v + row + h * hd;
                switch (kv.type) {
                    case dtype::f32:
                        std::memcpy((float *) kv.k + dst, ks, size_t(hd) * 4);
                        std::memcpy((float *) kv.v + dst, vs, size_t(hd) * 4);
                        break;
                    case dtype::bf16:
                        for (int32_t d = 0; d < hd; ++d) {
                            ((uint16_t *) kv.k)[dst + d] = f32_to_bf16(ks[d]);
                            ((uint16_t *) kv.v)[dst + d] = f32_to_bf16(vs[d]);
                        }
                        break;
                    case dtype::f16:
                        for (int32_t d = 0; d < hd; ++d) {
                            ((uint16_t *) kv.k)[dst + d] = f32_to_f16(ks[d]);
                            ((uint16_t *) kv.v)[dst + d] = f32_to_f16(vs[d]);
                        }
                        break;
                    default: fail(MINICPM_STATUS_UNSUPPORTED, "kv_store: KV dtype must be f32, f16 or bf16");
                }
            }
        }
    }
}

void fast_silu_mul(const cpu_kernel_table & kt, thread_pool & tp, float * out, const float * gate, const float * up,
                   int64_t n) {
    parallel_range(tp, n, k_par_min,
                   [&](int64_t i0, int64_t i1) { kt.silu_mul(out + i0, gate + i0, up + i0, i1 - i0); });
}

void fast_add_scaled(const cpu_kernel_table & kt, thread_pool & tp, float * x, const float * a, float scale,
                     int64_t n) {
    parallel_range(tp, n, k_par_min, [&](int64_t i0, int64_t i1) { kt.add_scaled(x + i0, a + i0, scale, i1 - i0); });
}

void fast_div_scalar(thread_pool & tp, float * x, float d, int64_t n) {
    parallel_range(tp, n, k_par_min, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) x[i] /= d;
    });
}

void fast_get_rows(thread_pool & tp, float * dst, const float * src, const int32_t * rows, int64_t R, int64_t H) {
    for (int64_t r = 0; r < R; ++r) std::memcpy(dst + r * H, src + int64_t(rows[r]) * H, size_t(H) * 4);
}

// Quantized weights: rows dequantized one at a time (the plain format definition), threads over rows. The
// fast integer kernels come with the quantization work; this keeps every format runnable meanwhile.
static void matmul_dequant(thread_pool & tp, float * y, const float * x, const tensor_desc & w, int64_t T) {
    const int64_t N = w.rows, K = w.cols;
    parallel_range(tp, N, 16, [&](int64_t n0, int64_t n1) {
        std::vector<float> wr(static_cast<size_t>(K));
        for (int64_t n = n0; n < n1; ++n) {
            dequantize_row(w, n, wr.data());
            matmul_rows_portable(y + n, N, x, T, wr.data(), dtype::f32, K, 0, 1);
        }
    });
}

void fast_matmul(const cpu_kernel_table & kt, thread_pool & tp, float * y, const float * x, const tensor_desc & w,
                 int64_t T) {
    if (T <= 0) return;
    if (w.quantized()) {
        if (qmatmul_supported(w)) {
            qmatmul(qmatmul_for(kt), tp, y, x, w, T);
        } else {
            matmul_dequant(tp, y, x, w, T);
        }
        return;
    }
    switch (select_matmul_path(kt, w.type, T)) {
        case matmul_path::amx: matmul_amx(tp, y, x, w, T); return;
        case matmul_path::dpbf16: matmul_dpbf16(kt, tp, y, x, w, T); return;
        case matmul_path::fma: break;
    }
    const int64_t N = w.rows, K = w.cols;
    const int64_t chunk = matmul_row_chunk(tp, w, T);
    tp.run(ceil_div(N, chunk), [&](int64_t i, int) {
        const int64_t n0 = i * chunk, n1 = std::min(N, n0 + chunk);
        kt.matmul_rows(y, N, x, T, w.data, w.type, K, n0, n1);
    });
}

void fast_attention(const cpu_kernel_table & kt, thread_pool & tp, float * out, const float * q, const kv_layer & kv,
                    const kv_segment * segs, int32_t n_segs, int32_t n_head, float scale) {
    const int32_t nkv = kv.n_head_kv, hd = kv.head_dim, group = n_head / nkv;
    if (hd > 512) fail(MINICPM_STATUS_UNSUPPORTED, "attention: head_dim " + std::to_string(hd) + " > 512");
    // Tasks: (segment, KV head, block of query rows). Rows per task shrink as the group grows so that a task's
    // running outputs stay small; decode rows (one per segment) give n_segs * nkv tasks.
    const int32_t rows_per_task = std::max(1, 128 / group);
    struct task {
        int32_t seg, hk, r0, r1;
    };
    std::vector<task> tasks;
    for (int32_t s = 0; s < n_segs; ++s)
        for (int32_t r0 = 0; r0 < segs[s].n_rows; r0 += rows_per_task)
            for (int32_t hk = 0; hk < nkv; ++hk)
                tasks.push_back({s, hk, r0, std::min(segs[s].n_rows, r0 + rows_per_task)});
    // Later rows see more positions: hand out the biggest tasks first.
    std::stable_sort(tasks.begin(), tasks.end(), [&](const task & a, const task & b) {
        return segs[a.seg].n_past + a.r1 > segs[b.seg].n_past + b.r1;
    });
    const int64_t scratch = attention_scratch_floats(rows_per_task * group, hd);
    tp.run(int64_t(tasks.size()), [&](int64_t i, int) {
        static thread_local std::vector<float> s;
        if (s.size() < size_t(scratch)) s.resize(size_t(scratch));
        const task & t = tasks[size_t(i)];
        kt.attention_task(out, q, kv, segs[t.seg], t.r0, t.r1, n_head, t.hk, group, scale, s.data());
    });
}

void matmul_rows_portable(float * y, int64_t ldy, const float * x, int64_t T, const void * w, dtype wt, int64_t K,
                          int64_t n0, int64_t n1) {
    constexpr int64_t kc = 256;  // weights are widened kc at a time into a stack buffer
    const int64_t esz = int64_t(dtype_size(wt));
    for (int64_t n = n0; n < n1; ++n) {
        const uint8_t * wr = (const uint8_t *) w + n * K * esz;
        for (int64_t t0 = 0; t0 < T; t0 += 4) {
            const int64_t nt = std::min<int64_t>(4, T - t0);
            float acc[4][16] = {};  // lane-wise partial sums so the inner loop vectorizes
            float tail[4] = {};
            for (int64_t k0 = 0; k0 < K; k0 += kc) {
                const int64_t len = std::min(kc, K - k0);
                float wf[kc];
                tensor_desc part;
                part.type = wt;
                part.rows = 1;
                part.cols = len;
                part.data = wr + k0 * esz;
                load_row(wf, part, 0);
                const int64_t len16 = len / 16 * 16;
                for (int64_t t = 0; t < nt; ++t) {
                    const float * xr = x + (t0 + t) * K + k0;
                    for (int64_t k = 0; k < len16; k += 16)
                        for (int j = 0; j < 16; ++j) acc[t][j] += wf[k + j] * xr[k + j];
                    for (int64_t k = len16; k < len; ++k) tail[t] += wf[k] * xr[k];
                }
            }
            for (int64_t t = 0; t < nt; ++t) {
                float s = tail[t];
                for (int j = 0; j < 16; ++j) s += acc[t][j];
                y[(t0 + t) * ldy + n] = s;
            }
        }
    }
}

}  // namespace minicpm
