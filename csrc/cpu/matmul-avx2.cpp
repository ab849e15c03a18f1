// AVX2 + FMA + F16C matmul for machines without AVX-512: f32 and f16 weights here, bf16 weights in
// matmul-bf16-avx2.cpp. Precision: exact f32 products of the widened weights and f32 activations, f32
// accumulation (summation order differs from the reference).
#include "cpu/cpu-common.h"
#include "cpu/ops-fast.h"

#include "cpu/x86-intrin.h"

namespace minicpm {

namespace {

template <dtype DT> inline __m256 load8(const uint8_t * row, int64_t k);
template <> inline __m256 load8<dtype::f32>(const uint8_t * row, int64_t k) {
    return _mm256_loadu_ps((const float *) row + k);
}
template <> inline __m256 load8<dtype::f16>(const uint8_t * row, int64_t k) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) ((const uint16_t *) row + k)));
}

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

template <dtype DT, int R, int TT>
void tile(float * y, int64_t ldy, const float * x, int64_t K, const uint8_t * w, int64_t w_stride) {
    constexpr int64_t esz = DT == dtype::f32 ? 4 : 2;
    __m256 acc[R][TT];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 xv[TT];
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) xv[t] = _mm256_loadu_ps(x + t * K + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            // The rows of a task are contiguous; fetching the next row group ahead keeps enough misses in
            // flight (each row alone is too short a stream for the hardware prefetcher).
            _mm_prefetch((const char *) (w + (R + r) * w_stride + k * esz), _MM_HINT_T0);
            const __m256 wv = load8<DT>(w + r * w_stride, k);
#pragma GCC unroll 4
            for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) {
            float s = hsum(acc[r][t]);
            for (int64_t j = k; j < K; ++j) s += load_f32(w + r * w_stride, DT, j) * x[t * K + j];
            y[t * ldy + r] = s;
        }
    }
}

template <dtype DT, int R>
void row_group(float * y, int64_t ldy, const float * x, int64_t T, const uint8_t * w, int64_t w_stride, int64_t K) {
    int64_t t = 0;
    for (; t + 3 <= T; t += 3) tile<DT, R, 3>(y + t * ldy, ldy, x + t * K, K, w, w_stride);
    switch (T - t) {
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

}  // namespace

void matmul_rows_avx2(float * y, int64_t ldy, const float * x, int64_t T, const void * w, dtype wt, int64_t K,
                      int64_t n0, int64_t n1) {
    switch (wt) {
        case dtype::f32: rows<dtype::f32>(y, ldy, x, T, w, K, n0, n1); break;
        case dtype::f16: rows<dtype::f16>(y, ldy, x, T, w, K, n0, n1); break;
        case dtype::bf16: matmul_rows_bf16_avx2(y, ldy, x, T, (const uint16_t *) w, K, n0, n1); break;
        default: break;  // quantized weights never reach the float kernels (fast_matmul routes them)
    }
}

}  // namespace minicpm
