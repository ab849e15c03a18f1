// ARM64 int8 matrix-multiply kernel of the quantized matmul (see qmatmul.h), for CPUs with FEAT_I8MM
// (HWCAP2_I8MM): smmla multiplies a 2x8 block of weight rows by a 2x8 block of tokens into the 2x2 int32
// results [r0 t0, r0 t1, r1 t0, r1 t1], so each lane is one output and needs no horizontal sum. Weight and
// activation operands are two rows' 8-column halves interleaved (zip of 64-bit lanes). Signedness and the
// activation blocks are as in qmatmul-neon-impl.h. Tiles of up to 4 rows x 4 tokens; decode (one token), the
// odd token and the odd row run that file's sdot kernel (every I8MM CPU also has DotProd).
#include "cpu/qmatmul.h"

#include <arm_neon.h>

namespace minicpm {

namespace {

// The dotprod kernel (for the parts smmla does not fit) and the helpers shared with it.
inline int32x4_t qn_dot16(int32x4_t acc, int8x16_t a, int8x16_t b) { return vdotq_s32(acc, a, b); }

#include "cpu/qmatmul-neon-impl.h"

// Two rows' 16-column vectors -> the smmla operands for columns 0..7 (lo) and 8..15 (hi).
inline void pair(int8x16_t a, int8x16_t b, int8x16_t & lo, int8x16_t & hi) {
    lo = vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
    hi = vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
}

// RP row pairs x TP token pairs from row r0 and token t0.
template <int RP, int TP, bool Q4>
inline void mm_tile(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t K,
                    const uint8_t * w, const float * ws, const float * wc, int64_t r0, int64_t n0, int64_t t0,
                    int64_t G, int64_t gsteps) {
    const int64_t row_bytes = Q4 ? K / 2 : K;
    float32x4_t   tot[RP][TP], corr[RP][TP];
    for (int p = 0; p < RP; ++p)
        for (int q = 0; q < TP; ++q) tot[p][q] = corr[p][q] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < G; ++g) {
        float32x4_t acc[RP][TP];
        for (int p = 0; p < RP; ++p)
            for (int q = 0; q < TP; ++q) acc[p][q] = vdupq_n_f32(0.0f);
        const int64_t k0 = g * gsteps * 64, k1 = k0 + gsteps * 64;
        for (int64_t k = k0; k < k1; k += 64) {
            int8x16_t wv[RP][2][4];
            for (int p = 0; p < RP; ++p)
                for (int e = 0; e < 2; ++e) load_w<Q4>(w + (r0 + 2 * p + e) * row_bytes, k, wv[p][e]);
            for (int q = 0; q < TP; ++q) {
                const int64_t ta = t0 + 2 * q, tb = ta + 1;
                int8x16_t     xt0[4], xt1[4];
                for (int i = 0; i < 4; ++i) {
                    xt0[i] = vld1q_s8(xq + ta * K + k + 16 * i);
                    xt1[i] = vld1q_s8(xq + tb * K + k + 16 * i);
                }
                for (int blk = 0; blk < 2; ++blk) {
                    const int   va = vec_a<Q4>(blk), vb = vec_b<Q4>(blk);
                    const float sa = xls[ta * (K / 4) + k / 4 + lane<Q4>(blk)];
                    const float sb = xls[tb * (K / 4) + k / 4 + lane<Q4>(blk)];
                    const float32x2_t s2 = vset_lane_f32(sb, vdup_n_f32(sa), 1);
                    const float32x4_t s = vcombine_f32(s2, s2);  // [t_a, t_b, t_a, t_b]
                    int8x16_t xa_lo, xa_hi, xb_lo, xb_hi;
                    pair(xt0[va], xt1[va], xa_lo, xa_hi);
                    pair(xt0[vb], xt1[vb], xb_lo, xb_hi);
                    for (int p = 0; p < RP; ++p) {
                        int8x16_t wa_lo, wa_hi, wb_lo, wb_hi;
                        pair(wv[p][0][va], wv[p][1][va], wa_lo, wa_hi);
                        pair(wv[p][0][vb], wv[p][1][vb], wb_lo, wb_hi);
                        int32x4_t d = vmmlaq_s32(vdupq_n_s32(0), wa_lo, xa_lo);
                        d = vmmlaq_s32(d, wa_hi, xa_hi);
                        d = vmmlaq_s32(d, wb_lo, xb_lo);
                        d = vmmlaq_s32(d, wb_hi, xb_hi);
                        acc[p][q] = vfmaq_f32(acc[p][q], vcvtq_f32_s32(d), s);
                    }
                }
            }
        }
        for (int p = 0; p < RP; ++p) {
            const int64_t ra = r0 + 2 * p, rb = ra + 1;
            const float32x4_t s = {ws[ra * G + g], ws[ra * G + g], ws[rb * G + g], ws[rb * G + g]};
            const float32x4_t c = {wc[ra * G + g], wc[ra * G + g], wc[rb * G + g], wc[rb * G + g]};
            for (int q = 0; q < TP; ++q) {
                tot[p][q] = vfmaq_f32(tot[p][q], acc[p][q], s);
                if (Q4) {
                    const float       ga = xgs[(t0 + 2 * q) * G + g], gb = xgs[(t0 + 2 * q + 1) * G + g];
                    const float32x4_t gs = {ga, gb, ga, gb};
                    corr[p][q] = vfmaq_f32(corr[p][q], c, gs);
                }
            }
        }
    }
    for (int p = 0; p < RP; ++p)
        for (int q = 0; q < TP; ++q) {
            float o[4];
            vst1q_f32(o, vsubq_f32(tot[p][q], corr[p][q]));
            float * yr = y + n0 + r0 + 2 * p;
            const int64_t ta = t0 + 2 * q;
            yr[ta * ldy] = o[0];
            yr[(ta + 1) * ldy] = o[1];
            yr[ta * ldy + 1] = o[2];
            yr[(ta + 1) * ldy + 1] = o[3];
        }
}

// Row pairs from r0 over the even token count Te.
template <int RP, bool Q4>
inline void mm_rows(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t Te,
                    int64_t K, const uint8_t * w, const float * ws, const float * wc, int64_t r0, int64_t n0, int64_t G,
                    int64_t gsteps) {
    int64_t t = 0;
    for (; t + 4 <= Te; t += 4) mm_tile<RP, 2, Q4>(y, ldy, xq, xls, xgs, K, w, ws, wc, r0, n0, t, G, gsteps);
    for (; t < Te; t += 2) mm_tile<RP, 1, Q4>(y, ldy, xq, xls, xgs, K, w, ws, wc, r0, n0, t, G, gsteps);
}

template <bool Q4>
void mm_run(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T, int64_t K,
            const uint8_t * w, const float * ws, const float * wc, int64_t nr, int64_t n0, int64_t G, int64_t gsteps) {
    const int64_t Te = T & ~int64_t(1), nre = nr & ~int64_t(1), row_bytes = Q4 ? K / 2 : K;
    if (Te > 0) {
        int64_t r = 0;
        for (; r + 4 <= nre; r += 4) mm_rows<2, Q4>(y, ldy, xq, xls, xgs, Te, K, w, ws, wc, r, n0, G, gsteps);
        for (; r < nre; r += 2) mm_rows<1, Q4>(y, ldy, xq, xls, xgs, Te, K, w, ws, wc, r, n0, G, gsteps);
    }
    if (nre < nr && Te > 0)  // the odd row, even tokens
        run<Q4>(y, ldy, xq, xls, xgs, Te, K, w + nre * row_bytes, ws + nre * G, wc + nre * G, 1, n0 + nre, G, gsteps);
    if (Te < T)  // the odd token, every row
        run<Q4>(y + Te * ldy, ldy, xq + Te * K, xls + Te * (K / 4), xgs + Te * G, 1, K, w, ws, wc, nr, n0, G,
                gsteps);
}

}  // namespace

void qdot_neon_i8mm(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                    int64_t K, const uint8_t * w, bool q4, const float * ws, const float * wc, int64_t nr, int64_t n0,
                    int64_t G, int64_t gsteps) {
    // Group 32 puts two groups in each 64-column step; the sdot kernel scales per block, so it takes those.
    if (gsteps == 0) {
        if (q4) run<true>(y, ldy, xq, xls, xgs, T, K, w, ws, wc, nr, n0, G, gsteps);
        else run<false>(y, ldy, xq, xls, xgs, T, K, w, ws, wc, nr, n0, G, gsteps);
        return;
    }
    if (q4) {
        mm_run<true>(y, ldy, xq, xls, xgs, T, K, w, ws, wc, nr, n0, G, gsteps);
    } else {
        mm_run<false>(y, ldy, xq, xls, xgs, T, K, w, ws, wc, nr, n0, G, gsteps);
    }
}

}  // namespace minicpm
