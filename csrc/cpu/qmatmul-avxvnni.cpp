// AVX-VNNI kernel of the quantized matmul (see qmatmul.h): 256-bit vpdpbusd, each 64-column step as two halves.
// Tiles of 2 weight rows x 2 tokens.
#include "cpu/qmatmul.h"

#include <immintrin.h>

namespace minicpm {

namespace {

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// 64 columns of stored row r in the u8 form, as two 32-byte halves (q4: low nibbles = even columns, then high).
template <bool Q4> inline void load_u8(__m256i w[2], const uint8_t * wq, int64_t K, int64_t r, int64_t k) {
    if (Q4) {
        const __m256i b = _mm256_loadu_si256((const __m256i *) (wq + r * (K / 2) + k / 2));
        const __m256i m = _mm256_set1_epi8(0x0f);
        w[0] = _mm256_and_si256(b, m);
        w[1] = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
    } else {
        const __m256i f = _mm256_set1_epi8(char(0x80));
        w[0] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *) (wq + r * K + k)), f);
        w[1] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *) (wq + r * K + k + 32)), f);
    }
}

template <int R, int TT, bool Q4>
inline void tile(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t K,
                 const uint8_t * wq, const float * ws, const float * wc, int64_t r0, int64_t n0, int64_t t0,
                 int64_t G, int64_t gsteps) {
    __m256 tot[R][TT];
    float  corr[R][TT];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < TT; ++t) {
            tot[r][t] = _mm256_setzero_ps();
            corr[r][t] = 0.0f;
        }
    const __m256i zero = _mm256_setzero_si256();
    if (gsteps == 0) {  // group 32: q8 halves are groups 2s and 2s+1; q4 halves hold 4 lanes of each (qmatmul.h)
        for (int64_t k = 0; k < K; k += 64) {
            const int64_t g = k / 32;
            __m256i w[R][2];
            __m256  s[R][2];
            for (int r = 0; r < R; ++r) {
                load_u8<Q4>(w[r], wq, K, r0 + r, k);
                const __m256 s0 = _mm256_set1_ps(ws[(r0 + r) * G + g]), s1 = _mm256_set1_ps(ws[(r0 + r) * G + g + 1]);
                s[r][0] = Q4 ? _mm256_blend_ps(s0, s1, 0xf0) : s0;
                s[r][1] = Q4 ? s[r][0] : s1;
            }
            for (int t = 0; t < TT; ++t)
                for (int h = 0; h < 2; ++h) {
                    const __m256i x = _mm256_loadu_si256((const __m256i *) (xq + (t0 + t) * K + k + 32 * h));
                    const __m256  ls = _mm256_loadu_ps(xls + (t0 + t) * (K / 4) + (k + 32 * h) / 4);
                    for (int r = 0; r < R; ++r) {
                        const __m256i d = _mm256_dpbusd_avx_epi32(zero, w[r][h], x);
                        tot[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(d), ls), s[r][h], tot[r][t]);
                    }
                }
        }
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < TT; ++t)
                for (int64_t g = 0; g < G; ++g) corr[r][t] += wc[(r0 + r) * G + g] * xgs[(t0 + t) * G + g];
    }
    for (int64_t g = 0; g < G && gsteps > 0; ++g) {
        __m256 acc[R][TT];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
        const int64_t k0 = g * gsteps * 64, k1 = k0 + gsteps * 64;
        for (int64_t k = k0; k < k1; k += 64) {
            __m256i w[R][2];
            for (int r = 0; r < R; ++r) load_u8<Q4>(w[r], wq, K, r0 + r, k);
            for (int t = 0; t < TT; ++t)
                for (int h = 0; h < 2; ++h) {
                    const __m256i x = _mm256_loadu_si256((const __m256i *) (xq + (t0 + t) * K + k + 32 * h));
                    const __m256  ls = _mm256_loadu_ps(xls + (t0 + t) * (K / 4) + (k + 32 * h) / 4);
                    for (int r = 0; r < R; ++r) {
                        const __m256i d = _mm256_dpbusd_avx_epi32(zero, w[r][h], x);
                        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), ls, acc[r][t]);
                    }
                }
        }
        for (int r = 0; r < R; ++r) {
            const __m256 s = _mm256_set1_ps(ws[(r0 + r) * G + g]);
            const float  c = wc[(r0 + r) * G + g];
            for (int t = 0; t < TT; ++t) {
                tot[r][t] = _mm256_fmadd_ps(acc[r][t], s, tot[r][t]);
                corr[r][t] += c * xgs[(t0 + t) * G + g];
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < TT; ++t) y[(t0 + t) * ldy + n0 + r0 + r] = hsum(tot[r][t]) - corr[r][t];
}

template <int R, bool Q4>
inline void rows(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                 int64_t K, const uint8_t * wq, bool q4, const float * ws, const float * wc, int64_t r0, int64_t n0, int64_t G,
                 int64_t gsteps) {
    int64_t t = 0;
    for (; t + 2 <= T; t += 2) tile<R, 2, Q4>(y, ldy, xq, xls, xgs, K, wq, ws, wc, r0, n0, t, G, gsteps);
    for (; t < T; ++t) tile<R, 1, Q4>(y, ldy, xq, xls, xgs, K, wq, ws, wc, r0, n0, t, G, gsteps);
}

}  // namespace

void qdot_avxvnni(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                  int64_t K, const uint8_t * wq, bool q4, const float * ws, const float * wc, int64_t nr, int64_t n0, int64_t G,
                  int64_t gsteps) {
    int64_t r = 0;
    if (q4) {
        for (; r + 2 <= nr; r += 2) rows<2, true>(y, ldy, xq, xls, xgs, T, K, wq, q4, ws, wc, r, n0, G, gsteps);
        for (; r < nr; ++r) rows<1, true>(y, ldy, xq, xls, xgs, T, K, wq, q4, ws, wc, r, n0, G, gsteps);
    } else {
        for (; r + 2 <= nr; r += 2) rows<2, false>(y, ldy, xq, xls, xgs, T, K, wq, q4, ws, wc, r, n0, G, gsteps);
        for (; r < nr; ++r) rows<1, false>(y, ldy, xq, xls, xgs, T, K, wq, q4, ws, wc, r, n0, G, gsteps);
    }
}

}  // namespace minicpm
