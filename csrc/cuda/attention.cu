// KV store and attention over the paged KV pool ([n_blocks][nkv][64][hd] per layer for K and for V), for
// causal runs and token trees alike: a row sees its segment's committed slots, itself, and the earlier rows
// of its segment that its mask (or causality) allows, exactly as the CPU reference op.
//
// attention: one thread block per (row, query head); the visible slots are walked in chunks of 128 with an
// online softmax, so memory does not grow with the context. Used for prefill, where rows alone fill the GPU.
//
// split-K attention (flash-decoding), for few rows over a long context: the context of each (row, KV head) is
// cut into partitions, one thread block each, so that a batch-1 decode step still spreads over every SM. A
// block serves all the query heads of its KV head (GQA: K and V are read once for the group) and writes a
// partial output normalised by its own sum, with its max and sum; a combine kernel then merges the partitions
// with the usual rescaling, exp(m_p - M) * l_p.
#include "cuda/ops.cuh"

#include <algorithm>

namespace minicpm {
namespace cuda {

namespace {

constexpr int k_blk = MINICPM_KV_BLOCK_SIZE;
constexpr int k_chunk = 128;  // slots scored per pass = threads per block

__device__ __forceinline__ int64_t kv_index(const int32_t * blocks, const row_info & r, int32_t slot, int32_t h,
                                            int32_t nkv, int32_t hd) {
    const int32_t b = blocks[r.blocks_off + slot / k_blk];
    return ((int64_t(b) * nkv + h) * k_blk + slot % k_blk) * hd;
}

__global__ void kv_store_kernel(void * kp, void * vp, int32_t kv_type, int32_t nkv, int32_t hd, const float * k,
                                const float * v, const row_info * rows, const int32_t * blocks) {
    const int64_t  t = blockIdx.x;
    const row_info r = rows[t];
    if (r.j < 0) return;
    for (int32_t e = threadIdx.x; e < nkv * hd; e += blockDim.x) {
        const int32_t h = e / hd, d = e % hd;
        const int64_t at = kv_index(blocks, r, r.n_past + r.j, h, nkv, hd) + d;
        store_plain(kp, kv_type, at, k[t * nkv * hd + e]);
        store_plain(vp, kv_type, at, v[t * nkv * hd + e]);
    }
}

__device__ __forceinline__ bool sees(const row_info & r, int32_t i) {
    return i == r.j || (i < r.j && (r.causal || ((r.mask >> i) & 1u)));
}

__global__ void attention_kernel(float * out, const float * q, const void * kp, const void * vp, int32_t kv_type,
                                 int32_t nh, int32_t nkv, int32_t hd, float scale, const row_info * rows,
                                 const int32_t * blocks) {
    extern __shared__ float sh[];
    float * qs = sh;              // [hd]
    float * ps = qs + hd;         // [k_chunk] probabilities of the chunk
    float * red = ps + k_chunk;   // [k_chunk / 32] reduction scratch
    float * acc = red + k_chunk / k_warp;  // [hd] running output
    const int64_t  t = blockIdx.x;
    const int32_t  h = blockIdx.y, hk = h / (nh / nkv);
    const row_info r = rows[t];
    if (r.j < 0) return;  // the whole block: before any barrier
    const float *  qh = q + (t * nh + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        qs[d] = qh[d] * scale;
        acc[d] = 0.0f;
    }
    __syncthreads();
    const int32_t n_slots = r.n_past + r.j + 1;  // slots up to the row's own; hidden ones are skipped
    float m = -INFINITY, l = 0.0f;
    for (int32_t c0 = 0; c0 < n_slots; c0 += k_chunk) {
        const int32_t slot = c0 + threadIdx.x;
        float score = -INFINITY;
        if (slot < n_slots && (slot < r.n_past || sees(r, slot - r.n_past))) {
            const int64_t at = kv_index(blocks, r, slot, hk, nkv, hd);
            float s = 0.0f;
            for (int32_t d = 0; d < hd; ++d) s += qs[d] * load_plain(kp, kv_type, at + d);
            score = s;
        }
        // Chunk max, then the online-softmax rescale of what came before.
        float mx = score;
        for (int o = k_warp / 2; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        if (threadIdx.x % k_warp == 0) red[threadIdx.x / k_warp] = mx;
        __syncthreads();
        float cmax = -INFINITY;
        for (int i = 0; i < k_chunk / k_warp; ++i) cmax = fmaxf(cmax, red[i]);
        __syncthreads();
        const float m_new = fmaxf(m, cmax);
        const float p = score == -INFINITY ? 0.0f : expf(score - m_new);
        ps[threadIdx.x] = p;
        float psum = p;
        for (int o = k_warp / 2; o > 0; o /= 2) psum += __shfl_xor_sync(0xffffffffu, psum, o);
        if (threadIdx.x % k_warp == 0) red[threadIdx.x / k_warp] = psum;
        __syncthreads();
        float csum = 0.0f;
        for (int i = 0; i < k_chunk / k_warp; ++i) csum += red[i];
        const float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);
        l = l * alpha + csum;
        m = m_new;
        const int32_t lim = min(k_chunk, n_slots - c0);
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float a = acc[d] * alpha;
            for (int32_t j = 0; j < lim; ++j) {
                if (ps[j] == 0.0f) continue;
                a += ps[j] * load_plain(vp, kv_type, kv_index(blocks, r, c0 + j, hk, nkv, hd) + d);
            }
            acc[d] = a;
        }
        __syncthreads();
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) out[(t * nh + h) * hd + d] = acc[d] / l;
}

constexpr int k_split_chunk = 32;     // slots per pass: one per lane, so a warp owns a query head's softmax
constexpr int k_split_threads = 128;
constexpr int k_split_own = 16;       // (query head, dim) accumulators per thread: G * hd <= 2048
constexpr int64_t k_split_max_rows = 64;
constexpr int32_t k_split_min_slots = 256;

__global__ void attention_split_kernel(float * part_o, float * part_ml, const float * q, const void * kp,
                                       const void * vp, int32_t kv_type, int32_t nh, int32_t nkv, int32_t hd,
                                       float scale, const row_info * rows, const int32_t * blocks,
                                       int32_t part_len, int32_t n_parts) {
    extern __shared__ float sh[];
    const int32_t G = nh / nkv, hk = blockIdx.y, part = blockIdx.z, h0 = hk * G, ld = hd + 1;
    const int64_t t = blockIdx.x;
    float * qs = sh;                          // [G][hd] scaled queries of the group
    float * kv = qs + G * hd;                 // [chunk][hd + 1] K rows, then V rows, of the chunk
    float * ps = kv + k_split_chunk * ld;     // [G][chunk] scores, then probabilities
    float * ms = ps + G * k_split_chunk;      // [G] running max
    float * ls = ms + G;                      // [G] running sum
    float * al = ls + G;                      // [G] rescale of what came before this chunk
    const row_info r = rows[t];
    if (r.j < 0) return;  // the whole block: before any barrier (combine skips the row too)
    const int32_t  n_slots = r.n_past + r.j + 1;
    const int32_t  s0 = part * part_len, s1 = min(s0 + part_len, n_slots);  // empty past the row's context
    const int      warp = threadIdx.x / k_warp, lane = threadIdx.x % k_warp, n_warps = blockDim.x / k_warp;
    for (int e = threadIdx.x; e < G * hd; e += blockDim.x) qs[e] = q[(t * nh + h0) * hd + e] * scale;
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        ms[g] = -INFINITY;
        ls[g] = 0.0f;
    }
    float acc[k_split_own];
#pragma unroll
    for (int i = 0; i < k_split_own; ++i) acc[i] = 0.0f;
    // fn(i, g, d) for each (query head g, dim d) this thread accumulates, in acc[i] (unrolled: acc stays in
    // registers).
    const auto each_owned = [&](auto && fn) {
#pragma unroll
        for (int i = 0; i < k_split_own; ++i) {
            const int e = threadIdx.x + i * blockDim.x;
            if (e < G * hd) fn(i, e / hd, e % hd);
        }
    };
    __syncthreads();
    for (int32_t c0 = s0; c0 < s1; c0 += k_split_chunk) {
        const int32_t n = min(k_split_chunk, s1 - c0);
        for (int e = threadIdx.x; e < n * hd; e += blockDim.x) {
            const int s = e / hd, d = e % hd;
            kv[s * ld + d] = load_plain(kp, kv_type, kv_index(blocks, r, c0 + s, hk, nkv, hd) + d);
        }
        __syncthreads();
        for (int e = threadIdx.x; e < G * k_split_chunk; e += blockDim.x) {
            const int g = e / k_split_chunk, s = e % k_split_chunk;
            const int32_t slot = c0 + s;
            float score = -INFINITY;
            if (s < n && (slot < r.n_past || sees(r, slot - r.n_past))) {
                const float * qg = qs + g * hd;
                const float * kr = kv + s * ld;
                float a = 0.0f;
                for (int d = 0; d < hd; ++d) a += qg[d] * kr[d];
                score = a;
            }
            ps[e] = score;
        }
        __syncthreads();
        // V rows replace the K rows while each warp turns its query heads' scores into probabilities.
        for (int e = threadIdx.x; e < n * hd; e += blockDim.x) {
            const int s = e / hd, d = e % hd;
            kv[s * ld + d] = load_plain(vp, kv_type, kv_index(blocks, r, c0 + s, hk, nkv, hd) + d);
        }
        for (int g = warp; g < G; g += n_warps) {
            const float score = ps[g * k_split_chunk + lane];
            float mx = score;
            for (int o = k_warp / 2; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            const float m_old = ms[g], m_new = fmaxf(m_old, mx);
            const float p = score == -INFINITY ? 0.0f : expf(score - m_new);
            ps[g * k_split_chunk + lane] = p;
            float sum = p;
            for (int o = k_warp / 2; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            __syncwarp();  // every lane has read ms[g] before lane 0 overwrites it (a shuffle orders no memory)
            if (lane == 0) {
                const float a = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
                al[g] = a;
                ls[g] = ls[g] * a + sum;
                ms[g] = m_new;
            }
        }
        __syncthreads();
        each_owned([&](int i, int g, int d) {
            const float * pg = ps + g * k_split_chunk;
            float         a = acc[i] * al[g];
            for (int s = 0; s < n; ++s) a += pg[s] * kv[s * ld + d];
            acc[i] = a;
        });
        __syncthreads();
    }
    each_owned([&](int i, int g, int d) {
        const float l = ls[g];
        part_o[((t * nh + h0 + g) * n_parts + part) * hd + d] = l > 0.0f ? acc[i] / l : 0.0f;
    });
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        float * ml = part_ml + ((t * nh + h0 + g) * n_parts + part) * 2;
        ml[0] = ms[g];
        ml[1] = ls[g];
    }
}

// out[t, h] = sum_p w_p o_p / sum_p w_p with w_p = l_p exp(m_p - M); empty partitions (l_p = 0) weigh nothing.
__global__ void attention_combine_kernel(float * out, const float * part_o, const float * part_ml, int32_t hd,
                                         int32_t n_parts, const row_info * rows) {
    extern __shared__ float wts[];  // [n_parts]
    __shared__ float den;
    if (rows[blockIdx.x].j < 0) return;
    const int64_t th = int64_t(blockIdx.x) * gridDim.y + blockIdx.y;
    const float * ml = part_ml + th * n_parts * 2;
    if (threadIdx.x == 0) {
        float mx = -INFINITY;
        for (int32_t p = 0; p < n_parts; ++p)
            if (ml[2 * p + 1] > 0.0f) mx = fmaxf(mx, ml[2 * p]);
        float sum = 0.0f;
        for (int32_t p = 0; p < n_parts; ++p) {
            const float w = ml[2 * p + 1] > 0.0f ? ml[2 * p + 1] * expf(ml[2 * p] - mx) : 0.0f;
            wts[p] = w;
            sum += w;
        }
        den = sum;
    }
    __syncthreads();
    const float * o = part_o + th * n_parts * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float num = 0.0f;
        for (int32_t p = 0; p < n_parts; ++p) num += wts[p] * o[int64_t(p) * hd + d];
        out[th * hd + d] = num / den;
    }
}

size_t split_shared_bytes(int32_t G, int32_t hd) {
    return (size_t(G) * hd + size_t(k_split_chunk) * (hd + 1) + size_t(G) * k_split_chunk + 3 * size_t(G)) *
           sizeof(float);
}

}  // namespace

split_plan plan_split_attention(int32_t nh, int32_t nkv, int32_t hd, int64_t T, int32_t max_slots, int32_t n_sms) {
    split_plan p;
    const int32_t G = nh / nkv;
    // T == 0 (segments of no rows over a long context) would divide by zero below.
    if (T <= 0 || T > k_split_max_rows || max_slots < k_split_min_slots || G * hd > k_split_threads * k_split_own ||
        split_shared_bytes(G, hd) > 48 * 1024)
        return p;
    // Planned for the context rounded up to 8..15 times a power of two: the plan (baked into a recorded step
    // graph) then stays the same while a context grows by an eighth, at the cost of at most an eighth of the
    // partitions running empty past a row's context (they weigh nothing in the combine).
    int64_t step = 1;
    while (max_slots > 16 * step) step *= 2;
    const int64_t ctx = ceil_div(max_slots, step) * step;
    // About two blocks per SM, with partitions of at least 64 slots.
    const int64_t want = ceil_div(2 * int64_t(std::max(n_sms, 1)), T * nkv);
    const int64_t n = std::max<int64_t>(1, std::min<int64_t>(want, ceil_div(ctx, 64)));
    p.part_len = int32_t(ceil_div(ceil_div(ctx, n), k_split_chunk) * k_split_chunk);
    p.n_parts = int32_t(ceil_div(ctx, p.part_len));
    return p;
}

size_t split_scratch_floats(const split_plan & p, int32_t nh, int32_t hd, int64_t T) {
    return size_t(T) * nh * p.n_parts * (size_t(hd) + 2);
}

void launch_attention_split(cudaStream_t s, float * out, const float * q, const void * k_pool, const void * v_pool,
                            int32_t kv_type, int32_t nh, int32_t nkv, int32_t hd, float scale, const row_info * rows,
                            const int32_t * blocks, int64_t T, const split_plan & p, float * scratch) {
    if (T <= 0) return;
    float * part_o = scratch;
    float * part_ml = scratch + size_t(T) * nh * p.n_parts * hd;
    const dim3 grid(unsigned(T), unsigned(nkv), unsigned(p.n_parts));
    attention_split_kernel<<<grid, k_split_threads, split_shared_bytes(nh / nkv, hd), s>>>(
        part_o, part_ml, q, k_pool, v_pool, kv_type, nh, nkv, hd, scale, rows, blocks, p.part_len, p.n_parts);
    MINICPM_CUDA_LAUNCHED("attention: split-K partitions");
    attention_combine_kernel<<<dim3(unsigned(T), unsigned(nh)), 128, size_t(p.n_parts) * sizeof(float), s>>>(
        out, part_o, part_ml, hd, p.n_parts, rows);
    MINICPM_CUDA_LAUNCHED("attention: split-K combine");
}

void launch_kv_store(cudaStream_t s, void * k_pool, void * v_pool, int32_t kv_type, int32_t nkv, int32_t hd,
                     const float * k, const float * v, const row_info * rows, const int32_t * blocks, int64_t T) {
    if (T <= 0) return;
    kv_store_kernel<<<unsigned(T), 256, 0, s>>>(k_pool, v_pool, kv_type, nkv, hd, k, v, rows, blocks);
    MINICPM_CUDA_LAUNCHED("kv_store");
}

void launch_attention(cudaStream_t s, float * out, const float * q, const void * k_pool, const void * v_pool,
                      int32_t kv_type, int32_t nh, int32_t nkv, int32_t hd, float scale, const row_info * rows,
                      const int32_t * blocks, int64_t T) {
    if (T <= 0) return;
    const size_t shared = (size_t(2 * hd) + k_chunk + k_chunk / k_warp) * sizeof(float);
    attention_kernel<<<dim3(unsigned(T), unsigned(nh)), k_chunk, shared, s>>>(out, q, k_pool, v_pool, kv_type, nh, nkv,
                                                                             hd, scale, rows, blocks);
    MINICPM_CUDA_LAUNCHED("attention");
}

}  // namespace cuda
}  // namespace minicpm
