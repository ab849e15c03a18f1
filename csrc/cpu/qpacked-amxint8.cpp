// AMX-INT8 kernel over packed weights (qpack.h) for batches: the 8 column quads of a 32-column block of a q8
// panel are one tdpbsud B tile as stored (16 rows x 4 u8 per quad), so prefill reads the same copy as decode;
// a q4 block's 4 quads unpack into 8 (low nibbles: columns 0-15, high: 16-31) in an L1 scratch tile. The
// activations, quantized per 32-column block in natural order, are the A tile (16 tokens x 32 s8), regrouped
// per tile. C comes out as [token][row], so it needs no transpose; per block it is scaled by the token's block
// scale, per group offset-corrected and scaled by the row's group scale, in the VNNI kernel's order.
#include "cpu/ops-fast.h"
#include "cpu/qmatmul.h"

// GCC 12's AVX-512 headers trip -Wuninitialized inside their own intrinsics (a known header false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

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

// One 16-token x 16-row tile over all K: the group's float sums stay in 16 registers (one per token), so each
// block costs a tile store and 16 convert + FMA. The next block's tile product is issued before this block's
// vector work, on the other tile set (A 4 / 5, B 6 / 7, C 0 / 1), so that AMX and the vector units overlap.
void tile_rows(float * y, int64_t ldy, const int8_t * a, const float * xs, const float * xg, int n_tok,
               const uint8_t * bw, const uint8_t * panel, const qpack_layout & L, int64_t nrows) {
    const int64_t G = L.G, nb = L.K / 32, bpg = L.group / 32, ss = L.f16_scales ? 2 : 4;
    alignas(64) int32_t c[2][256];
    auto issue = [&](int64_t b) {
        if (b % 2 == 0) {
            _tile_loadd(4, a + 512 * b, 32);
            _tile_loadd(6, bw + 512 * b, 64);
            _tile_zero(0);
            _tile_dpbsud(0, 4, 6);
            _tile_stored(0, c[0], 64);
        } else {
            _tile_loadd(5, a + 512 * b, 32);
            _tile_loadd(7, bw + 512 * b, 64);
            _tile_zero(1);
            _tile_dpbsud(1, 5, 7);
            _tile_stored(1, c[1], 64);
        }
    };
    __m512 tot[16], grp[16];
    for (int m = 0; m < 16; ++m) tot[m] = _mm512_setzero_ps();
    issue(0);
    for (int64_t b = 0; b < nb; ++b) {
        const int64_t g = b / bpg;
        if (b % bpg == 0) {
            const uint8_t * zp = panel + L.weight_bytes + G * 16 * ss + g * 16;
            const __m512 z = L.zeros ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) zp)))
                                     : _mm512_set1_ps(L.q4 ? 8.0f : 128.0f);
            // Offset first, as the VNNI kernel does: sum_b s_b * dot(u, x_b) - c * sum_b s_b * sum(x_b).
            for (int m = 0; m < 16; ++m) grp[m] = _mm512_mul_ps(_mm512_set1_ps(m < n_tok ? -xg[m * G + g] : 0.0f), z);
        }
        if (b + 1 < nb) issue(b + 1);
        const int32_t * cb = c[b % 2];
        for (int m = 0; m < 16; ++m)
            grp[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cb + 16 * m)),
                                     _mm512_set1_ps(m < n_tok ? xs[m * nb + b] : 0.0f), grp[m]);
        if (b + 1 == nb || (b + 1) % bpg == 0) {
            const uint8_t * sc = panel + L.weight_bytes + g * 16 * ss;
            const __m512    s = L.f16_scales ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) sc))
                                             : _mm512_loadu_ps((const float *) sc);
            for (int m = 0; m < 16; ++m) tot[m] = _mm512_fmadd_ps(grp[m], s, tot[m]);
        }
    }
    const __mmask16 mask = nrows >= 16 ? __mmask16(0xffff) : __mmask16((1u << nrows) - 1);
    for (int m = 0; m < n_tok; ++m) _mm512_mask_storeu_ps(y + m * ldy, mask, tot[m]);
}

}  // namespace

void qpacked_amxint8(float * y, int64_t ldy, const int8_t * xq, const float * xs, const float * xg, int64_t T,
                     const uint8_t * packed, const qpack_layout & L, int64_t p0, int64_t p1) {
    const int64_t K = L.K, nb = K / 32, n_tiles = (T + 15) / 16;
    // Activations regrouped as A tiles, [token tile][block][16 tokens x 32], zero past T: each tile load is 512
    // contiguous bytes (rows K apart would share few L1 sets), and a last partial tile reads zeros.
    static thread_local std::vector<int8_t>  xa;
    static thread_local std::vector<uint8_t> q4buf;
    xa.assign(size_t(n_tiles * nb * 512), 0);
    for (int64_t t = 0; t < T; ++t)
        for (int64_t b = 0; b < nb; ++b)
            std::memcpy(xa.data() + ((t / 16) * nb + b) * 512 + (t % 16) * 32, xq + t * K + 32 * b, 32);
    if (L.q4) q4buf.resize(size_t(16 * K) + 64);
    uint8_t * q4b = (uint8_t *) (((uintptr_t) q4buf.data() + 63) & ~uintptr_t(63));
    amx_request_permission();  // process-wide once granted; cached per thread
    qamx_load_config();
    for (int64_t p = p0; p < p1; ++p) {
        const uint8_t * panel = packed + p * L.panel_bytes;
        if (L.q4) unpack_q4(q4b, panel, nb);  // once per panel, then read from L1 / L2 by every token tile
        const uint8_t * bw = L.q4 ? q4b : panel;
        for (int64_t tt = 0; tt < n_tiles; ++tt) {
            const int n_tok = int(std::min<int64_t>(16, T - 16 * tt));
            tile_rows(y + 16 * tt * ldy + 16 * p, ldy, xa.data() + tt * nb * 512, xs + 16 * tt * nb,
                      xg + 16 * tt * L.G, n_tok, bw, panel, L, L.N - 16 * p);
        }
    }
    _tile_release();
}

}  // namespace minicpm
