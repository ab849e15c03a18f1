// InfLLM v2 on the CUDA backend (core/sparse-attn.h, /work/shared/docs/INFLLM_V2.md steps 1-9): key
// compression into the KV side storage, block selection, and attention over the selected blocks.
//
// Selection must pick exactly the blocks of the CPU reference (cpu/ops-ref-sparse.cpp), so stage 1 repeats its
// arithmetic: every multiply and add is an explicit round-to-nearest intrinsic (nvcc would otherwise fuse them
// into FMAs), dots run in order of d, the LSE sum runs in order of j and the head sum in order of h, and exp
// is the CPU's polynomial (cpu/fast-exp.h) written with the same operations. Only log is not bit-exact by
// construction: the LSE takes the correctly rounded log (via double), which the host's logf matches except in
// rare cases; an ulp there scales one head's share of S by about 1e-7, which can reorder only blocks whose R
// agree to that precision.
//
// Selection runs in three kernels, so that a decode step (few rows) still spreads over the GPU: score (the
// kernels of a row tiled over thread blocks, each tile scored against every head of the group), lse (one
// thread block per (row, query head): the max, then exps in parallel added by one thread in order), select
// (one thread block per (row, KV head): S max-pooled into R in shared memory, the forced blocks, and each
// block kept when fewer than K blocks rank before it; one bitmask per (row, KV head), written by warp ballots).
//
// attention: one thread block of 64 threads per (row, query head) walks the selected 64-slot blocks with an
// online softmax, like the dense kernel of attention.cu walks all of them. For few rows (decode) the selected
// blocks are cut into parts of 8, one thread block each, merged by a combine kernel (as split-K attention).
//
// Token trees (cpu/ops-sparse.h, sparse_row_view): a tree row runs all of the above on the sequence plain
// decoding would hold after its ancestors, through its row record (ops.cuh, sparse_row): slots past the committed
// ones map to its ancestors' pool slots, and the kernels that end among them are computed for that row alone
// first (tail kernel), in the compression kernel's arithmetic, and scored in place of cached ones. An unmasked
// row maps every slot to itself and has no tail kernel, so its arithmetic is unchanged.
#include "cuda/ops.cuh"

#include <algorithm>

namespace minicpm {
namespace cuda {

namespace {

constexpr int k_blk = MINICPM_KV_BLOCK_SIZE;
constexpr int k_select_threads = 256;
constexpr int k_score_tile = 32;  // kernels staged per score block
constexpr int k_score_threads = 256;
constexpr int k_lse_threads = 256;
constexpr int k_lse_slice = 2048;  // exps held in shared memory for the ordered sum
constexpr int64_t k_split_rows = 64;  // stage 2 splits a row's selected blocks over parts for at most this many rows
constexpr int32_t k_part_blocks = 8;  // selected blocks per part

__device__ __forceinline__ float exp_as_cpu(float x) {  // cpu/fast-exp.h, operation for operation
    uint32_t u = __float_as_uint(x);
    u = u > 0xc2ae0000u ? 0xc2ae0000u : u;
    u = int32_t(u) > int32_t(0x42b00000) ? 0x42b00000u : u;
    x = __uint_as_float(u);
    const float n = __fsub_rn(__fadd_rn(__fmul_rn(x, 1.44269504088896341f), 12582912.0f), 12582912.0f);
    const float r = __fadd_rn(__fsub_rn(x, __fmul_rn(n, 0.693359375f)), __fmul_rn(n, 2.12194440e-4f));
    float p = 1.38888894e-3f;
    p = __fadd_rn(__fmul_rn(p, r), 8.33333377e-3f);
    p = __fadd_rn(__fmul_rn(p, r), 4.16666679e-2f);
    p = __fadd_rn(__fmul_rn(p, r), 1.66666672e-1f);
    p = __fadd_rn(__fmul_rn(p, r), 5.00000000e-1f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f);
    return __fmul_rn(p, __int_as_float((int32_t(n) + 127) << 23));
}

// sparse_kernel_geom and kv_compressed::at, for device code.
struct geom {
    int32_t ks, st, cap, off;
    __device__ int32_t count(int64_t n) const { return n >= ks ? int32_t((n - ks) / st + 1) : 0; }
    __device__ int32_t block_of(int32_t j) const { return int32_t((int64_t(st) * j + ks - 1) / k_blk); }
    __device__ int32_t first_in(int32_t b) const {
        const int64_t t = int64_t(k_blk) * b - ks + 1;
        return t <= 0 ? 0 : int32_t((t + st - 1) / st);
    }
};

struct side {
    float * base;
    int64_t block_floats;
    geom    c1, c2;
    __device__ float * at(const geom & g, const int32_t * blocks, int32_t h, int32_t j, int32_t hd) const {
        const int32_t b = g.block_of(j);
        return base + int64_t(blocks[b]) * block_floats +
               (int64_t(h) * (c1.cap + c2.cap) + g.off + (j - g.first_in(b))) * hd;
    }
};

side to_side(const kv_compressed & cc) {
    return {cc.base, cc.block_floats, {cc.c1.ks, cc.c1.st, cc.c1.cap, cc.c1.off}, {cc.c2.ks, cc.c2.st, cc.c2.cap, cc.c2.off}};
}

__device__ __forceinline__ int64_t kv_at(const int32_t * blocks, int32_t slot, int32_t h, int32_t nkv, int32_t hd) {
    return ((int64_t(blocks[slot / k_blk]) * nkv + h) * k_blk + slot % k_blk) * hd;
}

// The pool slot of slot t of the sequence row r attends (t <= r.p).
__device__ __forceinline__ int32_t view_slot(const sparse_row & r, const int32_t * tails, int32_t t) {
    return t < r.n_fixed ? t : tails[r.tail_off + t - r.n_fixed];
}

// Tail kernel jj (kernel count(n_fixed) + jj) of row r's level (second: C2) for KV head h.
__device__ __forceinline__ float * tail_at(const sparse_tails & tl, const sparse_row & r, int32_t nkv, int32_t h,
                                           bool second, int32_t jj, int32_t hd) {
    return tl.k + ((int64_t(r.tk_off) * nkv + h) * (tl.t1_cap + tl.t2_cap) + (second ? tl.t1_cap : 0) + jj) * hd;
}

// grid (jobs, segments, KV heads); a job is one C1 or C2 kernel of its segment.
__global__ void compress_kernel(side cc, const void * kp, int32_t kv_type, int32_t nkv, int32_t hd,
                                const sparse_seg * segs, const int32_t * blocks) {
    const sparse_seg sg = segs[blockIdx.y];
    int32_t          x = blockIdx.x;
    const bool       second = x >= sg.n[0];
    if (second) x -= sg.n[0];
    if (x >= sg.n[second]) return;
    const geom &    g = second ? cc.c2 : cc.c1;
    const int32_t   j = sg.j0[second] + x, h = blockIdx.z;
    const int32_t * bt = blocks + sg.blocks_off;
    float *         dst = cc.at(g, bt, h, j, hd);
    for (int32_t d = threadIdx.x; d < hd; d += blockDim.x) {
        float sum = 0.0f;
        for (int32_t i = 0; i < g.ks; ++i) {
            const int32_t p = g.st * j + i;
            sum = __fadd_rn(sum, load_plain(kp, kv_type, kv_at(bt, p, h, nkv, hd) + d));
        }
        dst[d] = __fdiv_rn(sum, float(g.ks));
    }
}

// A tree row's tail kernels, as compress_kernel computes a cached one (rows added in order per d, then the
// division) over the row's own slots. grid (rows, KV heads, t1_cap + t2_cap); rows without a tail return.
__global__ void tail_kernel(sparse_tails tl, side cc, const void * kp, int32_t kv_type, int32_t nkv, int32_t hd,
                            const sparse_row * rows, const int32_t * blocks) {
    const sparse_row r = rows[blockIdx.x];
    if (r.n_fixed > r.p) return;
    const bool    second = int32_t(blockIdx.z) >= tl.t1_cap;
    const geom &  g = second ? cc.c2 : cc.c1;
    const int32_t jc = g.count(r.n_fixed), jj = second ? blockIdx.z - tl.t1_cap : blockIdx.z, h = blockIdx.y;
    if (jc + jj >= g.count(int64_t(r.p) + 1)) return;
    const int32_t   j = jc + jj;
    const int32_t * bt = blocks + r.blocks_off;
    float *         dst = tail_at(tl, r, nkv, h, second, jj, hd);
    for (int32_t d = threadIdx.x; d < hd; d += blockDim.x) {
        float sum = 0.0f;
        for (int32_t i = 0; i < g.ks; ++i) {
            const int32_t t = view_slot(r, tl.slots, g.st * j + i);
            sum = __fadd_rn(sum, load_plain(kp, kv_type, kv_at(bt, t, h, nkv, hd) + d));
        }
        dst[d] = __fdiv_rn(sum, float(g.ks));
    }
}

// Stage 1, scores: s[row][h][j] = dot(q_h, C[j]) * scale for every kernel j a sparse row sees, C1 (and C2 when
// the LSE runs over C2). grid (kernel tiles, rows, KV heads): a tile's 32 kernels are staged in shared memory
// once and scored against every query head of the group.
__global__ void score_kernel(float * s1, float * s2, int32_t n1_cap, int32_t n2_cap, int32_t n1_tiles, side cc,
                             sparse_tails tl, const float * q, int32_t nh, int32_t nkv, int32_t hd, float scale,
                             int32_t dense_len, const sparse_row * rows, const int32_t * blocks) {
    extern __shared__ float sh[];
    const int32_t    G = nh / nkv, g = blockIdx.z, ld = hd + 1;
    const sparse_row r = rows[blockIdx.y];
    if (r.p + 1 < dense_len) return;  // step 1: a dense row selects no kernel
    const bool    second = int32_t(blockIdx.x) >= n1_tiles;
    const geom &  lv = second ? cc.c2 : cc.c1;
    const int32_t j0 = (second ? blockIdx.x - n1_tiles : blockIdx.x) * k_score_tile;
    const int32_t n = lv.count(int64_t(r.p) + 1), jc = lv.count(r.n_fixed);  // jc: the cached ones
    if (j0 >= n) return;
    const int32_t * bt = blocks + r.blocks_off;
    float *         qs = sh;           // [G][hd]
    float *         cs = qs + G * hd;  // [tile][hd + 1]
    for (int32_t e = threadIdx.x; e < G * hd; e += blockDim.x) qs[e] = q[(int64_t(r.row) * nh + g * G) * hd + e];
    for (int32_t e = threadIdx.x; e < k_score_tile * hd; e += blockDim.x) {
        const int32_t jj = e / hd, d = e % hd;
        const int32_t j = j0 + jj;
        if (j < n) cs[jj * ld + d] = (j < jc ? cc.at(lv, bt, g, j, hd) : tail_at(tl, r, nkv, g, second, j - jc, hd))[d];
    }
    __syncthreads();
    float *       out = second ? s2 : s1;
    const int32_t cap = second ? n2_cap : n1_cap;
    for (int32_t e = threadIdx.x; e < k_score_tile * G; e += blockDim.x) {
        const int32_t jj = e % k_score_tile, hh = e / k_score_tile;
        if (j0 + jj >= n) continue;
        float acc = 0.0f;  // the reference's dot: f32, in order of d, no fused multiply-add
        for (int32_t d = 0; d < hd; ++d) acc = __fadd_rn(acc, __fmul_rn(qs[hh * hd + d], cs[jj * ld + d]));
        out[(int64_t(blockIdx.y) * nh + g * G + hh) * cap + j0 + jj] = __fmul_rn(acc, scale);
    }
}

// Stage 1, step 4's LSE of one (row, query head): the max, then the exps of a slice computed in parallel and
// added by one thread in order of j. grid (rows, query heads).
__global__ void lse_kernel(float * lse, const float * s1, const float * s2, int32_t n1_cap, int32_t n2_cap,
                           sparse_attn_params sp, side cc, int32_t nh, const sparse_row * rows) {
    __shared__ float e[k_lse_slice];
    __shared__ float red[k_lse_threads / k_warp];
    const sparse_row r = rows[blockIdx.x];
    if (r.p + 1 < sp.dense_len) return;
    const bool    use_c2 = sp.lse == sparse_lse::c2;
    const int32_t n = (use_c2 ? cc.c2 : cc.c1).count(int64_t(r.p) + 1);
    const float * v = (use_c2 ? s2 : s1) + (int64_t(blockIdx.x) * nh + blockIdx.y) * (use_c2 ? n2_cap : n1_cap);
    float         m = -INFINITY;
    for (int32_t j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, v[j]);
    for (int o = k_warp / 2; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (threadIdx.x % k_warp == 0) red[threadIdx.x / k_warp] = m;
    __syncthreads();
    m = -INFINITY;
    for (int i = 0; i < k_lse_threads / k_warp; ++i) m = fmaxf(m, red[i]);
    float sum = 0.0f;
    for (int32_t c0 = 0; c0 < n; c0 += k_lse_slice) {
        const int32_t lim = min(k_lse_slice, n - c0);
        for (int32_t i = threadIdx.x; i < lim; i += blockDim.x) e[i] = exp_as_cpu(__fsub_rn(v[c0 + i], m));
        __syncthreads();
        if (threadIdx.x == 0)
            for (int32_t i = 0; i < lim; ++i) sum = __fadd_rn(sum, e[i]);
        __syncthreads();
    }
    // log in double, rounded once: the correctly rounded logf, which the host's logf (error < 1 ulp, computed
    // in double) gives in all but vanishingly rare cases; the device's logf may be 1 ulp off.
    if (threadIdx.x == 0) lse[int64_t(blockIdx.x) * nh + blockIdx.y] = __fadd_rn(m, float(log(double(sum))));
}

// Stage 1, steps 4-8 for one (row, KV head): S[j] (the group's probabilities summed in order of h) max-pooled
// straight into R[b] over kernels [ps b - 1, ps b + ps - 1] (shared), the forced blocks, then block b is kept
// when fewer than K blocks rank before it by (R descending, index ascending), then the causal drop; "hf" adds
// the window of L blocks ending at qb. A dense row keeps every block up to its own. grid (rows, KV heads).
__global__ void select_kernel(uint64_t * sel, int32_t sel_words, const float * s1, const float * lse, int32_t n1_cap,
                              side cc, int32_t nh, int32_t nkv, sparse_attn_params sp, const sparse_row * rows) {
    extern __shared__ float R[];  // [64 sel_words]
    const int32_t    G = nh / nkv, g = blockIdx.y, lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
    const int32_t    n_warps = blockDim.x / k_warp;
    const sparse_row r = rows[blockIdx.x];
    const int32_t    p = r.p, qb = p / k_blk, nb = qb + 1, L = sp.window_blocks;
    uint32_t *       bits = (uint32_t *) (sel + (int64_t(blockIdx.x) * nkv + g) * sel_words);
    const bool       dense = p + 1 < sp.dense_len;
    if (!dense) {
        const int32_t n1 = cc.c1.count(int64_t(p) + 1);
        // A head with no visible LSE kernel adds nothing (INFLLM_V2.md D11); that holds for all heads at once.
        const bool    none = (sp.lse == sparse_lse::c2 ? cc.c2 : cc.c1).count(int64_t(p) + 1) == 0;
        const float * sg = s1 + (int64_t(blockIdx.x) * nh + g * G) * n1_cap;
        const float * lg = lse + int64_t(blockIdx.x) * nh + g * G;
        const int32_t ps = k_blk / sp.kernel_stride;
        for (int32_t b = threadIdx.x; b < nb; b += blockDim.x) {
            float v = -INFINITY;
            for (int32_t j = max(0, ps * b - 1); j <= ps * b + ps - 1 && j < n1; ++j) {
                float S = 0.0f;
                if (!none)
                    for (int32_t hh = 0; hh < G; ++hh)
                        S = __fadd_rn(S, exp_as_cpu(__fsub_rn(sg[int64_t(hh) * n1_cap + j], lg[hh])));
                v = fmaxf(v, S);
            }
            if (sp.variant == sparse_variant::hf) {
                if (b < sp.init_blocks) v = INFINITY;
                else if (b > qb - L) v = -INFINITY;
            } else if (b < sp.init_blocks || b >= qb - L) {
                v = INFINITY;
            }
            R[b] = v;
        }
        __syncthreads();
    }
    const int32_t K = min(sp.variant == sparse_variant::hf ? sp.topk : sp.topk + L, nb);
    for (int32_t b0 = warp * k_warp; b0 < sel_words * 64; b0 += n_warps * k_warp) {
        const int32_t b = b0 + lane;
        bool          on = false;
        if (b < nb) {
            if (dense) {
                on = true;
            } else {
                const bool causal = sp.variant == sparse_variant::hf ? b < qb : b <= qb;
                if (causal) {
                    const float v = R[b];
                    int32_t     rank = 0;
                    for (int32_t c = 0; c < nb && rank < K; ++c) rank += R[c] > v || (R[c] == v && c < b);
                    on = rank < K;
                }
                if (sp.variant == sparse_variant::hf && b >= qb - L + 1) on = true;
            }
        }
        const uint32_t word = __ballot_sync(0xffffffffu, on);
        if (lane == 0) bits[b0 / k_warp] = word;  // little-endian halves of the 64-bit words
    }
}

// grid (rows, query heads, parts), 64 threads: one slot of a block each. Part z takes the row's selected blocks
// of ordinals [z bpp, z bpp + bpp). With one part the output is written normalised; with several, each part
// writes its output normalised by its own sum, with its max and sum, and combine_kernel merges them.
__global__ void sparse_attention_kernel(float * out, float * part_o, float * part_ml, const float * q, const void * kp,
                                        const void * vp, int32_t kv_type, int32_t nh, int32_t nkv, int32_t hd,
                                        float scale, const sparse_row * rows, const int32_t * blocks,
                                        const int32_t * tails, const uint64_t * sel, int32_t sel_words, int32_t bpp) {
    extern __shared__ float sh[];
    float *          qs = sh;           // [hd]
    float *          ps = qs + hd;      // [64]
    float *          red = ps + k_blk;  // [2]
    float *          acc = red + 2;     // [hd]
    int32_t *        pool = (int32_t *) (acc + hd);  // [64] the pool slots of the block's slots
    const int32_t    h = blockIdx.y, hk = h / (nh / nkv), first = blockIdx.z * bpp;
    const sparse_row r = rows[blockIdx.x];
    const int32_t *  bt = blocks + r.blocks_off;
    const uint64_t * bits = sel + (int64_t(blockIdx.x) * nkv + hk) * sel_words;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        qs[d] = q[(int64_t(r.row) * nh + h) * hd + d] * scale;
        acc[d] = 0.0f;
    }
    __syncthreads();
    float   m = -INFINITY, l = 0.0f;
    int32_t ord = 0;  // selected blocks before b
    for (int32_t b = 0; b <= r.p / k_blk && ord < first + bpp; ++b) {
        if (!((bits[b / 64] >> (b % 64)) & 1u)) continue;
        if (ord++ < first) continue;
        const int32_t slot = b * k_blk + threadIdx.x;
        float         score = -INFINITY;
        if (slot <= r.p) {
            pool[threadIdx.x] = view_slot(r, tails, slot);
            const int64_t at = kv_at(bt, pool[threadIdx.x], hk, nkv, hd);
            float         s = 0.0f;
            for (int32_t d = 0; d < hd; ++d) s += qs[d] * load_plain(kp, kv_type, at + d);
            score = s;
        }
        float mx = score;
        for (int o = k_warp / 2; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        if (threadIdx.x % k_warp == 0) red[threadIdx.x / k_warp] = mx;
        __syncthreads();
        const float m_new = fmaxf(m, fmaxf(red[0], red[1]));
        __syncthreads();
        const float pr = score == -INFINITY ? 0.0f : expf(score - m_new);
        ps[threadIdx.x] = pr;
        float psum = pr;
        for (int o = k_warp / 2; o > 0; o /= 2) psum += __shfl_xor_sync(0xffffffffu, psum, o);
        if (threadIdx.x % k_warp == 0) red[threadIdx.x / k_warp] = psum;
        __syncthreads();
        const float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);
        l = l * alpha + red[0] + red[1];
        m = m_new;
        const int32_t lim = min(k_blk, r.p - b * k_blk + 1);
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float a = acc[d] * alpha;
            for (int32_t i = 0; i < lim; ++i) a += ps[i] * load_plain(vp, kv_type, kv_at(bt, pool[i], hk, nkv, hd) + d);
            acc[d] = a;
        }
        __syncthreads();
    }
    // No slot (a top-k too small to keep the row's own block, or a part past the selection): zeros, sum 0.
    if (part_o == nullptr) {
        for (int d = threadIdx.x; d < hd; d += blockDim.x)
            out[(int64_t(r.row) * nh + h) * hd + d] = l > 0.0f ? acc[d] / l : 0.0f;
        return;
    }
    const int64_t at = (int64_t(blockIdx.x) * nh + h) * gridDim.z + blockIdx.z;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) part_o[at * hd + d] = l > 0.0f ? acc[d] / l : 0.0f;
    if (threadIdx.x == 0) {
        part_ml[2 * at] = m;
        part_ml[2 * at + 1] = l;
    }
}

// grid (rows, query heads): out = sum_z o_z l_z exp(m_z - M) / sum_z l_z exp(m_z - M) over the parts with l_z > 0.
__global__ void combine_kernel(float * out, const float * part_o, const float * part_ml, int32_t nh, int32_t hd,
                               int32_t n_parts, const sparse_row * rows) {
    const int64_t at = (int64_t(blockIdx.x) * nh + blockIdx.y) * n_parts;
    float         M = -INFINITY;
    for (int32_t z = 0; z < n_parts; ++z)
        if (part_ml[2 * (at + z) + 1] > 0.0f) M = fmaxf(M, part_ml[2 * (at + z)]);
    float L = 0.0f;
    for (int32_t z = 0; z < n_parts; ++z)
        if (part_ml[2 * (at + z) + 1] > 0.0f) L += part_ml[2 * (at + z) + 1] * expf(part_ml[2 * (at + z)] - M);
    float * o = out + (int64_t(rows[blockIdx.x].row) * nh + blockIdx.y) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (int32_t z = 0; z < n_parts; ++z) {
            const float lz = part_ml[2 * (at + z) + 1];
            if (lz > 0.0f) a += part_o[(at + z) * hd + d] * lz * expf(part_ml[2 * (at + z)] - M);
        }
        o[d] = L > 0.0f ? a / L : 0.0f;
    }
}

}  // namespace

void launch_kv_compress(cudaStream_t s, const kv_compressed & cc, const void * k_pool, int32_t kv_type, int32_t nkv,
                        int32_t hd, const sparse_seg * segs, int32_t n_segs, int32_t max_jobs, const int32_t * blocks) {
    if (n_segs == 0 || max_jobs == 0) return;
    compress_kernel<<<dim3(unsigned(max_jobs), unsigned(n_segs), unsigned(nkv)), std::min(hd, 128), 0, s>>>(
        to_side(cc), k_pool, kv_type, nkv, hd, segs, blocks);
    MINICPM_CUDA_LAUNCHED("kv_compress");
}

void launch_sparse_tail_kernels(cudaStream_t s, const sparse_tails & tl, const kv_compressed & cc,
                                const void * k_pool, int32_t kv_type, int32_t nkv, int32_t hd,
                                const sparse_row * rows, int64_t T, const int32_t * blocks) {
    if (T == 0 || tl.t1_cap + tl.t2_cap == 0) return;
    tail_kernel<<<dim3(unsigned(T), unsigned(nkv), unsigned(tl.t1_cap + tl.t2_cap)), std::min(hd, 128), 0, s>>>(
        tl, to_side(cc), k_pool, kv_type, nkv, hd, rows, blocks);
    MINICPM_CUDA_LAUNCHED("sparse tail kernels");
}

size_t select_shared_bytes(int32_t G, int32_t hd, int32_t nb_cap) {
    return std::max(size_t(G * hd + k_score_tile * (hd + 1)), size_t(nb_cap)) * sizeof(float);
}

void launch_sparse_select(cudaStream_t s, uint64_t * sel, int32_t sel_words, const sparse_scratch & w,
                          const kv_compressed & cc, const sparse_tails & tl, const float * q, int32_t nh, int32_t nkv,
                          int32_t hd, float scale, const sparse_attn_params & sp, const sparse_row * rows, int64_t T,
                          const int32_t * blocks) {
    if (T == 0) return;
    const side    sd = to_side(cc);
    const int32_t n1_tiles = int32_t(ceil_div(w.n1_cap, k_score_tile));
    const int32_t n2_tiles = sp.lse == sparse_lse::c2 ? int32_t(ceil_div(w.n2_cap, k_score_tile)) : 0;
    const size_t  score_shared = size_t(nh / nkv * hd + k_score_tile * (hd + 1)) * sizeof(float);
    const size_t  sel_shared = size_t(sel_words) * 64 * sizeof(float);
    if (score_shared > 48 * 1024)
        MINICPM_CUDA_CHECK(cudaFuncSetAttribute(score_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(score_shared)));
    if (sel_shared > 48 * 1024)
        MINICPM_CUDA_CHECK(cudaFuncSetAttribute(select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sel_shared)));
    score_kernel<<<dim3(unsigned(n1_tiles + n2_tiles), unsigned(T), unsigned(nkv)), k_score_threads, score_shared, s>>>(
        w.s1, w.s2, w.n1_cap, w.n2_cap, n1_tiles, sd, tl, q, nh, nkv, hd, scale, sp.dense_len, rows, blocks);
    MINICPM_CUDA_LAUNCHED("sparse scores");
    lse_kernel<<<dim3(unsigned(T), unsigned(nh)), k_lse_threads, 0, s>>>(w.lse, w.s1, w.s2, w.n1_cap, w.n2_cap, sp, sd,
                                                                          nh, rows);
    MINICPM_CUDA_LAUNCHED("sparse lse");
    select_kernel<<<dim3(unsigned(T), unsigned(nkv)), k_select_threads, sel_shared, s>>>(sel, sel_words, w.s1, w.lse,
                                                                                         w.n1_cap, sd, nh, nkv, sp, rows);
    MINICPM_CUDA_LAUNCHED("sparse select");
}

int32_t sparse_attention_parts(int64_t T, int32_t max_sel) {
    if (T > k_split_rows) return 1;
    return int32_t(std::max<int64_t>(1, ceil_div(max_sel, k_part_blocks)));
}

void launch_sparse_attention(cudaStream_t s, float * out, const float * q, const void * k_pool, const void * v_pool,
                             int32_t kv_type, int32_t nh, int32_t nkv, int32_t hd, float scale, const sparse_row * rows,
                             int64_t T, const int32_t * blocks, const int32_t * tails, const uint64_t * sel,
                             int32_t sel_words, int32_t n_parts, float * scratch) {
    if (T == 0) return;
    const size_t shared = size_t(2 * hd + k_blk + 2) * sizeof(float) + k_blk * sizeof(int32_t);
    float *      part_o = n_parts > 1 ? scratch : nullptr;
    float *      part_ml = n_parts > 1 ? scratch + T * nh * n_parts * hd : nullptr;
    sparse_attention_kernel<<<dim3(unsigned(T), unsigned(nh), unsigned(n_parts)), k_blk, shared, s>>>(
        out, part_o, part_ml, q, k_pool, v_pool, kv_type, nh, nkv, hd, scale, rows, blocks, tails, sel, sel_words,
        n_parts > 1 ? k_part_blocks : sel_words * 64);
    MINICPM_CUDA_LAUNCHED("sparse attention");
    if (n_parts == 1) return;
    combine_kernel<<<dim3(unsigned(T), unsigned(nh)), 128, 0, s>>>(out, part_o, part_ml, nh, hd, n_parts, rows);
    MINICPM_CUDA_LAUNCHED("sparse attention combine");
}

}  // namespace cuda
}  // namespace minicpm
