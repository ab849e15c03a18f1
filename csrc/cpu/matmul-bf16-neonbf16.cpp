// ARMv8.6 BF16 matmul for bf16 weights (compiled with +bf16; dispatch.cpp runs it only where the kernel reports
// HWCAP2_BF16). Precision: activations rounded to bf16 once per call (bf16_pack_x_neon), weights as stored,
// f32 accumulation (bfdot / bfmmla; the architecture may round the pair sums, well inside the bf16-activation
// bound).
//
// Token pairs use bfmmla: one instruction multiplies a 2 x 4 block of two weight rows by a 2 x 4 block of two
// tokens into a 2 x 2 tile, so 4 rows x 4 tokens take 8 bfmmla per 8-wide k step (rows and tokens are zipped
// into the pair layout in registers: W stays in its stored layout). An odd token uses bfdot (4 lanes of pair
// sums per row). Blocking as in the x86 kernels: 4-row groups in L1, token chunks in L2, W streamed once per
// token chunk.
#include "cpu/ops-fast.h"

#include <arm_neon.h>
#include <string.h>

namespace minicpm {

namespace {

constexpr int64_t k_chunk_bytes = int64_t(256) << 10;  // bf16 activations of one token chunk

inline bfloat16x8_t as_bf(uint16x8_t v) { return vreinterpretq_bf16_u16(v); }
inline bfloat16x8_t as_bf64(uint64x2_t v) { return vreinterpretq_bf16_u64(v); }

// 8 weights at w[k..k+8), zero past n (n < 8 only at the row's tail).
inline uint16x8_t load_w(const uint16_t * w, int64_t n) {
    if (n >= 8) return vld1q_u16(w);
    uint16_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    memcpy(t, w, size_t(n) * 2);
    return vld1q_u16(t);
}

// R rows x 1 token with bfdot: y[r * ystep] = W row r . x.
template <int R>
void dot_rows(float * y, int64_t ystep, const uint16_t * x, const uint16_t * w, int64_t K) {
    float32x4_t acc[R];
    for (int r = 0; r < R; ++r) acc[r] = vdupq_n_f32(0.0f);
    for (int64_t k = 0; k < K; k += 8) {
        const bfloat16x8_t xv = as_bf(vld1q_u16(x + k));  // x is zero-padded to Kp >= K rounded up to 8
        for (int r = 0; r < R; ++r) {
            __builtin_prefetch(w + (R + r) * K + k);
            acc[r] = vbfdotq_f32(acc[r], as_bf(load_w(w + r * K + k, K - k)), xv);
        }
    }
    for (int r = 0; r < R; ++r) y[r * ystep] = vaddvq_f32(acc[r]);
}

// 4 rows x 2 * TP tokens with bfmmla. xb rows Kp apart.
template <int TP>
void mmla_tile(float * y, int64_t ldy, const uint16_t * xb, int64_t Kp, const uint16_t * w, int64_t K) {
    float32x4_t acc[2][TP];  // [row pair][token pair]: {r0t0, r0t1, r1t0, r1t1}
    for (int p = 0; p < 2; ++p)
        for (int q = 0; q < TP; ++q) acc[p][q] = vdupq_n_f32(0.0f);
    for (int64_t k = 0; k < K; k += 8) {
        bfloat16x8_t blo[TP], bhi[TP];
        for (int q = 0; q < TP; ++q) {
            const uint64x2_t x0 = vreinterpretq_u64_u16(vld1q_u16(xb + (2 * q) * Kp + k));
            const uint64x2_t x1 = vreinterpretq_u64_u16(vld1q_u16(xb + (2 * q + 1) * Kp + k));
            blo[q] = as_bf64(vzip1q_u64(x0, x1));
            bhi[q] = as_bf64(vzip2q_u64(x0, x1));
        }
        for (int p = 0; p < 2; ++p) {
            __builtin_prefetch(w + (4 + 2 * p) * K + k);
            __builtin_prefetch(w + (5 + 2 * p) * K + k);
            const uint64x2_t w0 = vreinterpretq_u64_u16(load_w(w + (2 * p) * K + k, K - k));
            const uint64x2_t w1 = vreinterpretq_u64_u16(load_w(w + (2 * p + 1) * K + k, K - k));
            const bfloat16x8_t alo = as_bf64(vzip1q_u64(w0, w1)), ahi = as_bf64(vzip2q_u64(w0, w1));
            for (int q = 0; q < TP; ++q) {
                acc[p][q] = vbfmmlaq_f32(acc[p][q], alo, blo[q]);
                acc[p][q] = vbfmmlaq_f32(acc[p][q], ahi, bhi[q]);
            }
        }
    }
    for (int p = 0; p < 2; ++p) {
        for (int q = 0; q < TP; ++q) {
            float v[4];
            vst1q_f32(v, acc[p][q]);
            float * y0 = y + (2 * q) * ldy + 2 * p;  // token 2q, row 2p
            y0[0] = v[0];
            y0[ldy] = v[1];
            y0[1] = v[2];
            y0[ldy + 1] = v[3];
        }
    }
}

}  // namespace

void matmul_rows_bf16_neon(float * y, int64_t ldy, const uint16_t * xb, int64_t Kp, int64_t T, const uint16_t * w,
                           int64_t K, int64_t n0, int64_t n1) {
    int64_t chunk = k_chunk_bytes / (Kp * 2) / 4 * 4;
    if (chunk < 4) chunk = 4;
    for (int64_t t0 = 0; t0 < T; t0 += chunk) {
        const int64_t nt = T - t0 < chunk ? T - t0 : chunk;
        int64_t n = n0;
        for (; n + 4 <= n1; n += 4) {
            const uint16_t * wr = w + n * K;
            int64_t t = t0;
            for (; t + 4 <= t0 + nt; t += 4) mmla_tile<2>(y + t * ldy + n, ldy, xb + t * Kp, Kp, wr, K);
            if (t + 2 <= t0 + nt) {
                mmla_tile<1>(y + t * ldy + n, ldy, xb + t * Kp, Kp, wr, K);
                t += 2;
            }
            if (t < t0 + nt) dot_rows<4>(y + t * ldy + n, 1, xb + t * Kp, wr, K);
        }
        for (; n < n1; ++n)
            for (int64_t t = t0; t < t0 + nt; ++t) dot_rows<1>(y + t * ldy + n, 1, xb + t * Kp, w + n * K, K);
    }
}

}  // namespace minicpm
