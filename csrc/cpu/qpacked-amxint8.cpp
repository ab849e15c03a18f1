// AMX-INT8 kernel over packed weights (qpack.h) for batches: the 8 column quads of a 32-column block of a q8
// panel are one tdpbsud B tile as stored (16 rows x 4 u8 per quad), so prefill reads the same copy as decode;
// a q4 block's 4 quads unpack into 8 (low nibbles: columns 0-15, high: 16-31) in an L1 scratch tile. The
// activations, quantized per 32-column block in natural order, are the A tile (16 tokens x 32 s8), regrouped
// per tile. C comes out as [token][row], so it needs no transpose; per block it is scaled by the token's block
// scale, per group offset-corrected and scaled by the row's group scale, in the VNNI kernel's order.
#include "cpu/ops-fast.h"
#include "cpu/qmatmul.h"

#include "cpu/x86-intrin.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace minicpm {

namespace {

// The 8 B-tile rows of each 32-column block of a q4 panel (nibble columns in natural order), all K columns.
void unpack_q4(uint8_t * dst, const uint8_t * panel, int64_t nb) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; ++b)
        for (int i = 0; i < 4; ++i) {
            const __m512i v = _mm512_load_si512(panel + 256 * b + 64 * i);
            _mm512_store_si512(dst + 512 * b + 64 * i, _mm512_and_si512(v, m4));
            _mm512_store_si512(dst + 512 * b + 64 * (4 + i), _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
        }
}

// grp[16 tokens][row stride 32] += float(c) * xs[token] for the n_tok tokens of a C tile.
inline void scale_add(float * grp, const int32_t * c, const float * xs, int64_t nb, int n_tok) {
    for (int m = 0; m < n_tok; ++m) {
        const __m512 f = _mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * m));
        _mm512_store_ps(grp + 32 * m, _mm512_fmadd_ps(f, _mm512_set1_ps(xs[m * nb]), _mm512_load_ps(grp + 32 * m)));
    }
}

// Group of one block (group 32): tot[16 tokens][row stride 32] += (float(c) * xs - xg * z) * s directly, in the
// VNNI kernel's order, with no group sums kept.
inline void scale_fold(float * tot, const int32_t * c, const float * xs, int64_t nb, const float * xg, int64_t G,
                       __m512 z, __m512 s, int n_tok) {
    for (int m = 0; m < n_tok; ++m) {
        const __m512 off = _mm512_mul_ps(_mm512_set1_ps(-xg[m * G]), z);
        const __m512 d = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * m)), _mm512_set1_ps(xs[m * nb]), off);
        _mm512_store_ps(tot + 32 * m, _mm512_fmadd_ps(d, s, _mm512_load_ps(tot + 32 * m)));
    }
}

}  // namespace

void qpacked_amxint8(float * y, int64_t ldy, const int8_t * xq, const float * xs, const float * xg, int64_t T,
                     const uint8_t * packed, const qpack_layout & L, int64_t p0, int64_t p1) {
    const int64_t K = L.K, G = L.G, nb = K / 32, bpg = L.group / 32, ss = L.f16_scales ? 2 : 4;
    const int64_t n_tiles = (T + 15) / 16;
    const int8_t * xa = xq;  // A tiles (qpack_tile_x)
    static thread_local std::vector<uint8_t> q4buf;
    if (L.q4) q4buf.resize(size_t(2 * 16 * K) + 64);
    uint8_t * q4b = (uint8_t *) (((uintptr_t) q4buf.data() + 63) & ~uintptr_t(63));
    alignas(64) int32_t c[4][256];
    alignas(64) float   grp[32 * 32], tot[32 * 32];  // [32 tokens][2 panels x 16 rows]
    const __m512        c0 = _mm512_set1_ps(L.q4 ? 8.0f : 128.0f);
    amx_request_permission();  // process-wide once granted; cached per thread
    qamx_load_config();
    for (int64_t p = p0; p < p1; p += 2) {
        const int       np = p + 1 < p1 ? 2 : 1;
        const uint8_t * pw[2] = {packed + p * L.panel_bytes, packed + (p + np - 1) * L.panel_bytes};
        const uint8_t * bw[2] = {pw[0], pw[1]};
        if (L.q4)  // once per panel pair, then read from L1 / L2 by every token pair
            for (int j = 0; j < np; ++j) {
                unpack_q4(q4b + j * 16 * K, pw[j], nb);
                bw[j] = q4b + j * 16 * K;
            }
        for (int64_t tt = 0; tt < n_tiles; tt += 2) {
            const int      nt[2] = {int(std::min<int64_t>(16, T - 16 * tt)), int(std::clamp<int64_t>(T - 16 * tt - 16, 0, 16))};
            const int8_t * a0 = xa + tt * nb * 512, * a1 = a0 + nb * 512;
            const int64_t  t0 = 16 * tt;
            std::memset(tot, 0, sizeof(tot));
            for (int64_t g = 0; g < G; ++g) {
                __m512 s[2], z[2];  // per panel: the group's scales and zero points
                for (int j = 0; j < np; ++j) {
                    const uint8_t * sc = pw[j] + L.weight_bytes + g * 16 * ss;
                    const uint8_t * zp = pw[j] + L.weight_bytes + G * 16 * ss + g * 16;
                    s[j] = L.f16_scales ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) sc))
                                        : _mm512_loadu_ps((const float *) sc);
                    z[j] = L.zeros ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) zp))) : c0;
                }
                // Offset first, as the VNNI kernel does: sum_b s_b * dot(u, x_b) - c * sum_b s_b * sum(x_b).
                if (bpg > 1)
                    for (int m = 0; m < nt[0] + nt[1]; ++m)
                        for (int j = 0; j < np; ++j)
                            _mm512_store_ps(grp + 32 * m + 16 * j,
                                            _mm512_mul_ps(_mm512_set1_ps(-xg[(t0 + m) * G + g]), z[j]));
                const int64_t b1 = g + 1 == G ? nb : (g + 1) * bpg;
                for (int64_t b = g * bpg; b < b1; ++b) {
                    // All products of the block first, then the stores: the vector work waits once per block.
                    _tile_zero(0);
                    _tile_zero(1);
                    _tile_loadd(4, a0 + 512 * b, 32);
                    _tile_loadd(6, bw[0] + 512 * b, 64);
                    _tile_loadd(5, a1 + 512 * b, 32);
                    _tile_dpbsud(0, 4, 6);
                    _tile_dpbsud(1, 5, 6);
                    if (np == 2) {
                        _tile_zero(2);
                        _tile_zero(3);
                        _tile_loadd(7, bw[1] + 512 * b, 64);
                        _tile_dpbsud(2, 4, 7);
                        _tile_dpbsud(3, 5, 7);
                    }
                    _tile_stored(0, c[0], 64);
                    _tile_stored(1, c[1], 64);
                    if (np == 2) {
                        _tile_stored(2, c[2], 64);
                        _tile_stored(3, c[3], 64);
                    }
                    const float * sx = xs + t0 * nb + b;
                    for (int j = 0; j < np; ++j)
                        for (int h = 0; h < 2; ++h) {
                            if (bpg == 1) {
                                scale_fold(tot + 16 * 32 * h + 16 * j, c[2 * j + h], sx + 16 * h * nb, nb,
                                           xg + (t0 + 16 * h) * G + g, G, z[j], s[j], nt[h]);
                            } else {
                                scale_add(grp + 16 * 32 * h + 16 * j, c[2 * j + h], sx + 16 * h * nb, nb, nt[h]);
                            }
                        }
                }
                if (bpg == 1) continue;
                for (int j = 0; j < np; ++j)
                    for (int m = 0; m < nt[0] + nt[1]; ++m) {
                        float * acc = tot + 32 * m + 16 * j;
                        _mm512_store_ps(acc, _mm512_fmadd_ps(_mm512_load_ps(grp + 32 * m + 16 * j), s[j], _mm512_load_ps(acc)));
                    }
            }
            for (int j = 0; j < np; ++j) {
                const int64_t   nr = L.N - (p + j) * 16;
                const __mmask16 m = nr >= 16 ? __mmask16(0xffff) : __mmask16((1u << nr) - 1);
                for (int t = 0; t < nt[0] + nt[1]; ++t)
                    _mm512_mask_storeu_ps(y + (t0 + t) * ldy + (p + j) * 16, m, _mm512_load_ps(tot + 32 * t + 16 * j));
            }
        }
    }
    _tile_release();
}

}  // namespace minicpm
