// InfLLM v2 on the CUDA backend (core/sparse-attn.h, /work/shared/docs/INFLLM_V2.md steps 1-9): key
// compression into the KV side storage, block selection, and attention over the selected blocks.
//
// Selection must pick exactly the blocks of the CPU reference (cpu/ops-ref-sparse.cpp), so stage 1 repeats its
// arithmetic: every multiply and add is an explicit round-to-nearest intrinsic (nvcc would otherwise fuse them
// into FMAs), dots run in order of d, the LSE sum runs in order of j and the head sum in order of h, and exp
// is the CPU's polynomial (cpu/fast-exp.h) written with the same operations. Only log is the device's logf,
// which may differ from the host's by an ulp; that moves a head's LSE, not the order of its kernels.
//
// select: one thread block per (row, KV head). Each warp takes a query head of the group: its max and its
// ordered exp sum (lane 0's order, fed 32 values at a time by shuffles) give its LSE. Then every thread takes
// kernels j and sums the heads' probabilities into S (global scratch), max-pools S into R (shared), forces the
// init / local blocks and ranks each block by (R descending, index ascending) to keep the top K. The result
// is one bitmask per (row, KV head), written with warp ballots.
//
// attention: one thread block of 64 threads per (row, query head) walks the selected 64-slot blocks with an
// online softmax, like the dense kernel of attention.cu walks all of them.
#include "cuda/ops.cuh"

#include <algorithm>

namespace minicpm {
namespace cuda {

namespace {

constexpr int k_blk = MINICPM_KV_BLOCK_SIZE;
constexpr int k_select_threads = 256;

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

// The reference's dot: f32, in order of d, no fused multiply-add.
__device__ __forceinline__ float dot_as_cpu(const float * a, const float * b, int32_t n) {
    float acc = 0.0f;
    for (int32_t d = 0; d < n; ++d) acc = __fadd_rn(acc, __fmul_rn(a[d], b[d]));
    return acc;
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

// grid (rows, KV heads). Shared: the group's queries [G][hd], per head its LSE and whether it counts, R [nb_cap].
__global__ void select_kernel(uint64_t * sel, int32_t sel_words, float * S_scratch, int32_t n1_cap, side cc,
                              const float * q, int32_t nh, int32_t nkv, int32_t hd, float scale, sparse_attn_params sp,
                              const sparse_row * rows, const int32_t * blocks) {
    extern __shared__ float sh[];
    const int32_t    G = nh / nkv, g = blockIdx.y, lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
    const int32_t    n_warps = blockDim.x / k_warp;
    const sparse_row r = rows[blockIdx.x];
    const int32_t    p = r.p, qb = p / k_blk, nb = qb + 1, L = sp.window_blocks;
    const int32_t *  bt = blocks + r.blocks_off;
    uint32_t *       bits = (uint32_t *) (sel + (int64_t(blockIdx.x) * nkv + g) * sel_words);
    const bool       dense = p + 1 < sp.dense_len;  // step 1, per query
    float *          qs = sh;
    float *          lse = qs + G * hd;
    float *          counts = lse + G;
    float *          R = counts + G;
    float *          S = S_scratch + (int64_t(blockIdx.x) * nkv + g) * n1_cap;
    const int32_t    n1 = cc.c1.count(int64_t(p) + 1), n2 = cc.c2.count(int64_t(p) + 1);
    if (!dense) {
        for (int32_t e = threadIdx.x; e < G * hd; e += blockDim.x) qs[e] = q[(int64_t(r.row) * nh + g * G) * hd + e];
        __syncthreads();
        // Step 4: each head's LSE over C1 (exact) or C2 (approximate); a head with no visible kernel adds nothing.
        const bool    use_c2 = sp.lse == sparse_lse::c2;
        const geom &  lg = use_c2 ? cc.c2 : cc.c1;
        const int32_t n_l = use_c2 ? n2 : n1;
        for (int32_t hh = warp; hh < G; hh += n_warps) {
            const float * qh = qs + hh * hd;
            float         m = -INFINITY;
            for (int32_t j = lane; j < n_l; j += k_warp)
                m = fmaxf(m, __fmul_rn(dot_as_cpu(qh, cc.at(lg, bt, g, j, hd), hd), scale));
            for (int o = k_warp / 2; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
            float sum = 0.0f;  // every lane adds the same values in the same order
            for (int32_t c0 = 0; c0 < n_l; c0 += k_warp) {
                const int32_t j = c0 + lane;
                const float   e = j < n_l ? exp_as_cpu(__fsub_rn(__fmul_rn(dot_as_cpu(qh, cc.at(lg, bt, g, j, hd), hd),
                                                                            scale), m))
                                          : 0.0f;
                const int32_t lim = min(k_warp, n_l - c0);
                for (int32_t i = 0; i < k_warp; ++i) {
                    const float v = __shfl_sync(0xffffffffu, e, i);
                    if (i < lim) sum = __fadd_rn(sum, v);
                }
            }
            if (lane == 0) {
                lse[hh] = __fadd_rn(m, logf(sum));
                counts[hh] = n_l > 0 ? 1.0f : 0.0f;
            }
        }
        __syncthreads();
        for (int32_t j = threadIdx.x; j < n1; j += blockDim.x) {
            const float * c = cc.at(cc.c1, bt, g, j, hd);
            float         s = 0.0f;
            for (int32_t hh = 0; hh < G; ++hh)
                if (counts[hh] != 0.0f)
                    s = __fadd_rn(s, exp_as_cpu(__fsub_rn(__fmul_rn(dot_as_cpu(qs + hh * hd, c, hd), scale), lse[hh])));
            S[j] = s;
        }
        __syncthreads();
        // Steps 5-6: max-pool kernels [ps b - 1, ps b + ps - 1] into block b, then the forced blocks.
        const int32_t ps = k_blk / sp.kernel_stride;
        for (int32_t b = threadIdx.x; b < nb; b += blockDim.x) {
            float v = -INFINITY;
            for (int32_t j = max(0, ps * b - 1); j <= ps * b + ps - 1 && j < n1; ++j) v = fmaxf(v, S[j]);
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
    // Steps 7-8: block b is kept when fewer than K blocks rank before it, then the causal drop; "hf" adds the
    // window of L blocks ending at qb. A dense row keeps every block up to its own.
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

// grid (rows, query heads), 64 threads: one slot of a block each.
__global__ void sparse_attention_kernel(float * out, const float * q, const void * kp, const void * vp,
                                        int32_t kv_type, int32_t nh, int32_t nkv, int32_t hd, float scale,
                                        const sparse_row * rows, const int32_t * blocks, const uint64_t * sel,
                                        int32_t sel_words) {
    extern __shared__ float sh[];
    float *          qs = sh;           // [hd]
    float *          ps = qs + hd;      // [64]
    float *          red = ps + k_blk;  // [2]
    float *          acc = red + 2;     // [hd]
    const int32_t    h = blockIdx.y, hk = h / (nh / nkv);
    const sparse_row r = rows[blockIdx.x];
    const int32_t *  bt = blocks + r.blocks_off;
    const uint64_t * bits = sel + (int64_t(blockIdx.x) * nkv + hk) * sel_words;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        qs[d] = q[(int64_t(r.row) * nh + h) * hd + d] * scale;
        acc[d] = 0.0f;
    }
    __syncthreads();
    float m = -INFINITY, l = 0.0f;
    for (int32_t b = 0; b <= r.p / k_blk; ++b) {
        if (!((bits[b / 64] >> (b % 64)) & 1u)) continue;
        const int32_t slot = b * k_blk + threadIdx.x;
        float         score = -INFINITY;
        if (slot <= r.p) {
            const int64_t at = kv_at(bt, slot, hk, nkv, hd);
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
            for (int32_t i = 0; i < lim; ++i) a += ps[i] * load_plain(vp, kv_type, kv_at(bt, b * k_blk + i, hk, nkv, hd) + d);
            acc[d] = a;
        }
        __syncthreads();
    }
    // No slot selected (a top-k too small to keep the row's own block): zeros, as the reference.
    for (int d = threadIdx.x; d < hd; d += blockDim.x) out[(int64_t(r.row) * nh + h) * hd + d] = l > 0.0f ? acc[d] / l : 0.0f;
}

}  // namespace

void launch_kv_compress(cudaStream_t s, const kv_compressed & cc, const void * k_pool, int32_t kv_type, int32_t nkv,
                        int32_t hd, const sparse_seg * segs, int32_t n_segs, int32_t max_jobs, const int32_t * blocks) {
    if (n_segs == 0 || max_jobs == 0) return;
    compress_kernel<<<dim3(unsigned(max_jobs), unsigned(n_segs), unsigned(nkv)), std::min(hd, 128), 0, s>>>(
        to_side(cc), k_pool, kv_type, nkv, hd, segs, blocks);
    MINICPM_CUDA_LAUNCHED("kv_compress");
}

size_t select_shared_bytes(int32_t G, int32_t hd, int32_t nb_cap) {
    return size_t(G * hd + 2 * G + nb_cap) * sizeof(float);
}

void launch_sparse_select(cudaStream_t s, uint64_t * sel, int32_t sel_words, float * S_scratch, int32_t n1_cap,
                          const kv_compressed & cc, const float * q, int32_t nh, int32_t nkv, int32_t hd, float scale,
                          const sparse_attn_params & sp, const sparse_row * rows, int64_t T, const int32_t * blocks) {
    if (T == 0) return;
    const size_t shared = select_shared_bytes(nh / nkv, hd, sel_words * 64);
    if (shared > 48 * 1024)
        MINICPM_CUDA_CHECK(cudaFuncSetAttribute(select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
    select_kernel<<<dim3(unsigned(T), unsigned(nkv)), k_select_threads, shared, s>>>(
        sel, sel_words, S_scratch, n1_cap, to_side(cc), q, nh, nkv, hd, scale, sp, rows, blocks);
    MINICPM_CUDA_LAUNCHED("sparse select");
}

void launch_sparse_attention(cudaStream_t s, float * out, const float * q, const void * k_pool, const void * v_pool,
                             int32_t kv_type, int32_t nh, int32_t nkv, int32_t hd, float scale, const sparse_row * rows,
                             int64_t T, const int32_t * blocks, const uint64_t * sel, int32_t sel_words) {
    if (T == 0) return;
    const size_t shared = size_t(2 * hd + k_blk + 2) * sizeof(float);
    sparse_attention_kernel<<<dim3(unsigned(T), unsigned(nh)), k_blk, shared, s>>>(
        out, q, k_pool, v_pool, kv_type, nh, nkv, hd, scale, rows, blocks, sel, sel_words);
    MINICPM_CUDA_LAUNCHED("sparse attention");
}

}  // namespace cuda
}  // namespace minicpm
