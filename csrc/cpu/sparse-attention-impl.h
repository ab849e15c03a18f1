// The inner loops of the fast InfLLM v2 path, compiled once per instruction set: sparse-attention.cpp
// (baseline) and sparse-attention-avx512.cpp / -avx2.cpp (same source, wider vectors). Include inside an
// anonymous namespace after <cmath>, <cstdint>, <cstring> and cpu/fast-exp.h; it defines internal-linkage
// functions only, and the including file wraps them as the sparse_kernels entry points of its ISA.
//
// Stage 1 runs with the G query heads of a group in the 16 lanes of a vector (lane = head), so that each
// lane accumulates its dot product in order of d exactly as the reference does (ops-sparse.h; these files
// build with -ffp-contract=off): the scores, and therefore the selected blocks, are bitwise the reference's.

typedef float sp_v16 __attribute__((vector_size(64), aligned(4)));

inline const sp_v16 & sp_at(const float * p) { return *(const sp_v16 *) p; }
inline void          sp_store(float * p, const sp_v16 & v) { std::memcpy(p, &v, sizeof(v)); }

// s[j * 16 + lane] = dot(qT[:, lane], c[j]) * scale for n kernels c[j] = c + j * hd. qT is [hd][16].
inline void sp_scores_impl(float * __restrict s, const float * __restrict qT, const float * __restrict c, int32_t n,
                           int32_t hd, float scale) {
    int32_t j = 0;
    for (; j + 4 <= n; j += 4) {
        sp_v16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
        const float * c0 = c + int64_t(j) * hd;
        for (int32_t d = 0; d < hd; ++d) {
            const sp_v16 & qd = sp_at(qT + d * 16);
            a0 += qd * c0[d];
            a1 += qd * c0[hd + d];
            a2 += qd * c0[2 * hd + d];
            a3 += qd * c0[3 * hd + d];
        }
        sp_store(s + (j + 0) * 16, a0 * scale);
        sp_store(s + (j + 1) * 16, a1 * scale);
        sp_store(s + (j + 2) * 16, a2 * scale);
        sp_store(s + (j + 3) * 16, a3 * scale);
    }
    for (; j < n; ++j) {
        sp_v16 a = {};
        const float * cj = c + int64_t(j) * hd;
        for (int32_t d = 0; d < hd; ++d) a += sp_at(qT + d * 16) * cj[d];
        sp_store(s + j * 16, a * scale);
    }
}

// Per lane: lse = m + log(sum_j exp(s[j] - m)), m = max_j s[j], the sum in order of j. n >= 1.
inline void sp_lse_impl(float * lse, const float * __restrict s, int32_t n) {
    sp_v16 m = sp_at(s);
    for (int32_t j = 1; j < n; ++j) {
        const sp_v16 v = sp_at(s + j * 16);
        m = v > m ? v : m;
    }
    float mf[16], sum[16];
    sp_store(mf, m);
    float e[16];
    sp_v16 acc = {};
    for (int32_t j = 0; j < n; ++j) {
        const float * sj = s + j * 16;
        for (int i = 0; i < 16; ++i) e[i] = fast_exp(sj[i] - mf[i]);
        acc += sp_at(e);
    }
    sp_store(sum, acc);
    for (int i = 0; i < 16; ++i) lse[i] = mf[i] + std::log(sum[i]);
}

// S[j] (+)= sum over lanes h < G of exp(s[j][h] - lse[h]), in order of h; accumulate = add to S[j].
inline void sp_group_sum_impl(float * __restrict S, const float * __restrict s, const float * lse, int32_t n,
                              int32_t G, bool accumulate) {
    float e[16];
    for (int32_t j = 0; j < n; ++j) {
        const float * sj = s + j * 16;
        for (int i = 0; i < 16; ++i) e[i] = fast_exp(sj[i] - lse[i]);
        float acc = accumulate ? S[j] : 0.0f;
        for (int32_t i = 0; i < G; ++i) acc += e[i];
        S[j] = acc;
    }
}

// Stage 2, one KV block: kt [hd][64] (keys transposed, so scores vectorize over slots) and vb [64][hd] as f32
// from pool block `block` of KV head hk; slots >= n are zero.
inline void sp_load_block_impl(float * __restrict kt, float * __restrict vb, const minicpm::kv_layer & kv,
                               int32_t block, int32_t hk, int32_t n) {
    const int32_t hd = kv.head_dim;
    const int64_t base = (int64_t(block) * kv.n_head_kv + hk) * 64 * hd;
    if (kv.type == minicpm::dtype::f32) {
        const float * k = (const float *) kv.k + base;
        for (int32_t j = 0; j < n; ++j)
            for (int32_t d = 0; d < hd; ++d) kt[d * 64 + j] = k[j * hd + d];
        std::memcpy(vb, (const float *) kv.v + base, size_t(n) * hd * 4);
    } else {
        const uint16_t * k = (const uint16_t *) kv.k + base;
        const uint16_t * v = (const uint16_t *) kv.v + base;
        const bool bf = kv.type == minicpm::dtype::bf16;
        for (int32_t j = 0; j < n; ++j)
            for (int32_t d = 0; d < hd; ++d) {
                kt[d * 64 + j] = bf ? minicpm::bf16_to_f32(k[j * hd + d]) : minicpm::f16_to_f32(k[j * hd + d]);
                vb[j * hd + d] = bf ? minicpm::bf16_to_f32(v[j * hd + d]) : minicpm::f16_to_f32(v[j * hd + d]);
            }
    }
    for (int32_t j = n; j < 64; ++j)
        for (int32_t d = 0; d < hd; ++d) kt[d * 64 + j] = 0.0f;
}

// Stage 2, one block for G heads of one row: online-softmax update of the running max m[G], sum l[G] and
// unnormalised output o[G][hd] with the first n slots of the loaded block. q: G rows of hd, already scaled.
inline void sp_block_heads_impl(float * __restrict o, float * __restrict m, float * __restrict l,
                                const float * __restrict q, int32_t G, int32_t hd, const float * __restrict kt,
                                const float * __restrict vb, int32_t n, float * __restrict sc) {
    for (int32_t h = 0; h < G; ++h) {
        const float * qh = q + int64_t(h) * hd;
        sp_v16 a[4] = {};
        for (int32_t d = 0; d < hd; ++d) {
            const float qd = qh[d];
            for (int c = 0; c < 4; ++c) a[c] += qd * sp_at(kt + d * 64 + 16 * c);
        }
        for (int c = 0; c < 4; ++c) sp_store(sc + 16 * c, a[c]);
        float mx = m[h];
        for (int32_t j = 0; j < n; ++j) mx = sc[j] > mx ? sc[j] : mx;
        for (int32_t j = 0; j < 64; ++j) sc[j] = fast_exp(sc[j] - mx);
        for (int32_t j = n; j < 64; ++j) sc[j] = 0.0f;
        const float alpha = fast_exp(m[h] - mx);
        float sum = 0.0f;
        for (int32_t j = 0; j < n; ++j) sum += sc[j];
        l[h] = l[h] * alpha + sum;
        m[h] = mx;
        float * oh = o + int64_t(h) * hd;
        if (hd % 16 == 0) {
            for (int32_t d0 = 0; d0 < hd; d0 += 16) {
                sp_v16 acc = sp_at(oh + d0) * alpha;
                for (int32_t j = 0; j < n; ++j) acc += sc[j] * sp_at(vb + j * hd + d0);
                sp_store(oh + d0, acc);
            }
        } else {
            for (int32_t d = 0; d < hd; ++d) oh[d] *= alpha;
            for (int32_t j = 0; j < n; ++j)
                for (int32_t d = 0; d < hd; ++d) oh[d] += sc[j] * vb[j * hd + d];
        }
    }
}
