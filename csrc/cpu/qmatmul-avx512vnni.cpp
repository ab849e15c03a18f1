// AVX512-VNNI kernel of the quantized matmul (see qmatmul.h): vpdpbusd (u8 weights x s8 activations) per 64
// columns, the 16 int32 lanes scaled by their activation block scales into f32 group sums, then by the weight
// group scale. Tiles of 2 weight rows x 4 tokens.
#include "cpu/qmatmul.h"

#include "cpu/x86-intrin.h"

namespace minicpm {

namespace {

inline float hsum(__m512 v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// 64 columns of stored row r in the u8 form (q4: 32 bytes -> [low nibbles (even columns) | high nibbles]).
template <bool Q4> inline __m512i load_u8(const uint8_t * wq, int64_t K, int64_t r, int64_t k) {
    if (Q4) {
        const __m256i b = _mm256_loadu_si256((const __m256i *) (wq + r * (K / 2) + k / 2));
        const __m256i m = _mm256_set1_epi8(0x0f);
        return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(b, m)),
                                  _mm256_and_si256(_mm256_srli_epi16(b, 4), m), 1);
    }
    return _mm512_xor_si512(_mm512_loadu_si512(wq + r * K + k), _mm512_set1_epi8(char(0x80)));
}

// q4, 128 columns [k, k + 128) of row r from one 64-byte load: lo = [chunk k even | chunk k + 64 even], hi = the
// odd halves, in the u8 form. Half the unpacking work of two load_u8 calls; pair_x regroups the activations.
inline void load_q4_pair(__m512i & lo, __m512i & hi, const uint8_t * wq, int64_t K, int64_t r, int64_t k) {
    const __m512i b = _mm512_loadu_si512(wq + r * (K / 2) + k / 2);
    const __m512i m = _mm512_set1_epi8(0x0f);
    lo = _mm512_and_si512(b, m);
    hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), m);
}

// Activations and lane scales of token row q / ls for columns [k, k + 128), regrouped like load_q4_pair.
inline void pair_x(__m512i & xe, __m512i & xo, __m512 & le, __m512 & lo, const int8_t * q, const float * ls,
                   int64_t k) {
    const __m512i xa = _mm512_loadu_si512(q + k), xb = _mm512_loadu_si512(q + k + 64);
    const __m512  la = _mm512_loadu_ps(ls + k / 4), lb = _mm512_loadu_ps(ls + k / 4 + 16);
    xe = _mm512_shuffle_i64x2(xa, xb, 0x44);
    xo = _mm512_shuffle_i64x2(xa, xb, 0xee);
    le = _mm512_shuffle_f32x4(la, lb, 0x44);
    lo = _mm512_shuffle_f32x4(la, lb, 0xee);
}

// Decode (one token, 4 rows): the rows of a task are contiguous, so while a tile streams rows r0 .. r0 + 3 it
// prefetches the same columns of the next tile's rows, about R rows ahead. Each tile's rows are short streams
// (1-4 KiB) that the hardware prefetcher barely ramps up on. Past the last row the prefetch is a harmless hint.
template <int R, int TT, bool Q4> inline void prefetch_next(const uint8_t * wq, int64_t K, int64_t r0, int64_t k) {
    if (TT != 1 || R < 4) return;
    const int64_t row_bytes = Q4 ? K / 2 : K, col = Q4 ? k / 2 : k;
    for (int r = 0; r < R; ++r) _mm_prefetch((const char *) (wq + (r0 + R + r) * row_bytes + col), _MM_HINT_T0);
}

template <int R, int TT, bool Q4>
inline void tile(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t K,
                 const uint8_t * wq, const float * ws, const float * wc, int64_t r0, int64_t n0, int64_t t0,
                 int64_t G, int64_t gsteps) {
    __m512 tot[R][TT];
    float  corr[R][TT];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < TT; ++t) {
            tot[r][t] = _mm512_setzero_ps();
            corr[r][t] = 0.0f;
        }
    const __m512i zero = _mm512_setzero_si512();
    if (gsteps == 0) {  // group 32: a step's lanes belong to groups 2s and 2s+1 (qmatmul.h)
        const __mmask16 odd = Q4 ? 0xf0f0 : 0xff00;
        int64_t         k = 0;
        // q4 pairs of steps: lanes 0-3, 4-7, 8-11, 12-15 of both halves belong to groups k/32 .. k/32 + 3.
        const __m512i quad = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        for (; Q4 && k + 128 <= K; k += 128) {
            prefetch_next<R, TT, Q4>(wq, K, r0, k);
            __m512i lo[R], hi[R];
            __m512  s[R];
            for (int r = 0; r < R; ++r) {
                load_q4_pair(lo[r], hi[r], wq, K, r0 + r, k);
                s[r] = _mm512_permutexvar_ps(quad, _mm512_castps128_ps512(_mm_loadu_ps(ws + (r0 + r) * G + k / 32)));
            }
            for (int t = 0; t < TT; ++t) {
                __m512i xe, xo;
                __m512  le, lo_s;
                pair_x(xe, xo, le, lo_s, xq + (t0 + t) * K, xls + (t0 + t) * (K / 4), k);
                for (int r = 0; r < R; ++r) {
                    __m512 d = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, lo[r], xe)), le);
                    d = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, hi[r], xo)), lo_s, d);
                    tot[r][t] = _mm512_fmadd_ps(d, s[r], tot[r][t]);
                }
            }
        }
        for (; k < K; k += 64) {
            prefetch_next<R, TT, Q4>(wq, K, r0, k);
            const int64_t g = k / 32;
            __m512i w[R];
            __m512  s[R];
            for (int r = 0; r < R; ++r) {
                w[r] = load_u8<Q4>(wq, K, r0 + r, k);
                const float * sr = ws + (r0 + r) * G + g;
                s[r] = _mm512_mask_blend_ps(odd, _mm512_set1_ps(sr[0]), _mm512_set1_ps(sr[1]));
            }
            for (int t = 0; t < TT; ++t) {
                const __m512i x = _mm512_loadu_si512(xq + (t0 + t) * K + k);
                const __m512  ls = _mm512_loadu_ps(xls + (t0 + t) * (K / 4) + k / 4);
                for (int r = 0; r < R; ++r) {
                    const __m512 d = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, w[r], x)), ls);
                    tot[r][t] = _mm512_fmadd_ps(d, s[r], tot[r][t]);
                }
            }
        }
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < TT; ++t)
                for (int64_t g = 0; g < G; ++g) corr[r][t] += wc[(r0 + r) * G + g] * xgs[(t0 + t) * G + g];
    }
    for (int64_t g = 0; g < G && gsteps > 0; ++g) {
        __m512 acc[R][TT];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
        const int64_t k0 = g * gsteps * 64, k1 = k0 + gsteps * 64;
        int64_t       k = k0;
        for (; Q4 && k + 128 <= k1; k += 128) {
            prefetch_next<R, TT, Q4>(wq, K, r0, k);
            __m512i lo[R], hi[R];
            for (int r = 0; r < R; ++r) load_q4_pair(lo[r], hi[r], wq, K, r0 + r, k);
            for (int t = 0; t < TT; ++t) {
                __m512i xe, xo;
                __m512  le, lo_s;
                pair_x(xe, xo, le, lo_s, xq + (t0 + t) * K, xls + (t0 + t) * (K / 4), k);
                for (int r = 0; r < R; ++r) {
                    acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, lo[r], xe)), le, acc[r][t]);
                    acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, hi[r], xo)), lo_s, acc[r][t]);
                }
            }
        }
        for (; k < k1; k += 64) {
            prefetch_next<R, TT, Q4>(wq, K, r0, k);
            __m512i w[R];
            for (int r = 0; r < R; ++r) w[r] = load_u8<Q4>(wq, K, r0 + r, k);
            for (int t = 0; t < TT; ++t) {
                const __m512i x = _mm512_loadu_si512(xq + (t0 + t) * K + k);
                const __m512  ls = _mm512_loadu_ps(xls + (t0 + t) * (K / 4) + k / 4);
                for (int r = 0; r < R; ++r) {
                    const __m512i d = _mm512_dpbusd_epi32(zero, w[r], x);
                    acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), ls, acc[r][t]);
                }
            }
        }
        for (int r = 0; r < R; ++r) {
            const __m512 s = _mm512_set1_ps(ws[(r0 + r) * G + g]);
            const float  c = wc[(r0 + r) * G + g];
            for (int t = 0; t < TT; ++t) {
                tot[r][t] = _mm512_fmadd_ps(acc[r][t], s, tot[r][t]);
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
    for (; t + 4 <= T; t += 4) tile<R, 4, Q4>(y, ldy, xq, xls, xgs, K, wq, ws, wc, r0, n0, t, G, gsteps);
    for (; t + 2 <= T; t += 2) tile<R, 2, Q4>(y, ldy, xq, xls, xgs, K, wq, ws, wc, r0, n0, t, G, gsteps);
    for (; t < T; ++t) tile<R, 1, Q4>(y, ldy, xq, xls, xgs, K, wq, ws, wc, r0, n0, t, G, gsteps);
}

template <bool Q4>
void run(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T, int64_t K,
         const uint8_t * wq, const float * ws, const float * wc, int64_t nr, int64_t n0, int64_t G, int64_t gsteps) {
    const bool q4 = Q4;
    int64_t    r = 0;
    if (T == 1) {  // decode: more rows per pass share the activation loads
        for (; r + 4 <= nr; r += 4) tile<4, 1, Q4>(y, ldy, xq, xls, xgs, K, wq, ws, wc, r, n0, 0, G, gsteps);
    }
    for (; r + 2 <= nr; r += 2) rows<2, Q4>(y, ldy, xq, xls, xgs, T, K, wq, q4, ws, wc, r, n0, G, gsteps);
    for (; r < nr; ++r) rows<1, Q4>(y, ldy, xq, xls, xgs, T, K, wq, q4, ws, wc, r, n0, G, gsteps);
}

}  // namespace

void qdot_avx512vnni(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                     int64_t K, const uint8_t * wq, bool q4, const float * ws, const float * wc, int64_t nr, int64_t n0,
                     int64_t G, int64_t gsteps) {
    if (q4) {
        run<true>(y, ldy, xq, xls, xgs, T, K, wq, ws, wc, nr, n0, G, gsteps);
    } else {
        run<false>(y, ldy, xq, xls, xgs, T, K, wq, ws, wc, nr, n0, G, gsteps);
    }
}

}  // namespace minicpm
