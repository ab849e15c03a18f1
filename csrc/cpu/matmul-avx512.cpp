// AVX-512 matmul for any weight dtype. Precision: exact f32 products of the stored weights (bf16/f16 widened
// in registers) and f32 activations, f32 accumulation; differs from the reference only in summation order.
// Each task streams its rows of W once: a group of 4 rows stays in L1 while all token blocks of 4 pass over it.
// BF16 weights are read 32 at a time with one 512-bit load: shifting each 32-bit lane left by 16 gives the even
// elements as f32, masking off the low half gives the odd ones, and x is pre-split into even/odd halves to match.
#include "cpu/ops-fast.h"

#include "cpu/x86-intrin.h"

namespace minicpm {

namespace {

template <dtype DT> inline __m512 load16(const uint8_t * row, int64_t k);
template <> inline __m512 load16<dtype::f32>(const uint8_t * row, int64_t k) {
    return _mm512_loadu_ps((const float *) row + k);
}
template <> inline __m512 load16<dtype::bf16>(const uint8_t * row, int64_t k) {
    const __m256i h = _mm256_loadu_si256((const __m256i *) ((const uint16_t *) row + k));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <> inline __m512 load16<dtype::f16>(const uint8_t * row, int64_t k) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) ((const uint16_t *) row + k)));
}

template <dtype DT> inline __m512 load16_mask(const uint8_t * row, int64_t k, __mmask16 m);
template <> inline __m512 load16_mask<dtype::f32>(const uint8_t * row, int64_t k, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, (const float *) row + k);
}
template <> inline __m512 load16_mask<dtype::bf16>(const uint8_t * row, int64_t k, __mmask16 m) {
    const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *) row + k);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <> inline __m512 load16_mask<dtype::f16>(const uint8_t * row, int64_t k, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *) row + k));
}

// R weight rows x TT tokens: y[t * ldy + r] = dot(W row r, x row t).
template <dtype DT, int R, int TT>
void tile(float * y, int64_t ldy, const float * x, int64_t K, const uint8_t * w, int64_t w_stride) {
    constexpr int64_t esz = DT == dtype::f32 ? 4 : 2;
    __m512 acc[R][TT];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();

    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 xv[TT];
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) xv[t] = _mm512_loadu_ps(x + t * K + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            _mm_prefetch((const char *) (w + (R + r) * w_stride + k * esz), _MM_HINT_T0);  // next row group
            const __m512 wv = load16<DT>(w + r * w_stride, k);
#pragma GCC unroll 4
            for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if (k < K) {
        const __mmask16 m = __mmask16((1u << (K - k)) - 1);
        __m512 xv[TT];
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) xv[t] = _mm512_maskz_loadu_ps(m, x + t * K + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            const __m512 wv = load16_mask<DT>(w + r * w_stride, k, m);
#pragma GCC unroll 4
            for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
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
    const int64_t stride = K * int64_t(DT == dtype::f32 ? 4 : 2);
    const uint8_t * wb = (const uint8_t *) w;
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) row_group<DT, 4>(y + n, ldy, x, T, wb + n * stride, stride, K);
    for (; n < n1; ++n) row_group<DT, 1>(y + n, ldy, x, T, wb + n * stride, stride, K);
}

// x[TT][K] rearranged per 32-wide block into 16 even then 16 odd elements, zero-padded to a multiple of 32.
void split_even_odd(float * xs, const float * x, int64_t K, int64_t Kp) {
    for (int64_t k0 = 0; k0 < Kp; k0 += 32) {
        for (int j = 0; j < 16; ++j) {
            xs[k0 + j] = k0 + 2 * j < K ? x[k0 + 2 * j] : 0.0f;
            xs[k0 + 16 + j] = k0 + 2 * j + 1 < K ? x[k0 + 2 * j + 1] : 0.0f;
        }
    }
}

template <int R, int TT>
void tile_bf16(float * y, int64_t ldy, const float * xs, int64_t Kp, int64_t K, const uint16_t * w, int64_t K_stride) {
    __m512 acc[R][TT];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
    const __m512i hi_mask = _mm512_set1_epi32(int32_t(0xffff0000u));
    const int64_t K32 = K / 32 * 32;
    for (int64_t k = 0; k < Kp; k += 32) {
        __m512 xe[TT], xo[TT];
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) {
            xe[t] = _mm512_loadu_ps(xs + t * Kp + k);
            xo[t] = _mm512_loadu_ps(xs + t * Kp + k + 16);
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            const uint16_t * wr = w + r * K_stride + k;
            // The rows of a task are contiguous; fetching the next row group ahead keeps enough misses in
            // flight (each row alone is too short a stream for the hardware prefetcher).
            _mm_prefetch((const char *) (wr + R * K_stride), _MM_HINT_T0);
            const __m512i v = k < K32 ? _mm512_loadu_si512(wr)
                                      : _mm512_maskz_loadu_epi16(__mmask32((1ull << (K - k)) - 1), wr);
            const __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            const __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(v, hi_mask));
#pragma GCC unroll 4
            for (int t = 0; t < TT; ++t) {
                acc[r][t] = _mm512_fmadd_ps(we, xe[t], acc[r][t]);
                acc[r][t] = _mm512_fmadd_ps(wo, xo[t], acc[r][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <int TT>
void rows_bf16_tt(float * y, int64_t ldy, const float * xs, int64_t Kp, const uint16_t * w, int64_t K, int64_t n0,
                  int64_t n1) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) tile_bf16<4, TT>(y + n, ldy, xs, Kp, K, w + n * K, K);
    for (; n < n1; ++n) tile_bf16<1, TT>(y + n, ldy, xs, Kp, K, w + n * K, K);
}

// Decode batches (T <= 4) with the split x in a 64 KiB stack buffer; larger T (or T * K) goes to the widening
// path, whose row-group-outer loop streams W once for any T.
constexpr int64_t k_split_max = 16384;

bool rows_bf16(float * y, int64_t ldy, const float * x, int64_t T, const uint16_t * w, int64_t K, int64_t n0,
               int64_t n1) {
    const int64_t Kp = (K + 31) / 32 * 32;
    if (T > 4 || T * Kp > k_split_max) return false;
    alignas(64) float xs[k_split_max];
    for (int64_t t = 0; t < T; ++t) split_even_odd(xs + t * Kp, x + t * K, K, Kp);
    switch (T) {
        case 4: rows_bf16_tt<4>(y, ldy, xs, Kp, w, K, n0, n1); break;
        case 3: rows_bf16_tt<3>(y, ldy, xs, Kp, w, K, n0, n1); break;
        case 2: rows_bf16_tt<2>(y, ldy, xs, Kp, w, K, n0, n1); break;
        default: rows_bf16_tt<1>(y, ldy, xs, Kp, w, K, n0, n1); break;
    }
    return true;
}

}  // namespace

void matmul_rows_avx512(float * y, int64_t ldy, const float * x, int64_t T, const void * w, dtype wt, int64_t K,
                        int64_t n0, int64_t n1) {
    switch (wt) {
        case dtype::f32: rows<dtype::f32>(y, ldy, x, T, w, K, n0, n1); break;
        case dtype::f16: rows<dtype::f16>(y, ldy, x, T, w, K, n0, n1); break;
        case dtype::bf16:
            if (!rows_bf16(y, ldy, x, T, (const uint16_t *) w, K, n0, n1))
                rows<dtype::bf16>(y, ldy, x, T, w, K, n0, n1);
            break;
        default: break;  // quantized weights never reach the float kernels (fast_matmul routes them)
    }
}

}  // namespace minicpm
