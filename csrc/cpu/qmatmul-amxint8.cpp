// AMX-INT8 kernel of the quantized matmul for batches (see qmatmul.h, qgemm_kernels): C^T = W . X^T with
// tdpbssd (s8 x s8 -> s32) per 32 columns, then C converted to f32 and scaled by the weight group scale and the
// activation block scale. The weights are the A operand (16 rows x 32 int8): q8 is read in place in its stored
// row-major layout, so a small batch streams it once with no repacking; q4 rows are unpacked once per task into
// signed int8 (nibble - zero point). The activations (quantized per row in blocks of 32 like the dot path) are
// the B operand in the VNNI layout.
#include "cpu/ops-fast.h"
#include "cpu/qmatmul.h"

#include "cpu/x86-intrin.h"

#include <cstring>

namespace minicpm {

namespace {

struct tile_config {
    uint8_t  palette_id;
    uint8_t  start_row;
    uint8_t  reserved[14];
    uint16_t colsb[16];
    uint8_t  rows[16];
};

}  // namespace

// Tiles 0-3: 16 x 16 s32; 4-5: 16 rows x 32 int8; 6-7: 8 column quads x 16 x 4 int8 (qmatmul.h). Written
// through a volatile object: GCC 12 may drop plain stores that only _tile_loadconfig reads (CPU_NOTES.md).
void qamx_load_config() {
    alignas(64) volatile tile_config cfg;
    volatile uint8_t * bytes = (volatile uint8_t *) &cfg;
    for (size_t i = 0; i < sizeof(tile_config); ++i) bytes[i] = 0;
    cfg.palette_id = 1;
    for (int i = 0; i < 4; ++i) {
        cfg.colsb[i] = 64;
        cfg.rows[i] = 16;
    }
    for (int i = 4; i < 6; ++i) {
        cfg.colsb[i] = 32;
        cfg.rows[i] = 16;
    }
    for (int i = 6; i < 8; ++i) {
        cfg.colsb[i] = 64;
        cfg.rows[i] = 8;
    }
    asm volatile("" ::: "memory");
    _tile_loadconfig((const void *) &cfg);
}

namespace {

// In-register transpose of a 16 x 16 matrix of 32-bit elements.
void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int h = 0; h < 2; ++h)
        for (int i = 0; i < 4; ++i) {
            t[8 * h + i] = _mm512_shuffle_i32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
            t[8 * h + 4 + i] = _mm512_shuffle_i32x4(r[8 * h + i], r[8 * h + 4 + i], 0xdd);
        }
    for (int i = 0; i < 8; ++i) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0x88);
        r[8 + i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0xdd);
    }
}

// 64 columns [c, c + 64) of one stored q4 row as signed int8 in the activation order (per 32 columns [16 even |
// 16 odd]), minus the zero point of each 32-column block's group; columns past K are zero.
inline __m512i q4_chunk(const uint8_t * row, int64_t c, int64_t K, int32_t z0, int32_t z1) {
    const int64_t   left = K - c;
    const __mmask32 m = left >= 64 ? ~__mmask32(0) : (__mmask32(1) << (left / 2)) - 1;
    const __m512i   b = _mm512_castsi256_si512(_mm256_maskz_loadu_epi8(m, row + c / 2));
    // 128-bit lanes [bytes 0-15, bytes 0-15, bytes 16-31, bytes 16-31]; lanes 1 and 3 take the high nibbles.
    __m512i v = _mm512_shuffle_i64x2(b, b, _MM_SHUFFLE(1, 1, 0, 0));
    v = _mm512_mask_srli_epi16(v, __mmask32(0xff00ff00u), v, 4);
    v = _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
    const __m512i   z = _mm512_inserti64x4(_mm512_set1_epi8(char(z0)), _mm256_set1_epi8(char(z1)), 1);
    const __mmask64 keep = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
    return _mm512_maskz_sub_epi8(keep, v, z);
}

// Rows [n, n + 32) of the weight as signed int8 rows of ld bytes in dst (rows past N zero): q4 unpacked, q8
// copied (only for a block that runs past N, so that tile loads stay inside the tensor).
void unpack_rows(int8_t * dst, int64_t ld, const uint8_t * w, bool q4, const uint8_t * zeros, int64_t K, int64_t N,
                 int64_t G, int64_t group, int64_t n) {
    for (int i = 0; i < 32; ++i) {
        const int64_t row = n + i;
        for (int64_t c = 0; c < K; c += 64) {
            __m512i v = _mm512_setzero_si512();
            _mm_prefetch((const char *) (w + (row + 1) * (q4 ? K / 2 : K) + (q4 ? c / 2 : c)), _MM_HINT_T0);
            if (row < N && q4) {
                const int64_t g0 = c / group, g1 = (c + 32) / group < G ? (c + 32) / group : g0;
                const int32_t z0 = zeros ? zeros[row * G + g0] : 8, z1 = zeros ? zeros[row * G + g1] : 8;
                v = q4_chunk(w + row * (K / 2), c, K, z0, z1);
            } else if (row < N) {
                const int64_t   left = K - c;
                const __mmask64 m = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
                v = _mm512_maskz_loadu_epi8(m, w + row * K + c);
            }
            _mm512_storeu_si512(dst + i * ld + c, v);
        }
    }
}

// Tile loads of weights read in place gather 32 rows one stride apart, more streams than the hardware
// prefetcher follows: the first token pair fetches each row's line k_pf_blocks 32-column blocks ahead, and past
// the row's end the start of the next 32-row block (a hint: prefetches past the tensor do not fault).
constexpr int64_t k_pf_blocks = 8;
inline void prefetch_ahead(const int8_t * a, int64_t K, int64_t c) {
    const int8_t * p = c < K ? a + c : a + 32 * K + (c - K);
    for (int r = 0; r < 32; ++r) _mm_prefetch((const char *) (p + r * K), _MM_HINT_T0);
}

// acc[16 weight rows][32 tokens, row stride 32] += float(c) * sw[row] * sx[token] for the token block of c.
inline void accumulate(float * acc, const int32_t * c, const float * sw, __m512 sx) {
    for (int r = 0; r < 16; ++r) {
        float * a = acc + r * 32;
        const __m512 f = _mm512_cvtepi32_ps(_mm512_loadu_si512(c + r * 16));
        _mm512_storeu_ps(a, _mm512_fmadd_ps(f, _mm512_mul_ps(_mm512_set1_ps(sw[r]), sx), _mm512_loadu_ps(a)));
    }
}

// acc[16 rows][16 tokens] (row stride 32) transposed into y[token][row] for tokens < n_tok, rows < n_rows.
void store_transposed(float * y, int64_t ldy, const float * acc, int n_rows, int n_tok) {
    __m512i r[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_castps_si512(_mm512_loadu_ps(acc + i * 32));
    transpose16(r);
    const __mmask16 m = n_rows >= 16 ? __mmask16(0xffff) : __mmask16((1u << n_rows) - 1);
    for (int t = 0; t < n_tok; ++t) _mm512_mask_storeu_ps(y + t * ldy, m, _mm512_castsi512_ps(r[t]));
}

}  // namespace

void qgemm_pack_x_amx(int8_t * xa, float * sx, const float * x, int64_t T, int64_t K, bool q4, int64_t t0,
                      int64_t t1) {
    const int64_t nkb = (K + 31) / 32;
    // q4 order inside a 32-column block: 16 even columns, then 16 odd ones (the nibble unpack order).
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t t = t0; t < t1; ++t) {
        const int64_t tb = t / 16, tr = t % 16;
        for (int64_t kb = 0; kb < nkb; ++kb) {
            int8_t * dst = xa + (tb * nkb + kb) * 512 + tr * 4;
            float *  s = sx + (tb * nkb + kb) * 16 + tr;
            if (t >= T) {  // padding tokens of the last block
                for (int q = 0; q < 8; ++q) std::memset(dst + q * 64, 0, 4);
                *s = 0.0f;
                continue;
            }
            const int64_t left = K - kb * 32;
            const __mmask16 m0 = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
            const __mmask16 m1 = left >= 32 ? __mmask16(0xffff) : left > 16 ? __mmask16((1u << (left - 16)) - 1) : 0;
            __m512 lo = _mm512_maskz_loadu_ps(m0, x + t * K + kb * 32);
            __m512 hi = _mm512_maskz_loadu_ps(m1, x + t * K + kb * 32 + 16);
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(lo, absmask), _mm512_and_ps(hi, absmask)));
            // The same arithmetic as the dot path's quantizer, so both give the same int8 values.
            const float scale = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            if (q4) {
                const __m512 e = _mm512_permutex2var_ps(lo, even, hi), o = _mm512_permutex2var_ps(lo, odd, hi);
                lo = e;
                hi = o;
            }
            const __m512 vinv = _mm512_set1_ps(inv), lim = _mm512_set1_ps(127.0f), nlim = _mm512_set1_ps(-127.0f);
            const __m512i q0 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(lo, vinv), nlim), lim));
            const __m512i q1 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(hi, vinv), nlim), lim));
            // The row's 8 column quads go to rows 0..7 of the B tile, at this token's 4-byte slot.
            const __m256i  bytes = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtsepi32_epi8(q0)),
                                                           _mm512_cvtsepi32_epi8(q1), 1);
            const __m256i  quad_rows = _mm256_set_epi32(448, 384, 320, 256, 192, 128, 64, 0);
            _mm256_i32scatter_epi32(dst, quad_rows, bytes, 1);
            *s = scale;
        }
    }
}

void qgemm_rows_amx(float * y, int64_t ldy, const int8_t * xa, const float * sx, int64_t T, int64_t K,
                    const uint8_t * w, bool q4, const float * ws, const uint8_t * zeros, int64_t G, int64_t group,
                    int64_t N, int64_t n0, int64_t nr, int8_t * scratch) {
    const int64_t nkb = (K + 31) / 32, Tp = (T + 15) / 16 * 16;
    // Unpacked rows get a stride 64 bytes past a multiple of 64, so that 16 tile rows do not share an L1 set.
    const int64_t ld_unpacked = (K + 63) / 64 * 64 + 64;
    alignas(64) int32_t c[4][256];
    alignas(64) float   acc[32 * 32];  // [32 weight rows][32 tokens]
    float * sw = (float *) (scratch + 32 * ld_unpacked);  // [nkb][32]: each block's group scale per row
    amx_request_permission();  // process-wide once granted; cached per thread
    qamx_load_config();
    for (int64_t nb = n0; nb < n0 + nr; nb += 32) {
        const int rows = int(N - nb < 32 ? N - nb : 32);
        const int8_t * a = (const int8_t *) w + nb * K;
        int64_t        lda = K;
        const bool     in_place = !q4 && rows == 32;
        if (!in_place) {
            unpack_rows(scratch, ld_unpacked, w, q4, zeros, K, N, G, group, nb);
            a = scratch;
            lda = ld_unpacked;
        }
        for (int64_t kb = 0; kb < nkb; ++kb)
            for (int r = 0; r < 32; ++r) sw[kb * 32 + r] = r < rows ? ws[(nb - n0 + r) * G + kb * 32 / group] : 0.0f;
        for (int64_t tp = 0; tp < Tp; tp += 32) {
            const int n_tok = int(T - tp < 32 ? T - tp : 32);
            const int tok0 = n_tok < 16 ? n_tok : 16, tok1 = n_tok - tok0;
            const int8_t * b0 = xa + (tp / 16) * nkb * 512;
            const int8_t * b1 = b0 + nkb * 512;
            const float *  s0 = sx + (tp / 16) * nkb * 16;
            const float *  s1 = s0 + nkb * 16;
            for (int i = 0; i < 32 * 32; ++i) acc[i] = 0.0f;
            for (int64_t kb = 0; kb < nkb; ++kb) {
                if (in_place && tp == 0 && kb % 2 == 0) prefetch_ahead(a, K, (kb + k_pf_blocks) * 32);
                _tile_zero(0);
                _tile_zero(2);
                _tile_loadd(4, a + kb * 32, lda);
                _tile_loadd(5, a + 16 * lda + kb * 32, lda);
                _tile_loadd(6, b0 + kb * 512, 64);
                _tile_dpbssd(0, 4, 6);
                _tile_dpbssd(2, 5, 6);
                if (tok1 > 0) {
                    _tile_zero(1);
                    _tile_zero(3);
                    _tile_loadd(7, b1 + kb * 512, 64);
                    _tile_dpbssd(1, 4, 7);
                    _tile_dpbssd(3, 5, 7);
                }
                _tile_stored(0, c[0], 64);
                _tile_stored(2, c[2], 64);
                const __m512 sx0 = _mm512_loadu_ps(s0 + kb * 16);
                accumulate(acc, c[0], sw + kb * 32, sx0);
                accumulate(acc + 16 * 32, c[2], sw + kb * 32 + 16, sx0);
                if (tok1 > 0) {
                    _tile_stored(1, c[1], 64);
                    _tile_stored(3, c[3], 64);
                    const __m512 sx1 = _mm512_loadu_ps(s1 + kb * 16);
                    accumulate(acc + 16, c[1], sw + kb * 32, sx1);
                    accumulate(acc + 16 * 32 + 16, c[3], sw + kb * 32 + 16, sx1);
                }
            }
            const int rows0 = rows < 16 ? rows : 16, rows1 = rows - rows0;
            float * yb = y + tp * ldy + nb;
            store_transposed(yb, ldy, acc, rows0, tok0);
            if (tok1 > 0) store_transposed(yb + 16 * ldy, ldy, acc + 16, rows0, tok1);
            if (rows1 > 0) {
                store_transposed(yb + 16, ldy, acc + 16 * 32, rows1, tok0);
                if (tok1 > 0) store_transposed(yb + 16 * ldy + 16, ldy, acc + 16 * 32 + 16, rows1, tok1);
            }
        }
    }
    _tile_release();
}

}  // namespace minicpm
