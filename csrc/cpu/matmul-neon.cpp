// NEON matmul for ARM64 (NEON is part of the base ISA, so this file needs no extra flags). Precision: exact f32
// products of the widened weights (bf16 by a 16-bit shift, f16 by fcvtl) and f32 activations, f32
// accumulation; differs from the reference only in summation order. Same blocking as the x86 FMA kernels:
// a group of 4 weight rows stays in L1 while every token block passes over it, so W streams once for any T.
// Also the activation packing of the BF16 kernels (matmul-bf16-neonbf16.cpp), which needs no BF16 instruction.
#include "cpu/cpu-common.h"
#include "cpu/ops-fast.h"

#include <arm_neon.h>

namespace minicpm {

namespace {

// 8 consecutive weights of a row as two f32 vectors.
template <dtype DT> inline void load8(const uint8_t * row, int64_t k, float32x4_t & lo, float32x4_t & hi);
template <> inline void load8<dtype::f32>(const uint8_t * row, int64_t k, float32x4_t & lo, float32x4_t & hi) {
    lo = vld1q_f32((const float *) row + k);
    hi = vld1q_f32((const float *) row + k + 4);
}
template <> inline void load8<dtype::bf16>(const uint8_t * row, int64_t k, float32x4_t & lo, float32x4_t & hi) {
    const uint16x8_t v = vld1q_u16((const uint16_t *) row + k);
    lo = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v), 16));
    hi = vreinterpretq_f32_u32(vshll_high_n_u16(v, 16));
}
template <> inline void load8<dtype::f16>(const uint8_t * row, int64_t k, float32x4_t & lo, float32x4_t & hi) {
    const float16x8_t v = vreinterpretq_f16_u16(vld1q_u16((const uint16_t *) row + k));
    lo = vcvt_f32_f16(vget_low_f16(v));
    hi = vcvt_high_f32_f16(v);
}

template <dtype DT, int R, int TT>
void tile(float * y, int64_t ldy, const float * x, int64_t K, const uint8_t * w, int64_t w_stride) {
    float32x4_t acc[R][TT];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < TT; ++t) acc[r][t] = vdupq_n_f32(0.0f);
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        float32x4_t xl[TT], xh[TT];
        for (int t = 0; t < TT; ++t) {
            xl[t] = vld1q_f32(x + t * K + k);
            xh[t] = vld1q_f32(x + t * K + k + 4);
        }
        for (int r = 0; r < R; ++r) {
            __builtin_prefetch(w + (R + r) * w_stride + k * int64_t(dtype_size(DT)));
            float32x4_t wl, wh;
            load8<DT>(w + r * w_stride, k, wl, wh);
            for (int t = 0; t < TT; ++t) {
                acc[r][t] = vfmaq_f32(acc[r][t], wl, xl[t]);
                acc[r][t] = vfmaq_f32(acc[r][t], wh, xh[t]);
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        for (int t = 0; t < TT; ++t) {
            float s = vaddvq_f32(acc[r][t]);
            for (int64_t j = k; j < K; ++j) s += load_f32(w + r * w_stride, DT, j) * x[t * K + j];
            y[t * ldy + r] = s;
        }
    }
}

template <dtype DT, int R>
void row_group(float * y, int64_t ldy, const float * x, int64_t T, const uint8_t * w, int64_t w_stride, int64_t K) {
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) tile<DT, R, 4>(y + t * ldy, ldy, x + t * K, K, w, w_stride);
    switch (T - t) {
        case 3: tile<DT, R, 3>(y + t * ldy, ldy, x + t * K, K, w, w_stride); break;
        case 2: tile<DT, R, 2>(y + t * ldy, ldy, x + t * K, K, w, w_stride); break;
        case 1: tile<DT, R, 1>(y + t * ldy, ldy, x + t * K, K, w, w_stride); break;
        default: break;
    }
}

template <dtype DT>
void rows(float * y, int64_t ldy, const float * x, int64_t T, const void * w, int64_t K, int64_t n0, int64_t n1) {
    const int64_t stride = K * int64_t(dtype_size(DT));
    const uint8_t * wb = (const uint8_t *) w;
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) row_group<DT, 4>(y + n, ldy, x, T, wb + n * stride, stride, K);
    for (; n < n1; ++n) row_group<DT, 1>(y + n, ldy, x, T, wb + n * stride, stride, K);
}

}  // namespace

void matmul_rows_neon(float * y, int64_t ldy, const float * x, int64_t T, const void * w, dtype wt, int64_t K,
                      int64_t n0, int64_t n1) {
    switch (wt) {
        case dtype::f32: rows<dtype::f32>(y, ldy, x, T, w, K, n0, n1); break;
        case dtype::f16: rows<dtype::f16>(y, ldy, x, T, w, K, n0, n1); break;
        case dtype::bf16: rows<dtype::bf16>(y, ldy, x, T, w, K, n0, n1); break;
        default: break;  // quantized weights never reach the float kernels (fast_matmul routes them)
    }
}

// Round to nearest even (f32_to_bf16, as the reference rounds), zero past K.
void bf16_pack_x_neon(uint16_t * xb, const float * x, int64_t K, int64_t Kp, int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
        const float * xr = x + t * K;
        uint16_t * dst = xb + t * Kp;
        for (int64_t k = 0; k < K; ++k) dst[k] = f32_to_bf16(xr[k]);
        for (int64_t k = K; k < Kp; ++k) dst[k] = 0;
    }
}

}  // namespace minicpm
