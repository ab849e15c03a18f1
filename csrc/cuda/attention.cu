// KV store and attention over the paged KV pool ([n_blocks][nkv][64][hd] per layer for K and for V), for
// causal runs and token trees alike: a row sees its segment's committed slots, itself, and the earlier rows
// of its segment that its mask (or causality) allows, exactly as the CPU reference op.
//
// attention: one thread block per (row, query head); the visible slots are walked in chunks of 128 with an
// online softmax, so memory does not grow with the context.
#include "cuda/ops.cuh"

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

}  // namespace

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
