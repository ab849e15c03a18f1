// AVX512_BF16 matmul for bf16 weights (vdpbf16ps), one kernel for every batch size. Precision: activations
// rounded to bf16 once per call (round to nearest even, bf16_pack_x), weights used as stored, exact products,
// f32 accumulation (the same class as the AMX path).
//
// Dot-product form: a tile of R weight rows x TT tokens keeps R * TT 16-lane accumulators; each 32-wide k step
// loads R weight vectors and TT activation vectors and issues R * TT vdpbf16ps; the lanes are summed once per
// tile at the end. No weight repacking: W is read in its stored row-major layout.
//
// Blocking. A task is a block of weight rows (fast_matmul sizes it to stay within L2). Within it, tokens go in
// chunks whose bf16 activations fit in about half of L2; for each chunk, every 4-row group of the block (in
// L1) meets every token tile of the chunk (in L2). Decode (T <= a chunk) therefore streams each weight row
// exactly once per step at any batch size, with the next row group prefetched; prefill re-reads a task's
// weight block from L2 once per token chunk.
#include "cpu/ops-fast.h"

#include "cpu/x86-intrin.h"

namespace minicpm {

namespace {

constexpr int     k_tile_rows = 4;
constexpr int     k_tile_tokens = 6;
constexpr int64_t k_chunk_bytes = int64_t(384) << 10;  // bf16 activations of one token chunk

// [sum(a), sum(b), sum(c), sum(d)]
inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
    const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
    const __m128 q0 = _mm512_castps512_ps128(s), q1 = _mm512_extractf32x4_ps(s, 1);
    const __m128 q2 = _mm512_extractf32x4_ps(s, 2), q3 = _mm512_extractf32x4_ps(s, 3);
    return _mm_hadd_ps(_mm_hadd_ps(q0, q1), _mm_hadd_ps(q2, q3));
}

// y[t * ldy + r] = W row r . xb row t for r < R, t < TT. xb rows are Kp bf16 (zero past K); W rows K bf16.
// PF: prefetch the next row group (set on the first pass over a row group, when W comes from memory).
template <int R, int TT, bool PF>
void tile(float * y, int64_t ldy, const uint16_t * xb, int64_t Kp, const uint16_t * w, int64_t K) {
    __m512 acc[R][TT];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
    const int64_t K32 = K / 32 * 32;
    int64_t k = 0;
    for (; k < K32; k += 32) {
        __m512bh xv[TT];
#pragma GCC unroll 8
        for (int t = 0; t < TT; ++t) xv[t] = (__m512bh) _mm512_loadu_si512(xb + t * Kp + k);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            if (PF) _mm_prefetch((const char *) (w + (R + r) * K + k), _MM_HINT_T0);
            const __m512bh wv = (__m512bh) _mm512_loadu_si512(w + r * K + k);
#pragma GCC unroll 8
            for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv, xv[t]);
        }
    }
    if (k < K) {  // xb is zero past K, so only W needs the mask
        const __mmask32 m = __mmask32((1ull << (K - k)) - 1);
        __m512bh xv[TT];
#pragma GCC unroll 8
        for (int t = 0; t < TT; ++t) xv[t] = (__m512bh) _mm512_loadu_si512(xb + t * Kp + k);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const __m512bh wv = (__m512bh) _mm512_maskz_loadu_epi16(m, w + r * K + k);
#pragma GCC unroll 8
            for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv, xv[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) {
        if (R == 4) {
            _mm_storeu_ps(y + t * ldy, reduce4(acc[0][t], acc[R > 1 ? 1 : 0][t], acc[R > 2 ? 2 : 0][t],
                                               acc[R > 3 ? 3 : 0][t]));
        } else {
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
        }
    }
}

// Tokens [0, T) of one row group: full tiles, then the remainder.
template <int R>
void row_group(float * y, int64_t ldy, const uint16_t * xb, int64_t Kp, int64_t T, const uint16_t * w, int64_t K,
               bool pf) {
    constexpr int TT = k_tile_tokens;
    int64_t t = 0;
    if (pf && T >= TT) {  // the first tile streams W from memory and prefetches the next group
        tile<R, TT, true>(y, ldy, xb, Kp, w, K);
        t = TT;
        pf = false;
    }
    for (; t + TT <= T; t += TT) tile<R, TT, false>(y + t * ldy, ldy, xb + t * Kp, Kp, w, K);
    const int64_t left = T - t;
    float * yt = y + t * ldy;
    const uint16_t * xt = xb + t * Kp;
    if (pf) {
        switch (left) {
            case 5: tile<R, 5, true>(yt, ldy, xt, Kp, w, K); break;
            case 4: tile<R, 4, true>(yt, ldy, xt, Kp, w, K); break;
            case 3: tile<R, 3, true>(yt, ldy, xt, Kp, w, K); break;
            case 2: tile<R, 2, true>(yt, ldy, xt, Kp, w, K); break;
            case 1: tile<R, 1, true>(yt, ldy, xt, Kp, w, K); break;
            default: break;
        }
    } else {
        switch (left) {
            case 5: tile<R, 5, false>(yt, ldy, xt, Kp, w, K); break;
            case 4: tile<R, 4, false>(yt, ldy, xt, Kp, w, K); break;
            case 3: tile<R, 3, false>(yt, ldy, xt, Kp, w, K); break;
            case 2: tile<R, 2, false>(yt, ldy, xt, Kp, w, K); break;
            case 1: tile<R, 1, false>(yt, ldy, xt, Kp, w, K); break;
            default: break;
        }
    }
}

}  // namespace

void bf16_pack_x_avx512(uint16_t * xb, const float * x, int64_t K, int64_t Kp, int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
        const float * xr = x + t * K;
        uint16_t * dst = xb + t * Kp;
        for (int64_t k = 0; k < Kp; k += 32) {
            const int64_t left = K - k;
            const __mmask16 m0 = left >= 16 ? __mmask16(0xffff) : left > 0 ? __mmask16((1u << left) - 1) : 0;
            const __mmask16 m1 = left >= 32 ? __mmask16(0xffff) : left > 16 ? __mmask16((1u << (left - 16)) - 1) : 0;
            const __m512 lo = _mm512_maskz_loadu_ps(m0, xr + k);
            const __m512 hi = _mm512_maskz_loadu_ps(m1, xr + k + 16);
            _mm512_storeu_si512(dst + k, (__m512i) _mm512_cvtne2ps_pbh(hi, lo));
        }
    }
}

void matmul_rows_dpbf16_avx512(float * y, int64_t ldy, const uint16_t * xb, int64_t Kp, int64_t T,
                               const uint16_t * w, int64_t K, int64_t n0, int64_t n1) {
    int64_t chunk = k_chunk_bytes / (Kp * 2) / k_tile_tokens * k_tile_tokens;
    if (chunk < k_tile_tokens) chunk = k_tile_tokens;
    for (int64_t t0 = 0; t0 < T; t0 += chunk) {
        const int64_t nt = T - t0 < chunk ? T - t0 : chunk;
        const bool pf = t0 == 0;
        float * yc = y + t0 * ldy;
        const uint16_t * xc = xb + t0 * Kp;
        int64_t n = n0;
        for (; n + k_tile_rows <= n1; n += k_tile_rows)
            row_group<k_tile_rows>(yc + n, ldy, xc, Kp, nt, w + n * K, K, pf);
        for (; n < n1; ++n) row_group<1>(yc + n, ldy, xc, Kp, nt, w + n * K, K, false);
    }
}

}  // namespace minicpm
