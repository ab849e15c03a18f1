// AMX BF16 matmul for bf16 weights. Precision: activations rounded to bf16 (round to nearest even), exact
// products, f32 accumulation.
//
// It computes C^T = W . X^T so that the weights are the A operand in their stored row-major layout (an A tile
// is 16 weight rows x 32 bf16, loaded with the row stride): no weight repacking. Only the activations are
// converted, once per call, into the VNNI B layout: per 16-token block and 32-wide k block, 16 rows of
// (token, k pair). Register blocking: 2 A tiles (32 weight rows) x 2 B tiles (32 tokens) -> 4 C tiles.
#include "cpu/ops-fast.h"

#include "cpu/x86-intrin.h"
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

namespace minicpm {

namespace {

constexpr int k_arch_req_xcomp_perm = 0x1023;
constexpr int k_xfeature_xtiledata = 18;

struct tile_config {
    uint8_t  palette_id;
    uint8_t  start_row;
    uint8_t  reserved[14];
    uint16_t colsb[16];
    uint8_t  rows[16];
};

// Every tile is 16 rows x 64 bytes. GCC 12 may drop plain stores into a config that only _tile_loadconfig
// reads (the tiles then have zero rows and the first tile instruction faults), so the config is written
// through a volatile object.
void load_tile_config() {
    alignas(64) volatile tile_config cfg;
    volatile uint8_t * bytes = (volatile uint8_t *) &cfg;
    for (size_t i = 0; i < sizeof(tile_config); ++i) bytes[i] = 0;
    cfg.palette_id = 1;
    for (int i = 0; i < 8; ++i) {
        cfg.colsb[i] = 64;
        cfg.rows[i] = 16;
    }
    asm volatile("" ::: "memory");
    _tile_loadconfig((const void *) &cfg);
}

// In-register transpose of a 16 x 16 f32 block.
void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int h = 0; h < 2; ++h) {
        for (int i = 0; i < 4; ++i) {
            t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
            t[8 * h + 4 + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0xdd);
        }
    }
    for (int i = 0; i < 8; ++i) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
        r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
    }
}

// c: 16 weight rows x 16 tokens (row stride 16). Writes y[token][row] for rows < n_rows, tokens < n_tok.
void store_transposed(float * y, int64_t ldy, const float * c, int n_rows, int n_tok) {
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(c + 16 * i);
    transpose16(r);
    const __mmask16 m = n_rows >= 16 ? __mmask16(0xffff) : __mmask16((1u << n_rows) - 1);
    for (int j = 0; j < n_tok; ++j) _mm512_mask_storeu_ps(y + j * ldy, m, r[j]);
}

constexpr int64_t k_pf_ahead = 4;

// Prefetches k block pk of the 16 weight rows at a (row stride K), or once pk runs past the last of nkb blocks,
// the matching block of the 16 rows at next (none when null).
inline void prefetch_half(const uint16_t * a, int64_t K, const uint16_t * next, int64_t pk, int64_t nkb) {
    if (pk >= nkb) {
        if (next == nullptr) return;
        a = next;
        pk -= nkb;
    }
    for (int r = 0; r < 16; ++r) _mm_prefetch((const char *) (a + r * K + pk * 32), _MM_HINT_T0);
}

// Copies weight rows [nb, nb + 32) into tile order: per k block, 32 rows x 32 bf16 (2 KiB, the two A tiles back
// to back with a 64-byte row stride), zero-padded past row N and column K. Tile loads from it touch consecutive
// lines instead of 32 lines one row stride apart, which conflict in L1 when the stride is a multiple of 4 KiB.
void pack_rows(uint16_t * dst, const uint16_t * w, int64_t K, int64_t N, int64_t nb) {
    const int64_t nkb = amx_k_pad(K) / 32;
    for (int r = 0; r < 32; ++r) {
        const bool valid = nb + r < N;
        const uint16_t * src = w + (nb + r) * K;
        for (int64_t kb = 0; kb < nkb; ++kb) {
            const int64_t left = valid ? K - kb * 32 : 0;
            const __mmask32 m = left >= 32 ? ~__mmask32(0) : __mmask32((1u << left) - 1);
            _mm512_storeu_si512(dst + (kb * 32 + r) * 32, _mm512_maskz_loadu_epi16(m, src + kb * 32));
        }
    }
}

}  // namespace

bool amx_request_permission() {
    static thread_local int state = 0;  // 0 unknown, 1 granted, -1 refused
    if (state == 0) state = syscall(SYS_arch_prctl, k_arch_req_xcomp_perm, k_xfeature_xtiledata) == 0 ? 1 : -1;
    return state == 1;
}

int64_t amx_k_pad(int64_t K) { return (K + 31) / 32 * 32; }
int64_t amx_t_pad(int64_t T) { return (T + 31) / 32 * 32; }

void amx_pack_x(uint16_t * xb, const float * x, int64_t T, int64_t K, int64_t t0, int64_t t1) {
    const int64_t nkb = amx_k_pad(K) / 32;
    // Per 16-token block and k block: 16 tokens x 16 bf16 pairs, transposed so that each tile row holds one pair
    // index for all 16 tokens (a 16 x 16 transpose of 32-bit pairs).
    for (int64_t tb = t0 / 16; tb < (t1 + 15) / 16; ++tb) {
        for (int64_t kb = 0; kb < nkb; ++kb) {
            const int64_t k = kb * 32, left = K - k;
            const __mmask16 m0 = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
            const __mmask16 m1 = left >= 32 ? __mmask16(0xffff)
                                 : left > 16 ? __mmask16((1u << (left - 16)) - 1)
                                             : __mmask16(0);
            __m512 r[16];
            for (int n = 0; n < 16; ++n) {
                const int64_t t = tb * 16 + n;
                if (t < T) {
                    const __m512 lo = _mm512_maskz_loadu_ps(m0, x + t * K + k);
                    const __m512 hi = _mm512_maskz_loadu_ps(m1, x + t * K + k + 16);
                    r[n] = (__m512) _mm512_cvtne2ps_pbh(hi, lo);
                } else {
                    r[n] = _mm512_setzero_ps();
                }
            }
            transpose16(r);
            float * dst = (float *) (xb + (tb * nkb + kb) * 512);
            for (int kk = 0; kk < 16; ++kk) _mm512_storeu_ps(dst + kk * 16, r[kk]);
        }
    }
}

void amx_matmul_rows(float * y, int64_t ldy, const uint16_t * xb, int64_t T, const uint16_t * w, int64_t K,
                     int64_t N, int64_t n0, int64_t n1, uint16_t * scratch) {
    const int64_t Kp = amx_k_pad(K), nkb = Kp / 32, Tp = amx_t_pad(T);
    // With several token pairs each weight block is reused: copy the task's rows once into tile order (see
    // pack_rows). With one pair (decode) W is read in place; only a partial block is copied.
    const bool reuse = Tp > 32;
    if (reuse)
        for (int64_t nb = n0; nb < n1; nb += 32) pack_rows(scratch + (nb - n0) * Kp, w, K, N, nb);
    load_tile_config();
    alignas(64) float c[4][256];
    // Results of one token pair for all rows of the task, written out as contiguous row pieces: scattering
    // 16-float pieces straight into y rows (4 KiB apart) costs about as much as the tile arithmetic.
    alignas(64) float stage[32 * k_amx_rows_per_task];
    const int64_t lds = n1 - n0;
    for (int64_t tp = 0; tp < Tp; tp += 32) {
        const int n_tok = int(T - tp < 32 ? T - tp : 32);
        const uint16_t * b0 = xb + (tp / 16) * nkb * 512;
        const uint16_t * b1 = b0 + nkb * 512;
        for (int64_t nb = n0; nb < n1; nb += 32) {
            const int rows = int(N - nb < 32 ? N - nb : 32);
            // A tiles of k block kb: rows 0-15 at a + kb * a_step, rows 16-31 a_half further, row stride lda bytes.
            const uint16_t * a = w + nb * K;
            int64_t a_step = 32, a_half = 16 * K, lda = K * 2;
            const uint16_t * next = nullptr;  // rows to prefetch while streaming W in place
            if (reuse || rows < 32 || Kp != K) {
                a = reuse ? scratch + (nb - n0) * Kp : scratch;
                if (!reuse) pack_rows(scratch, w, K, N, nb);  // partial block: keeps tile loads inside W
                a_step = 1024;
                a_half = 512;
                lda = 64;
            } else if (nb + 64 <= N) {
                next = w + (nb + 32) * K;
            }
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            if (a_step == 32) {
                // W in place, one token pair (a verify step): the two 16-row halves stream one after the other.
                // Walking all 32 rows together puts 16 lines of each k block in one L1 set when the row stride is
                // 2 KiB (4 of them evicted before their tile load); a half puts 8.
                const bool two = n_tok > 16;
                for (int h = 0; h < 2; ++h) {
                    const uint16_t * ah = a + h * a_half;
                    const uint16_t * nh = h == 0 ? ah + a_half : next;
                    for (int64_t kb = 0; kb < nkb; ++kb) {
                        prefetch_half(ah, K, nh, kb + k_pf_ahead, nkb);
                        if (h == 0) {
                            _tile_loadd(4, ah + kb * 32, lda);
                            _tile_loadd(6, b0 + kb * 512, 64);
                            _tile_dpbf16ps(0, 4, 6);
                            if (two) {
                                _tile_loadd(7, b1 + kb * 512, 64);
                                _tile_dpbf16ps(1, 4, 7);
                            }
                        } else {
                            _tile_loadd(5, ah + kb * 32, lda);
                            _tile_loadd(6, b0 + kb * 512, 64);
                            _tile_dpbf16ps(2, 5, 6);
                            if (two) {
                                _tile_loadd(7, b1 + kb * 512, 64);
                                _tile_dpbf16ps(3, 5, 7);
                            }
                        }
                    }
                }
            } else if (n_tok > 16) {
                for (int64_t kb = 0; kb < nkb; ++kb) {
                    // Loads interleaved with the products that need them, so the first product starts early.
                    _tile_loadd(4, a + kb * a_step, lda);
                    _tile_loadd(6, b0 + kb * 512, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_loadd(7, b1 + kb * 512, 64);
                    _tile_dpbf16ps(1, 4, 7);
                    _tile_loadd(5, a + kb * a_step + a_half, lda);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
            } else {
                for (int64_t kb = 0; kb < nkb; ++kb) {
                    _tile_loadd(4, a + kb * a_step, lda);
                    _tile_loadd(6, b0 + kb * 512, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_loadd(5, a + kb * a_step + a_half, lda);
                    _tile_dpbf16ps(2, 5, 6);
                }
            }
            _tile_stored(0, c[0], 64);
            _tile_stored(1, c[1], 64);
            _tile_stored(2, c[2], 64);
            _tile_stored(3, c[3], 64);
            const int tok0 = n_tok < 16 ? n_tok : 16, tok1 = n_tok > 16 ? n_tok - 16 : 0;
            const int rows0 = rows < 16 ? rows : 16, rows1 = rows > 16 ? rows - 16 : 0;
            float * sb = stage + (nb - n0);
            store_transposed(sb, lds, c[0], rows0, tok0);
            if (tok1 > 0) store_transposed(sb + 16 * lds, lds, c[1], rows0, tok1);
            if (rows1 > 0) {
                store_transposed(sb + 16, lds, c[2], rows1, tok0);
                if (tok1 > 0) store_transposed(sb + 16 * lds + 16, lds, c[3], rows1, tok1);
            }
        }
        for (int j = 0; j < n_tok; ++j) std::memcpy(y + (tp + j) * ldy + n0, stage + j * lds, size_t(lds) * 4);
    }
    _tile_release();
}

}  // namespace minicpm
