// Flash-style attention task in plain C++, compiled once per instruction set: attention.cpp (baseline),
// attention-avx2.cpp and attention-avx512.cpp (same source with wider vectors); the fixed 64-slot block loops
// vectorize at -O3. Include it inside an anonymous namespace, after <cmath>, <cstdint>, <cstring> and
// cpu/fast-exp.h (and <arm_neon.h> on ARM64): it defines internal-linkage functions only.
//
// Precision: f32 throughout (KV converted to f32 per block), exp by fast_exp (~2 ulp).
// Head dims up to 512 (the driver checks). For one KV head and a range of query rows it walks the 64-token KV
// blocks once; the `group` query heads that share the KV head reuse each converted block. Memory: one block plus
// the running output of the task's queries.

constexpr int k_blk = MINICPM_KV_BLOCK_SIZE;

// dst[n] = src[n] as f32 for one pool row of hd values.
inline void attn_row_f32(float * __restrict dst, const void * src, minicpm::dtype t, int64_t off, int32_t n) {
    if (t == minicpm::dtype::f32) {
        std::memcpy(dst, (const float *) src + off, size_t(n) * 4);
        return;
    }
    const uint16_t * s = (const uint16_t *) src + off;
    if (t == minicpm::dtype::bf16) {
        for (int32_t i = 0; i < n; ++i) dst[i] = minicpm::bf16_to_f32(s[i]);
    } else {
        int32_t i = 0;
#if defined(__aarch64__)
        // fcvtl is base ARMv8 NEON (exact, as f16_to_f32): four halves per instruction instead of a call each.
        for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(s + i))));
#endif
        for (; i < n; ++i) dst[i] = minicpm::f16_to_f32(s[i]);
    }
}

// 16 floats; aligned(4) so loads and stores need no alignment. GCC lowers it to the widest vectors the file
// is compiled for (4 x SSE in the baseline build, 1 x AVX-512 in the -avx512 build).
typedef float attn_v16 __attribute__((vector_size(64), aligned(4)));

// GCC gives a vector type its element type's alias set, so a float array may be read through it. (Vectors are
// never passed or returned by value: that would change the calling convention between the two builds.)
inline const attn_v16 & attn_at(const float * p) { return *(const attn_v16 *) p; }

inline void attn_store(float * p, const attn_v16 & v) { std::memcpy(p, &v, sizeof(v)); }

inline float attn_hsum(const attn_v16 & v) {
    float s = 0.0f;
    for (int i = 0; i < 16; ++i) s += v[i];
    return s;
}

// o[hd] = o * alpha + sum_j p[j] v[j], with the output row in registers when hd = 16 * NV (NV = 0: any hd).
template <int NV>
inline void attn_pv(float * __restrict o, const float * __restrict p, const float * __restrict vb, int32_t hd,
                    int32_t lim, float alpha) {
    if (NV == 0) {
        for (int32_t d = 0; d < hd; ++d) o[d] *= alpha;
        for (int32_t j = 0; j < lim; ++j)
            for (int32_t d = 0; d < hd; ++d) o[d] += p[j] * vb[j * hd + d];
        return;
    }
    // Even and odd slots accumulate separately: twice the independent FMA chains.
    attn_v16 acc[NV > 0 ? 2 * NV : 1];
    for (int i = 0; i < NV; ++i) {
        acc[i] = attn_at(o + 16 * i) * alpha;
        acc[NV + i] = attn_v16{};
    }
    int32_t j = 0;
    for (; j + 2 <= lim; j += 2) {
        for (int e = 0; e < 2; ++e) {
            const float pj = p[j + e];
            for (int i = 0; i < NV; ++i) acc[NV * e + i] += pj * attn_at(vb + (j + e) * hd + 16 * i);
        }
    }
    if (j < lim)
        for (int i = 0; i < NV; ++i) acc[i] += p[j] * attn_at(vb + j * hd + 16 * i);
    for (int i = 0; i < NV; ++i) attn_store(o + 16 * i, acc[i] + acc[NV + i]);
}

// One query against one 64-slot block (slots >= lim and the slots set in `hidden` masked): online-softmax update
// of its running max m (the new max is returned), sum l and unnormalised output o. s is a 64-float scratch.
inline float attn_query_block(const float * __restrict qh, float scale, const float * __restrict kt,
                              const float * __restrict vb, int32_t hd, int32_t lim, uint64_t hidden, float m,
                              float & l, float * __restrict o, float * __restrict s) {
    // Two sets of 4 accumulators (even and odd d): 8 independent FMA chains hide the FMA latency.
    attn_v16 a[8] = {};
    int32_t d = 0;
    for (; d + 2 <= hd; d += 2) {
        for (int e = 0; e < 2; ++e) {
            const float qd = qh[d + e] * scale;
            const float * kd = kt + (d + e) * k_blk;
            for (int i = 0; i < 4; ++i) a[4 * e + i] += qd * attn_at(kd + 16 * i);
        }
    }
    if (d < hd) {
        const float qd = qh[d] * scale;
        for (int i = 0; i < 4; ++i) a[i] += qd * attn_at(kt + d * k_blk + 16 * i);
    }
    for (int i = 0; i < 4; ++i) attn_store(s + 16 * i, a[i] + a[4 + i]);
    for (int32_t j = lim; j < k_blk; ++j) s[j] = -INFINITY;
    for (uint64_t h = hidden; h != 0; h &= h - 1) s[__builtin_ctzll(h)] = -INFINITY;
    attn_v16 mv = attn_at(s);
    for (int i = 1; i < 4; ++i) {
        const attn_v16 v = attn_at(s + 16 * i);
        mv = v > mv ? v : mv;
    }
    float mx = m;
    for (int i = 0; i < 16; ++i) mx = mv[i] > mx ? mv[i] : mx;
    for (int32_t j = 0; j < k_blk; ++j) s[j] = fast_exp(s[j] - mx);
    for (int32_t j = lim; j < k_blk; ++j) s[j] = 0.0f;
    for (uint64_t h = hidden; h != 0; h &= h - 1) s[__builtin_ctzll(h)] = 0.0f;
    const float alpha = fast_exp(m - mx);
    l = l * alpha + attn_hsum(attn_at(s) + attn_at(s + 16) + attn_at(s + 32) + attn_at(s + 48));
    switch (hd) {
        case 32: attn_pv<2>(o, s, vb, hd, lim, alpha); break;
        case 64: attn_pv<4>(o, s, vb, hd, lim, alpha); break;
        case 128: attn_pv<8>(o, s, vb, hd, lim, alpha); break;
        default: attn_pv<0>(o, s, vb, hd, lim, alpha); break;
    }
    return mx;
}

inline void attention_task_impl(float * out, const float * q, const minicpm::kv_layer & kv,
                                const minicpm::kv_segment & sg, int32_t r0, int32_t r1, int32_t n_head, int32_t hk,
                                int32_t group, float scale, float * scratch) {
    const int32_t hd = kv.head_dim, nq = (r1 - r0) * group;
    float * __restrict kt = scratch;              // [hd][64]: keys transposed, so scores vectorize over slots
    float * __restrict vb = kt + hd * k_blk;      // [64][hd]
    float * __restrict o = vb + hd * k_blk;       // [nq][hd]
    float * __restrict m = o + int64_t(nq) * hd;  // running max per query
    float * __restrict l = m + nq;                // running sum per query
    float * __restrict s = l + nq;                // [64] scores of one query
    for (int32_t i = 0; i < nq; ++i) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    std::memset(o, 0, size_t(nq) * hd * 4);

    const int32_t n_pos = sg.n_past + r1;  // positions visible to the last row
    const int32_t n_blocks = (n_pos + k_blk - 1) / k_blk;
    float row[512];
    for (int32_t b = 0; b < n_blocks; ++b) {
        const int32_t p0 = b * k_blk;
        const int32_t n_slot = n_pos - p0 < k_blk ? n_pos - p0 : k_blk;
        const int64_t base = (int64_t(sg.blocks[b]) * kv.n_head_kv + hk) * k_blk * hd;
        for (int32_t j = 0; j < n_slot; ++j) {
            attn_row_f32(row, kv.k, kv.type, base + int64_t(j) * hd, hd);
            for (int32_t d = 0; d < hd; ++d) kt[d * k_blk + j] = row[d];
            attn_row_f32(vb + j * hd, kv.v, kv.type, base + int64_t(j) * hd, hd);
        }
        for (int32_t j = n_slot; j < k_blk; ++j) {
            for (int32_t d = 0; d < hd; ++d) kt[d * k_blk + j] = 0.0f;
            for (int32_t d = 0; d < hd; ++d) vb[j * hd + d] = 0.0f;
        }
        for (int32_t r = r0; r < r1; ++r) {
            const int32_t visible = sg.n_past + r + 1 - p0;  // slots of this block row r may see
            if (visible <= 0) continue;
            const int32_t lim = visible < k_blk ? visible : k_blk;
            // A token tree: batch rows the row does not descend from are hidden.
            uint64_t hidden = 0;
            if (sg.mask != nullptr)
                for (int32_t j = sg.n_past > p0 ? sg.n_past - p0 : 0; j < lim; ++j)
                    if (!minicpm::kv_row_visible(sg, r, p0 + j - sg.n_past)) hidden |= uint64_t(1) << j;
            if (lim == 64 ? hidden == ~uint64_t(0) : hidden == (uint64_t(1) << lim) - 1) continue;
            for (int32_t g = 0; g < group; ++g) {
                const int32_t h = hk * group + g;
                const int32_t iq = (r - r0) * group + g;
                const float * __restrict qh = q + (int64_t(sg.row_begin + r) * n_head + h) * hd;
                m[iq] = attn_query_block(qh, scale, kt, vb, hd, lim, hidden, m[iq], l[iq], o + int64_t(iq) * hd, s);
            }
        }
    }
    for (int32_t r = r0; r < r1; ++r) {
        for (int32_t g = 0; g < group; ++g) {
            const int32_t iq = (r - r0) * group + g;
            const float inv = 1.0f / l[iq];
            float * dst = out + (int64_t(sg.row_begin + r) * n_head + hk * group + g) * hd;
            for (int32_t d = 0; d < hd; ++d) dst[d] = o[int64_t(iq) * hd + d] * inv;
        }
    }
}
