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

// Software prefetch distance in each panel stream, as the VNNI kernel's (one page ahead).
constexpr int64_t k_prefetch = 4096;
// From this many tokens on, the kernel without the pipelining (prefill): its vector work waits for the tile
// stores, but in the model's prefill it came out ahead (bench-engine q8 g32, three interleaved sittings).
constexpr int64_t k_unpipelined_rows = 64;

// Smaller batches (17..63 tokens), software pipelined: passes of 32 tokens x 2 panels (C tile 2 j + h for panel
// j, token tile h); block b's products are issued and their C tiles stored, then block b - 1's vector work reads
// the C tiles stored one block earlier (a vector load of what a tile store just wrote waits for the store buffer
// to drain); q4 panels are unpacked whole first (the dispatch sends q4 here only when a test forces it). In the
// model, batches of 32 sequences decode faster with it than with VNNI (qmatmul.cpp).
template <bool Q4>
void pipelined(float * y, int64_t ldy, const int8_t * xa, const float * xs, const float * xg, int64_t T,
               const uint8_t * packed, const qpack_layout & L, int64_t p0, int64_t p1) {
    constexpr int PN = 2, W = 32;  // panels per pass; floats per token row of grp / tot
    const int64_t K = L.K, G = L.G, nb = K / 32, bpg = L.group / 32, ss = L.f16_scales ? 2 : 4;
    const int64_t n_pass = (T + 31) / 32;
    alignas(64) int32_t c[2][4][256];
    alignas(64) float   grp[32 * W], tot[32 * W];  // [32 tokens][2 panels x 16 rows]
    static thread_local std::vector<uint8_t> q4buf;  // the panel pair's q4 blocks, unpacked
    if (Q4) q4buf.resize(size_t(PN * 16 * K) + 64);
    uint8_t * q4w = (uint8_t *) (((uintptr_t) q4buf.data() + 63) & ~uintptr_t(63));
    const __m512 c0 = _mm512_set1_ps(Q4 ? 8.0f : 128.0f);
    qamx_load_config();
    for (int64_t p = p0; p < p1; p += PN) {
        const int       np = int(std::min<int64_t>(PN, p1 - p));
        const uint8_t * pw[PN];  // a short pass repeats its last panel in the products it does not store
        for (int j = 0; j < PN; ++j) pw[j] = packed + (p + std::min(j, np - 1)) * L.panel_bytes;
        if (Q4)
            for (int j = 0; j < PN; ++j) unpack_q4(q4w + j * 16 * K, pw[j], nb);
        for (int64_t pass = 0; pass < n_pass; ++pass) {
            const int64_t  t0 = 32 * pass;
            const int      M = int(std::min<int64_t>(32, T - t0));  // tokens of this pass
            const int8_t * a0 = xa + t0 * K;  // token tile t0 / 16
            const float *  xsp = xs + t0 * nb;
            const float *  xgp = xg + t0 * G;
            std::memset(tot, 0, size_t(M) * W * sizeof(float));
            __m512 s[PN], z[PN];  // the current group's scales and zero points per panel
            // Block b's C tiles (in c[b % 2]) into the group sums or, for a one-block group, the totals.
            auto vector_work = [&](int64_t b) {
                const int64_t g = b / bpg;
                const int32_t(*cb)[256] = c[b % 2];
                if (b == g * bpg) {
                    for (int j = 0; j < np; ++j) {
                        const uint8_t * sc = pw[j] + L.weight_bytes + g * 16 * ss;
                        const uint8_t * zp = pw[j] + L.weight_bytes + G * 16 * ss + g * 16;
                        s[j] = L.f16_scales ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) sc))
                                            : _mm512_loadu_ps((const float *) sc);
                        z[j] = L.zeros ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) zp)))
                                       : c0;
                    }
                    if (bpg > 1)  // offset first, as the VNNI kernel does
                        for (int m = 0; m < M; ++m)
                            for (int j = 0; j < np; ++j)
                                _mm512_store_ps(grp + W * m + 16 * j, _mm512_mul_ps(_mm512_set1_ps(-xgp[m * G + g]), z[j]));
                }
                for (int m = 0; m < M; ++m) {
                    const __m512    sx = _mm512_set1_ps(xsp[m * nb + b]);
                    const int       h = m / 16;
                    const int32_t * cm = cb[0] + 16 * (m % 16);
                    if (bpg == 1) {  // a one-block group folds straight into the totals, in the VNNI kernel's order
                        const __m512 nx = _mm512_set1_ps(-xgp[m * G + g]);
                        for (int j = 0; j < np; ++j) {
                            const __m512 d = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cm + 256 * (2 * j + h))),
                                                             sx, _mm512_mul_ps(nx, z[j]));
                            float * t = tot + W * m + 16 * j;
                            _mm512_store_ps(t, _mm512_fmadd_ps(d, s[j], _mm512_load_ps(t)));
                        }
                    } else {
                        for (int j = 0; j < np; ++j) {
                            float * a = grp + W * m + 16 * j;
                            _mm512_store_ps(a, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cm + 256 * (2 * j + h))),
                                                               sx, _mm512_load_ps(a)));
                        }
                    }
                }
                if (bpg > 1 && (b + 1 == nb || (b + 1) % bpg == 0))  // the group's last block
                    for (int m = 0; m < M; ++m)
                        for (int j = 0; j < np; ++j) {
                            float * t = tot + W * m + 16 * j;
                            _mm512_store_ps(t, _mm512_fmadd_ps(_mm512_load_ps(grp + W * m + 16 * j), s[j], _mm512_load_ps(t)));
                        }
            };
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t * bt[PN];
                for (int j = 0; j < PN; ++j) {
                    const uint8_t * blk = pw[j] + b * (Q4 ? 256 : 512);
                    if (pass == 0)
                        for (int l = 0; l < (Q4 ? 4 : 8); ++l) _mm_prefetch((const char *) (blk + k_prefetch + 64 * l), _MM_HINT_T0);
                    bt[j] = Q4 ? q4w + j * 16 * K + 512 * b : blk;
                }
                int32_t(*cb)[256] = c[b % 2];
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                _tile_loadd(4, a0 + 512 * b, 32);
                _tile_loadd(5, a0 + 16 * K + 512 * b, 32);  // may be the zero tile past T (qpack_tile_bytes)
                _tile_loadd(6, bt[0], 64);
                _tile_dpbsud(0, 4, 6);
                _tile_dpbsud(1, 5, 6);
                _tile_loadd(7, bt[1], 64);
                _tile_dpbsud(2, 4, 7);
                _tile_dpbsud(3, 5, 7);
                _tile_stored(0, cb[0], 64);
                _tile_stored(1, cb[1], 64);
                _tile_stored(2, cb[2], 64);
                _tile_stored(3, cb[3], 64);
                if (b > 0) vector_work(b - 1);
            }
            vector_work(nb - 1);
            for (int j = 0; j < np; ++j) {
                const int64_t   nr = L.N - (p + j) * 16;
                const __mmask16 mk = nr >= 16 ? __mmask16(0xffff) : __mmask16((1u << nr) - 1);
                for (int m = 0; m < M; ++m)
                    _mm512_mask_storeu_ps(y + (t0 + m) * ldy + (p + j) * 16, mk, _mm512_load_ps(tot + W * m + 16 * j));
            }
        }
    }
}

}  // namespace

void qpacked_amxint8(float * y, int64_t ldy, const int8_t * xq, const float * xs, const float * xg, int64_t T,
                     const uint8_t * packed, const qpack_layout & L, int64_t p0, int64_t p1) {
    amx_request_permission();  // process-wide once granted; cached per thread
    if (T < k_unpipelined_rows) {
        if (L.q4) {
            pipelined<true>(y, ldy, xq, xs, xg, T, packed, L, p0, p1);
        } else {
            pipelined<false>(y, ldy, xq, xs, xg, T, packed, L, p0, p1);
        }
        _tile_release();
        return;
    }
    const int64_t K = L.K, G = L.G, nb = K / 32, bpg = L.group / 32, ss = L.f16_scales ? 2 : 4;
    const int64_t n_tiles = (T + 15) / 16;
    const int8_t * xa = xq;  // A tiles (qpack_tile_x)
    static thread_local std::vector<uint8_t> q4buf;
    if (L.q4) q4buf.resize(size_t(2 * 16 * K) + 64);
    uint8_t * q4b = (uint8_t *) (((uintptr_t) q4buf.data() + 63) & ~uintptr_t(63));
    alignas(64) int32_t c[4][256];
    alignas(64) float   grp[32 * 32], tot[32 * 32];  // [32 tokens][2 panels x 16 rows]
    const __m512        c0 = _mm512_set1_ps(L.q4 ? 8.0f : 128.0f);
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
