// Flash-style attention task with BF16 dot products (vdpbf16ps) for bf16 KV caches, in the families that
// already round activations to bf16 (avx512bf16, avx512+amx). Precision: q * scale rounded to bf16 once per
// task, the softmax weights p rounded to bf16 once per 64-slot block (l sums the rounded values, so the
// output stays a convex combination of V rows), K and V used as stored, f32 accumulation, exp by fast_exp.
// Other KV dtypes or head dims that are not a multiple of 16 go to the exact task (attention-impl.h).
//
// Layouts per 64-slot KV block: kp[hd/2][64] holds, for each slot, the (d, d+1) pair of its key as one
// 32-bit lane, so Q.K is hd/2 vdpbf16ps per 16 slots against a broadcast query pair; vp[32][hd] holds the
// (slot j, slot j+1) pair of each V column, so P.V is 32 vdpbf16ps per 16 dims against a broadcast p pair.
// Up to 4 queries go together (the group heads of a row, then the next rows) so 16 accumulator chains hide
// the instruction's latency.
#include "cpu/ops-fast.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/x86-intrin.h"

namespace minicpm {

namespace {
#include "cpu/fast-exp.h"

constexpr int k_blk = MINICPM_KV_BLOCK_SIZE;
constexpr int k_qt = 4;  // queries per tile

inline __m512bh bcast_pair(uint32_t v) { return (__m512bh) _mm512_set1_epi32(int32_t(v)); }

// s[q][64] = query q . every slot of the block; q[i] holds the pairs of query i (hd / 2 of them).
template <int NQ> void scores(float * s, const uint32_t * const * q, int32_t hp, const uint32_t * kp) {
    __m512 acc[NQ][4];
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_setzero_ps();
    for (int32_t d = 0; d < hp; ++d) {
        __m512bh kv[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) kv[c] = (__m512bh) _mm512_loadu_si512(kp + d * k_blk + 16 * c);
#pragma GCC unroll 4
        for (int i = 0; i < NQ; ++i) {
            const __m512bh b = bcast_pair(q[i][d]);
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_dpbf16_ps(acc[i][c], kv[c], b);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) _mm512_storeu_ps(s + i * k_blk + 16 * c, acc[i][c]);
}

// o[i][d0, d0 + 16 NV) = o * alpha[i] + sum over slot pairs of pp[i][j] . vp[j] (pp rows 32 pairs).
template <int NQ, int NV>
void pv(float * const * o, const float * alpha, const uint32_t * pp, const uint32_t * vp, int32_t hd, int32_t d0) {
    __m512 acc[NQ][NV];
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_mul_ps(_mm512_loadu_ps(o[i] + d0 + 16 * v), _mm512_set1_ps(alpha[i]));
    for (int32_t j = 0; j < k_blk / 2; ++j) {
        __m512bh vv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) vv[v] = (__m512bh) _mm512_loadu_si512(vp + j * hd + d0 + 16 * v);
#pragma GCC unroll 4
        for (int i = 0; i < NQ; ++i) {
            const __m512bh b = bcast_pair(pp[i * (k_blk / 2) + j]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], vv[v], b);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) _mm512_storeu_ps(o[i] + d0 + 16 * v, acc[i][v]);
}

template <int NQ>
void pv_all(float * const * o, const float * alpha, const uint32_t * pp, const uint32_t * vp, int32_t hd) {
    int32_t d0 = 0;
    for (; d0 + 64 <= hd; d0 += 64) pv<NQ, 4>(o, alpha, pp, vp, hd, d0);
    switch ((hd - d0) / 16) {
        case 3: pv<NQ, 3>(o, alpha, pp, vp, hd, d0); break;
        case 2: pv<NQ, 2>(o, alpha, pp, vp, hd, d0); break;
        case 1: pv<NQ, 1>(o, alpha, pp, vp, hd, d0); break;
        default: break;
    }
}

// The block's keys and values in the pair layouts (slots past n_slot zero). k and v: the block's pool rows.
void pack_block(uint32_t * kp, uint32_t * vp, const uint16_t * k, const uint16_t * v, int32_t hd, int32_t n_slot) {
    const int32_t hp = hd / 2;
    const uint64_t live = n_slot >= k_blk ? ~uint64_t(0) : (uint64_t(1) << n_slot) - 1;
    const __m512i slot = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(hp));
    for (int32_t c = 0; c < k_blk; c += 16) {  // 16 slots: one gather per key pair
        const __mmask16 mk = __mmask16(live >> c);
        const int32_t * kc = (const int32_t *) (k + int64_t(c) * hd);
        for (int32_t d = 0; d < hp; ++d)
            _mm512_storeu_si512(kp + d * k_blk + c, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mk, slot,
                                                                                  kc + d, 4));
    }
    for (int32_t j = 0; j < k_blk / 2; ++j) {
        const uint16_t * v0 = v + int64_t(2 * j) * hd;
        for (int32_t d = 0; d < hd; d += 16) {
            const __m512i lo = 2 * j < n_slot ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *) (v0 + d)))
                                              : _mm512_setzero_si512();
            const __m512i hi = 2 * j + 1 < n_slot
                                   ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *) (v0 + hd + d)))
                                   : _mm512_setzero_si512();
            _mm512_storeu_si512(vp + int64_t(j) * hd + d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}

// fast_exp (fast-exp.h) on 16 lanes: the same clamps, reduction and polynomial.
inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_add_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f))),
                                   _mm512_mul_ps(n, _mm512_set1_ps(2.12194440e-4f)));
    __m512 p = _mm512_set1_ps(1.38888894e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.33333377e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.16666679e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.66666672e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.00000000e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

// Online-softmax update of one query from its raw scores s[64]: slots >= lim and those in `hidden` get weight 0;
// writes the bf16-rounded weights as 32 pairs to pp, returns alpha (the rescale of the old output) and updates
// m and l.
float softmax_block(const float * s, uint32_t * pp, int32_t lim, uint64_t hidden, float & m, float & l) {
    const uint64_t live = (lim >= k_blk ? ~uint64_t(0) : (uint64_t(1) << lim) - 1) & ~hidden;
    __m512 v[4];
    __m512 mv = _mm512_set1_ps(m);
    for (int c = 0; c < 4; ++c) {
        v[c] = _mm512_loadu_ps(s + 16 * c);
        mv = _mm512_mask_max_ps(mv, __mmask16(live >> (16 * c)), mv, v[c]);
    }
    const float mx = _mm512_reduce_max_ps(mv);
    const __m512 mxv = _mm512_set1_ps(mx);
    __m512 sum = _mm512_setzero_ps();
    for (int c = 0; c < 4; c += 2) {
        const __m512 p0 = _mm512_maskz_mov_ps(__mmask16(live >> (16 * c)), exp16(_mm512_sub_ps(v[c], mxv)));
        const __m512 p1 = _mm512_maskz_mov_ps(__mmask16(live >> (16 * c + 16)), exp16(_mm512_sub_ps(v[c + 1], mxv)));
        const __m512i b = (__m512i) _mm512_cvtne2ps_pbh(p1, p0);
        _mm512_storeu_si512(pp + 8 * c, b);
        sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(b, 16)));                     // even slots
        sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_and_si512(b, _mm512_set1_epi32(-65536))));  // odd
    }
    const float alpha = fast_exp(m - mx);
    l = l * alpha + _mm512_reduce_add_ps(sum);
    m = mx;
    return alpha;
}

}  // namespace

void attention_task_dpbf16_avx512(float * out, const float * q, const kv_layer & kv, const kv_segment & sg,
                                  int32_t r0, int32_t r1, int32_t n_head, int32_t hk, int32_t group, float scale,
                                  float * scratch) {
    const int32_t hd = kv.head_dim, hp = hd / 2, nq = (r1 - r0) * group;
    if (kv.type != dtype::bf16 || hd % 16 != 0) {
        attention_task_avx512(out, q, kv, sg, r0, r1, n_head, hk, group, scale, scratch);
        return;
    }
    // Scratch (attention_scratch_floats): kp [hp][64] + vp [32][hd] (32-bit pairs), o [nq][hd], m, l [nq],
    // s [4][64], pp [4][32], qb [nq][hp] (pairs).
    uint32_t * kp = (uint32_t *) scratch;
    uint32_t * vp = kp + hp * k_blk;
    float * o = (float *) (vp + (k_blk / 2) * hd);
    float * m = o + int64_t(nq) * hd;
    float * l = m + nq;
    float * s = l + nq;
    uint32_t * pp = (uint32_t *) (s + k_qt * k_blk);
    uint32_t * qb = pp + k_qt * (k_blk / 2);
    for (int32_t iq = 0; iq < nq; ++iq) {
        m[iq] = -INFINITY;
        l[iq] = 0.0f;
        const int32_t r = r0 + iq / group, h = hk * group + iq % group;
        const float * qh = q + (int64_t(sg.row_begin + r) * n_head + h) * hd;
        uint16_t * dst = (uint16_t *) (qb + int64_t(iq) * hp);
        for (int32_t d = 0; d < hd; d += 16)
            _mm256_storeu_si256((__m256i *) (dst + d),
                                (__m256i) _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(qh + d), _mm512_set1_ps(scale))));
    }
    std::memset(o, 0, size_t(nq) * hd * 4);

    const int32_t n_pos = sg.n_past + r1;
    const int32_t n_blocks = (n_pos + k_blk - 1) / k_blk;
    for (int32_t b = 0; b < n_blocks; ++b) {
        const int32_t p0 = b * k_blk;
        const int32_t n_slot = n_pos - p0 < k_blk ? n_pos - p0 : k_blk;
        const int64_t base = (int64_t(sg.blocks[b]) * kv.n_head_kv + hk) * k_blk * hd;
        pack_block(kp, vp, (const uint16_t *) kv.k + base, (const uint16_t *) kv.v + base, hd, n_slot);
        // Tiles of up to k_qt queries that see at least one slot of this block.
        int32_t tile_iq[k_qt], tile_lim[k_qt], nt = 0;
        uint64_t tile_hidden[k_qt];
        for (int32_t iq = 0; iq <= nq; ++iq) {
            if (iq < nq) {
                const int32_t r = r0 + iq / group;
                const int32_t visible = sg.n_past + r + 1 - p0;
                if (visible <= 0) continue;
                const int32_t lim = visible < k_blk ? visible : k_blk;
                uint64_t hidden = 0;
                if (sg.mask != nullptr)
                    for (int32_t j = sg.n_past > p0 ? sg.n_past - p0 : 0; j < lim; ++j)
                        if (!kv_row_visible(sg, r, p0 + j - sg.n_past)) hidden |= uint64_t(1) << j;
                if (lim == 64 ? hidden == ~uint64_t(0) : hidden == (uint64_t(1) << lim) - 1) continue;
                tile_iq[nt] = iq;
                tile_lim[nt] = lim;
                tile_hidden[nt] = hidden;
                ++nt;
                if (nt < k_qt) continue;
            }
            if (nt == 0) continue;
            const uint32_t * qs[k_qt];
            float * os[k_qt];
            float alpha[k_qt];
            for (int32_t i = 0; i < nt; ++i) {
                qs[i] = qb + int64_t(tile_iq[i]) * hp;
                os[i] = o + int64_t(tile_iq[i]) * hd;
            }
            switch (nt) {
                case 4: scores<4>(s, qs, hp, kp); break;
                case 3: scores<3>(s, qs, hp, kp); break;
                case 2: scores<2>(s, qs, hp, kp); break;
                default: scores<1>(s, qs, hp, kp); break;
            }
            for (int32_t i = 0; i < nt; ++i)
                alpha[i] = softmax_block(s + i * k_blk, pp + i * (k_blk / 2), tile_lim[i], tile_hidden[i],
                                         m[tile_iq[i]], l[tile_iq[i]]);
            switch (nt) {
                case 4: pv_all<4>(os, alpha, pp, vp, hd); break;
                case 3: pv_all<3>(os, alpha, pp, vp, hd); break;
                case 2: pv_all<2>(os, alpha, pp, vp, hd); break;
                default: pv_all<1>(os, alpha, pp, vp, hd); break;
            }
            nt = 0;
        }
    }
    for (int32_t iq = 0; iq < nq; ++iq) {
        const int32_t r = r0 + iq / group, h = hk * group + iq % group;
        const float inv = 1.0f / l[iq];
        float * dst = out + (int64_t(sg.row_begin + r) * n_head + h) * hd;
        for (int32_t d = 0; d < hd; ++d) dst[d] = o[int64_t(iq) * hd + d] * inv;
    }
}

}  // namespace minicpm
