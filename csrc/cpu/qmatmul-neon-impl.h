// NEON quantized-matmul kernel body (see qmatmul.h), compiled once per integer dot-product instruction like
// attention-impl.h: qmatmul-neon.cpp (base NEON: smull / smlal / sadalp) and qmatmul-neon-dotprod.cpp (sdot).
// Include inside an anonymous namespace after <arm_neon.h> and a definition of
//   int32x4_t qn_dot16(int32x4_t acc, int8x16_t a, int8x16_t b)
// that adds the 16 products a[i] * b[i] to acc (which lane gets which product is free: every 16-column vector
// lies inside one 32-column activation block in both layouts, so the two vectors of a block are summed as
// integers and scaled once). q8 weights are used as stored (signed), which is the u8 form minus its offset 128:
// the group correction term then vanishes and is skipped. q4 nibbles (0..15) fit s8 as they are; their
// zero-point correction applies. Tiles of up to 4 weight rows x 4 tokens.

// The four 16-column vectors of one row at chunk column k, in the activation order of the format.
template <bool Q4> inline void load_w(const uint8_t * row, int64_t k, int8x16_t v[4]) {
    if (Q4) {  // 32 bytes -> [low nibbles (even columns) | high nibbles (odd columns)]
        const uint8x16_t b0 = vld1q_u8(row + k / 2), b1 = vld1q_u8(row + k / 2 + 16), m = vdupq_n_u8(0x0f);
        v[0] = vreinterpretq_s8_u8(vandq_u8(b0, m));
        v[1] = vreinterpretq_s8_u8(vandq_u8(b1, m));
        v[2] = vreinterpretq_s8_u8(vshrq_n_u8(b0, 4));
        v[3] = vreinterpretq_s8_u8(vshrq_n_u8(b1, 4));
    } else {
        for (int i = 0; i < 4; ++i) v[i] = vld1q_s8((const int8_t *) row + k + 16 * i);
    }
}

// Vectors a and b of activation block `blk` (0 or 1) of a 64-column chunk: q8 in natural order (0,1 | 2,3);
// q4 even columns then odd (0,2 | 1,3). lane: the lane-scale index of that block's first vector.
template <bool Q4> constexpr int vec_a(int blk) { return Q4 ? blk : 2 * blk; }
template <bool Q4> constexpr int vec_b(int blk) { return Q4 ? blk + 2 : 2 * blk + 1; }
template <bool Q4> constexpr int lane(int blk) { return 4 * vec_a<Q4>(blk); }

template <int R, int TT, bool Q4>
inline void tile(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t K,
                 const uint8_t * w, const float * ws, const float * wc, int64_t r0, int64_t n0, int64_t t0, int64_t G,
                 int64_t gsteps) {
    const int64_t row_bytes = Q4 ? K / 2 : K;
    float32x4_t   tot[R][TT];
    float         corr[R][TT];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < TT; ++t) {
            tot[r][t] = vdupq_n_f32(0.0f);
            corr[r][t] = 0.0f;
        }
    if (gsteps == 0) {  // group 32: activation blocks 0 and 1 of chunk k are the groups k/32 and k/32 + 1
        for (int64_t k = 0; k < K; k += 64) {
            int8x16_t wv[R][4];
            for (int r = 0; r < R; ++r) load_w<Q4>(w + (r0 + r) * row_bytes, k, wv[r]);
            for (int t = 0; t < TT; ++t) {
                const int8_t * x = xq + (t0 + t) * K + k;
                const float *  ls = xls + (t0 + t) * (K / 4) + k / 4;
                int8x16_t      xv[4];
                for (int i = 0; i < 4; ++i) xv[i] = vld1q_s8(x + 16 * i);
                for (int blk = 0; blk < 2; ++blk) {
                    const int64_t g = k / 32 + blk;
                    for (int r = 0; r < R; ++r) {
                        int32x4_t d = qn_dot16(vdupq_n_s32(0), wv[r][vec_a<Q4>(blk)], xv[vec_a<Q4>(blk)]);
                        d = qn_dot16(d, wv[r][vec_b<Q4>(blk)], xv[vec_b<Q4>(blk)]);
                        tot[r][t] = vfmaq_n_f32(tot[r][t], vcvtq_f32_s32(d), ls[lane<Q4>(blk)] * ws[(r0 + r) * G + g]);
                        if (Q4) corr[r][t] += wc[(r0 + r) * G + g] * xgs[(t0 + t) * G + g];
                    }
                }
            }
        }
        G = 0;  // the groups are done
    }
    for (int64_t g = 0; g < G; ++g) {
        float32x4_t acc[R][TT];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < TT; ++t) acc[r][t] = vdupq_n_f32(0.0f);
        const int64_t k0 = g * gsteps * 64, k1 = k0 + gsteps * 64;
        for (int64_t k = k0; k < k1; k += 64) {
            int8x16_t wv[R][4];
            for (int r = 0; r < R; ++r) load_w<Q4>(w + (r0 + r) * row_bytes, k, wv[r]);
            for (int t = 0; t < TT; ++t) {
                const int8_t * x = xq + (t0 + t) * K + k;
                const float *  ls = xls + (t0 + t) * (K / 4) + k / 4;
                int8x16_t      xv[4];
                for (int i = 0; i < 4; ++i) xv[i] = vld1q_s8(x + 16 * i);
                for (int blk = 0; blk < 2; ++blk) {
                    const float s = ls[lane<Q4>(blk)];
                    for (int r = 0; r < R; ++r) {
                        int32x4_t d = qn_dot16(vdupq_n_s32(0), wv[r][vec_a<Q4>(blk)], xv[vec_a<Q4>(blk)]);
                        d = qn_dot16(d, wv[r][vec_b<Q4>(blk)], xv[vec_b<Q4>(blk)]);
                        acc[r][t] = vfmaq_n_f32(acc[r][t], vcvtq_f32_s32(d), s);
                    }
                }
            }
        }
        for (int r = 0; r < R; ++r) {
            const float s = ws[(r0 + r) * G + g], c = wc[(r0 + r) * G + g];
            for (int t = 0; t < TT; ++t) {
                tot[r][t] = vfmaq_n_f32(tot[r][t], acc[r][t], s);
                if (Q4) corr[r][t] += c * xgs[(t0 + t) * G + g];
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < TT; ++t) y[(t0 + t) * ldy + n0 + r0 + r] = vaddvq_f32(tot[r][t]) - corr[r][t];
}

template <int R, bool Q4>
inline void rows(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                 int64_t K, const uint8_t * w, const float * ws, const float * wc, int64_t r0, int64_t n0, int64_t G,
                 int64_t gsteps) {
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) tile<R, 4, Q4>(y, ldy, xq, xls, xgs, K, w, ws, wc, r0, n0, t, G, gsteps);
    for (; t + 2 <= T; t += 2) tile<R, 2, Q4>(y, ldy, xq, xls, xgs, K, w, ws, wc, r0, n0, t, G, gsteps);
    for (; t < T; ++t) tile<R, 1, Q4>(y, ldy, xq, xls, xgs, K, w, ws, wc, r0, n0, t, G, gsteps);
}

template <bool Q4>
void run(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T, int64_t K,
         const uint8_t * w, const float * ws, const float * wc, int64_t nr, int64_t n0, int64_t G, int64_t gsteps) {
    int64_t r = 0;
    if (T == 1) {  // decode: more rows per pass share the activation loads
        for (; r + 4 <= nr; r += 4) tile<4, 1, Q4>(y, ldy, xq, xls, xgs, K, w, ws, wc, r, n0, 0, G, gsteps);
    }
    for (; r + 2 <= nr; r += 2) rows<2, Q4>(y, ldy, xq, xls, xgs, T, K, w, ws, wc, r, n0, G, gsteps);
    for (; r < nr; ++r) rows<1, Q4>(y, ldy, xq, xls, xgs, T, K, w, ws, wc, r, n0, G, gsteps);
}
