// AVX2 + FMA matmul for bf16 weights (no BF16 dot product on these chips: Zen 2/3, Intel client). Precision:
// exact f32 products of the widened weights and f32 activations, f32 accumulation (exact class; only the
// summation order differs from the reference).
//
// Decode (T <= 4): x is split into 8 even then 8 odd elements per 16-wide block, so one 256-bit load of 16
// bf16 weights gives both halves as f32 with a shift and a mask (no widening shuffle). x is split a k slice at
// a time (all T rows of a slice fit a 64 KiB stack buffer); within a slice each 4-row group is read from memory
// once, with the next group prefetched, and every token tile meets it while it is in L1. Decode batches of 5
// to 8 tokens widen the weights per 4 x 3 tile instead (tile_widen), streaming each row group once as well.
// Prefill (T > 8): the rows are taken in blocks whose bf16 weights stay in L2 (k_block_bytes); for each token
// chunk and k_kc-wide k slice (the chunk's f32 activations of that slice about k_chunk_bytes, in L2), each
// 4-row group is widened to f32 into an L1 panel, and 4 x 3 register tiles (12 accumulators, 3 activations,
// 1 weight: the 16 ymm registers) run plain FMAs over it, adding into y slice after slice. Weights are
// converted once per token chunk instead of once per token tile.
#include "cpu/cpu-common.h"
#include "cpu/ops-fast.h"

#include "cpu/x86-intrin.h"

namespace minicpm {

namespace {

constexpr int     k_rows = 4;                          // weight rows per register tile
constexpr int     k_tokens = 3;                        // tokens per register tile (prefill)
constexpr int64_t k_kc = 1024;                         // k slice of the widened panel: 4 x 4 KiB in L1
constexpr int64_t k_block_bytes = int64_t(128) << 10;  // bf16 weight rows kept in L2 across token chunks
constexpr int64_t k_chunk_bytes = int64_t(256) << 10;  // f32 activations of one token chunk's k slice
constexpr int64_t k_split_tokens = 4;                  // decode batches up to this take the split-x path,
constexpr int64_t k_widen_tokens = 8;                  // then up to this the widening tiles; then the panels
constexpr int64_t k_split_max = 16384;                 // floats of split x on the stack (64 KiB)

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// --- decode -------------------------------------------------------------------------------------------------

// xs[K16]: per 16-wide block of x, the 8 even then the 8 odd elements; zero past K.
void split_even_odd(float * xs, const float * x, int64_t K, int64_t K16) {
    for (int64_t k0 = 0; k0 < K16; k0 += 16) {
        for (int j = 0; j < 8; ++j) {
            xs[k0 + j] = k0 + 2 * j < K ? x[k0 + 2 * j] : 0.0f;
            xs[k0 + 8 + j] = k0 + 2 * j + 1 < K ? x[k0 + 2 * j + 1] : 0.0f;
        }
    }
}

// y[t * ldy + r] (+)= W row r . x row t over kl columns, for R rows and TT tokens; xs holds the split rows
// (stride K16), W rows are K apart (w already offset to the slice).
template <int R, int TT>
void tile_split(float * y, int64_t ldy, const float * xs, int64_t K16, const uint16_t * w, int64_t K, int64_t kl,
                bool add) {
    __m256 acc[R][TT];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
    const __m256i hi = _mm256_set1_epi32(int32_t(0xffff0000u));
    const int64_t k16 = kl / 16 * 16;
    for (int64_t k = 0; k < k16; k += 16) {
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            const uint16_t * wr = w + r * K + k;
            // One prefetch per 64-byte line of the next row group (each row alone is too short a stream for
            // the hardware prefetcher to keep enough misses in flight).
            if ((k & 31) == 0) _mm_prefetch((const char *) (wr + R * K), _MM_HINT_T0);
            const __m256i v = _mm256_loadu_si256((const __m256i *) wr);
            const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
            const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
#pragma GCC unroll 4
            for (int t = 0; t < TT; ++t) {
                acc[r][t] = _mm256_fmadd_ps(we, _mm256_loadu_ps(xs + t * K16 + k), acc[r][t]);
                acc[r][t] = _mm256_fmadd_ps(wo, _mm256_loadu_ps(xs + t * K16 + k + 8), acc[r][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) {
            float s = hsum(acc[r][t]);
            // The tail in the split order: even elements at k + 2j sit at xs[k + j], odd ones at xs[k + 8 + j].
            for (int64_t j = k16; j < kl; ++j) {
                const int64_t i = k16 + (j - k16) / 2 + ((j - k16) & 1 ? 8 : 0);
                s += bf16_to_f32(w[r * K + j]) * xs[t * K16 + i];
            }
            y[t * ldy + r] = add ? y[t * ldy + r] + s : s;
        }
    }
}

// Tokens [0, T) (T <= k_split_tokens) of one row group in tiles of 3, then 2 or 1 (four: two tiles of 2).
template <int R>
void group_split(float * y, int64_t ldy, const float * xs, int64_t K16, int64_t T, const uint16_t * w, int64_t K,
                 int64_t kl, bool add) {
    int64_t t = 0;
    while (T - t > 0) {
        const int64_t left = T - t;
        float * yt = y + t * ldy;
        const float * xt = xs + t * K16;
        if (left >= 3 && left != 4) {
            tile_split<R, 3>(yt, ldy, xt, K16, w, K, kl, add);
            t += 3;
        } else if (left >= 2) {
            tile_split<R, 2>(yt, ldy, xt, K16, w, K, kl, add);
            t += 2;
        } else {
            tile_split<R, 1>(yt, ldy, xt, K16, w, K, kl, add);
            t += 1;
        }
    }
}

// --- decode batches of 5 to 8 tokens ---------------------------------------------------------------------

// y[t * ldy + r] = W row r . x row t for R rows, TT tokens: 8 weights per row and step are widened in registers
// (the zero-extension runs on the shuffle port, beside the FMAs) while the TT activation vectors stay in
// registers; with R = 4, TT = 3 that is all 16 ymm registers. Past 4 tokens this beats the split-x path, whose
// activations come from memory for every FMA.
template <int R, int TT> void tile_widen(float * y, int64_t ldy, const float * x, int64_t K, const uint16_t * w) {
    __m256 acc[R][TT];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
    const int64_t K8 = K / 8 * 8;
    for (int64_t k = 0; k < K8; k += 8) {
        __m256 xv[TT];
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) xv[t] = _mm256_loadu_ps(x + t * K + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            const uint16_t * wr = w + r * K + k;
            if ((k & 31) == 0) _mm_prefetch((const char *) (wr + R * K), _MM_HINT_T0);  // next row group
            const __m128i h = _mm_loadu_si128((const __m128i *) wr);
            const __m256 wv = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#pragma GCC unroll 4
            for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) {
            float s = hsum(acc[r][t]);
            for (int64_t k = K8; k < K; ++k) s += bf16_to_f32(w[r * K + k]) * x[t * K + k];
            y[t * ldy + r] = s;
        }
    }
}

// Tokens [0, T) of one row group (read from memory by the first tile, from L1 by the others).
template <int R> void group_widen(float * y, int64_t ldy, const float * x, int64_t T, const uint16_t * w, int64_t K) {
    int64_t t = 0;
    for (; t + 3 <= T; t += 3) tile_widen<R, 3>(y + t * ldy, ldy, x + t * K, K, w);
    switch (T - t) {
        case 2: tile_widen<R, 2>(y + t * ldy, ldy, x + t * K, K, w); break;
        case 1: tile_widen<R, 1>(y + t * ldy, ldy, x + t * K, K, w); break;
        default: break;
    }
}

// --- prefill ------------------------------------------------------------------------------------------------

// wf[R][kc] = W rows [0, R) columns [k0, k0 + kc) as f32 (the rows are K apart).
template <int R> void widen(float * wf, const uint16_t * w, int64_t K, int64_t k0, int64_t kc) {
    const int64_t kc8 = kc / 8 * 8;
    for (int r = 0; r < R; ++r) {
        const uint16_t * wr = w + r * K + k0;
        float * dst = wf + r * k_kc;
        int64_t k = 0;
        for (; k < kc8; k += 8) {
            // The next row group, a line at a time: on the first token chunk W comes from memory.
            if ((k & 31) == 0) _mm_prefetch((const char *) (wr + R * K + k), _MM_HINT_T0);
            const __m128i h = _mm_loadu_si128((const __m128i *) (wr + k));
            _mm256_storeu_ps(dst + k, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
        }
        for (; k < kc; ++k) dst[k] = bf16_to_f32(wr[k]);
    }
}

// y[t * ldy + r] (+)= wf row r . x row t over kc columns (x rows K apart, already offset to the slice).
template <int R, int TT>
void tile_panel(float * y, int64_t ldy, const float * x, int64_t K, const float * wf, int64_t kc, bool add) {
    __m256 acc[R][TT];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
    const int64_t kc8 = kc / 8 * 8;
    for (int64_t k = 0; k < kc8; k += 8) {
        __m256 xv[TT];
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) xv[t] = _mm256_loadu_ps(x + t * K + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
            const __m256 wv = _mm256_loadu_ps(wf + r * k_kc + k);
#pragma GCC unroll 4
            for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int t = 0; t < TT; ++t) {
            float s = hsum(acc[r][t]);
            for (int64_t k = kc8; k < kc; ++k) s += wf[r * k_kc + k] * x[t * K + k];
            y[t * ldy + r] = add ? y[t * ldy + r] + s : s;
        }
    }
}

// Tokens [0, T) against R widened rows: full tiles, then the remainder.
template <int R>
void panel_tokens(float * y, int64_t ldy, const float * x, int64_t K, int64_t T, const float * wf, int64_t kc,
                  bool add) {
    int64_t t = 0;
    for (; t + k_tokens <= T; t += k_tokens) tile_panel<R, k_tokens>(y + t * ldy, ldy, x + t * K, K, wf, kc, add);
    switch (T - t) {
        case 2: tile_panel<R, 2>(y + t * ldy, ldy, x + t * K, K, wf, kc, add); break;
        case 1: tile_panel<R, 1>(y + t * ldy, ldy, x + t * K, K, wf, kc, add); break;
        default: break;
    }
}

template <int R>
void row_group_panel(float * y, int64_t ldy, const float * x, int64_t T, const uint16_t * w, int64_t K, int64_t k0,
                     int64_t kc) {
    alignas(32) float wf[k_rows * k_kc];
    widen<R>(wf, w, K, k0, kc);
    panel_tokens<R>(y, ldy, x + k0, K, T, wf, kc, k0 > 0);
}

void rows_panel(float * y, int64_t ldy, const float * x, int64_t T, const uint16_t * w, int64_t K, int64_t n0,
                int64_t n1) {
    int64_t block = k_block_bytes / (K * 2) / k_rows * k_rows;
    if (block < k_rows) block = k_rows;
    const int64_t kc_max = K < k_kc ? K : k_kc;
    int64_t chunk = k_chunk_bytes / (kc_max * 4) / k_tokens * k_tokens;
    if (chunk < 4 * k_tokens) chunk = 4 * k_tokens;
    for (int64_t b0 = n0; b0 < n1; b0 += block) {
        const int64_t b1 = n1 - b0 < block ? n1 : b0 + block;
        for (int64_t t0 = 0; t0 < T; t0 += chunk) {
            const int64_t nt = T - t0 < chunk ? T - t0 : chunk;
            float * yc = y + t0 * ldy;
            const float * xc = x + t0 * K;
            // k slices outermost: only the chunk's k_kc-wide slice of x needs to stay in L2 while every row
            // group of the block passes over it; the partial sums accumulate in y.
            for (int64_t k0 = 0; k0 < K; k0 += k_kc) {
                const int64_t kc = K - k0 < k_kc ? K - k0 : k_kc;
                int64_t n = b0;
                for (; n + k_rows <= b1; n += k_rows)
                    row_group_panel<k_rows>(yc + n, ldy, xc, nt, w + n * K, K, k0, kc);
                for (; n < b1; ++n) row_group_panel<1>(yc + n, ldy, xc, nt, w + n * K, K, k0, kc);
            }
        }
    }
}

}  // namespace

void matmul_rows_bf16_avx2(float * y, int64_t ldy, const float * x, int64_t T, const uint16_t * w, int64_t K,
                           int64_t n0, int64_t n1) {
    if (T > k_widen_tokens) {
        rows_panel(y, ldy, x, T, w, K, n0, n1);
        return;
    }
    if (T > k_split_tokens) {
        int64_t n = n0;
        for (; n + k_rows <= n1; n += k_rows) group_widen<k_rows>(y + n, ldy, x, T, w + n * K, K);
        for (; n < n1; ++n) group_widen<1>(y + n, ldy, x, T, w + n * K, K);
        return;
    }
    // x split a k slice at a time (all T rows of it fit the stack buffer); every slice of W is read once.
    alignas(32) float xs[k_split_max];
    const int64_t K16 = (K + 15) / 16 * 16;
    const int64_t ks = K16 < k_split_max / T / 32 * 32 ? K16 : k_split_max / T / 32 * 32;
    for (int64_t k0 = 0; k0 < K; k0 += ks) {
        const int64_t kl = K - k0 < ks ? K - k0 : ks, kl16 = (kl + 15) / 16 * 16;
        for (int64_t t = 0; t < T; ++t) split_even_odd(xs + t * kl16, x + t * K + k0, kl, kl16);
        int64_t n = n0;
        for (; n + k_rows <= n1; n += k_rows)
            group_split<k_rows>(y + n, ldy, xs, kl16, T, w + n * K + k0, K, kl, k0 > 0);
        for (; n < n1; ++n) group_split<1>(y + n, ldy, xs, kl16, T, w + n * K + k0, K, kl, k0 > 0);
    }
}

}  // namespace minicpm
