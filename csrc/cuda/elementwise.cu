// Embedding, RMSNorm, RoPE and the elementwise ops: one thread block per row or a grid-stride loop; each
// computes exactly what the CPU reference op (csrc/cpu/ops-ref.cpp) computes, in f32.
#include "cuda/ops.cuh"

namespace minicpm {
namespace cuda {

namespace {

constexpr int k_threads = 256;

__global__ void embed_kernel(float * out, const int32_t * tokens, wdesc e, float scale) {
    const int64_t t = blockIdx.x;
    const int64_t id = tokens[t];
    for (int64_t i = threadIdx.x; i < e.cols; i += blockDim.x) out[t * e.cols + i] = load_weight(e, id, i) * scale;
}

__device__ float block_sum(float v, float * shared) {
    for (int o = k_warp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < int(blockDim.x) / k_warp; ++i) s += shared[i];
    __syncthreads();
    return s;
}

__global__ void rms_norm_kernel(float * y, const float * x, wdesc g, int64_t H, float eps) {
    __shared__ float part[k_threads / k_warp];
    const float * xr = x + int64_t(blockIdx.x) * H;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) ss += xr[i] * xr[i];
    const float r = rsqrtf(block_sum(ss, part) / float(H) + eps);
    float * yr = y + int64_t(blockIdx.x) * H;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) yr[i] = xr[i] * r * load_plain(g.data, g.type, i);
}

__global__ void rope_kernel(float * x, const int32_t * pos, const float * cos_sin, int32_t nh, int32_t hd) {
    const int64_t t = blockIdx.x;
    const int32_t half = hd / 2;
    const float * cs = cos_sin + int64_t(pos[t]) * hd;
    for (int32_t e = threadIdx.x; e < nh * half; e += blockDim.x) {
        const int32_t h = e / half, i = e % half;
        float *       u = x + (t * nh + h) * hd;
        const float   c = cs[2 * i], s = cs[2 * i + 1];
        const float   a = u[i], b = u[i + half];
        u[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));  // unfused, as add_scaled_kernel
        u[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
    }
}

__global__ void silu_mul_kernel(float * out, const float * gate, const float * up, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// A product then a sum, each rounded, as the CPU op: nvcc would otherwise fuse them into one FMA (one rounding),
// and the residual stream would drift from the reference by an ulp per layer.
__global__ void add_scaled_kernel(float * x, const float * a, float scale, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        x[i] = __fadd_rn(x[i], __fmul_rn(a[i], scale));
}

__global__ void div_scalar_kernel(float * x, float d, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        x[i] /= d;
}

__global__ void get_rows_kernel(float * dst, const float * src, const int32_t * rows, int64_t H) {
    const int64_t r = blockIdx.x;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) dst[r * H + i] = src[int64_t(rows[r]) * H + i];
}

unsigned grid_for(int64_t n) { return unsigned(std::min<int64_t>(ceil_div(n, k_threads), 65535)); }

}  // namespace

void launch_embed(cudaStream_t s, float * out, const int32_t * tokens, const wdesc & e, int64_t T, float scale) {
    if (T <= 0) return;
    embed_kernel<<<unsigned(T), k_threads, 0, s>>>(out, tokens, e, scale);
    MINICPM_CUDA_LAUNCHED("embed");
}

void launch_rms_norm(cudaStream_t s, float * y, const float * x, const wdesc & g, int64_t T, int64_t H, float eps) {
    if (T <= 0) return;
    rms_norm_kernel<<<unsigned(T), k_threads, 0, s>>>(y, x, g, H, eps);
    MINICPM_CUDA_LAUNCHED("rms_norm");
}

void launch_rope(cudaStream_t s, float * x, const int32_t * pos, const float * cos_sin, int64_t T, int32_t nh,
                 int32_t hd) {
    if (T <= 0) return;
    rope_kernel<<<unsigned(T), k_threads, 0, s>>>(x, pos, cos_sin, nh, hd);
    MINICPM_CUDA_LAUNCHED("rope");
}

void launch_silu_mul(cudaStream_t s, float * out, const float * gate, const float * up, int64_t n) {
    if (n <= 0) return;
    silu_mul_kernel<<<grid_for(n), k_threads, 0, s>>>(out, gate, up, n);
    MINICPM_CUDA_LAUNCHED("silu_mul");
}

void launch_add_scaled(cudaStream_t s, float * x, const float * a, float scale, int64_t n) {
    if (n <= 0) return;
    add_scaled_kernel<<<grid_for(n), k_threads, 0, s>>>(x, a, scale, n);
    MINICPM_CUDA_LAUNCHED("add_scaled");
}

void launch_div_scalar(cudaStream_t s, float * x, float d, int64_t n) {
    if (n <= 0) return;
    div_scalar_kernel<<<grid_for(n), k_threads, 0, s>>>(x, d, n);
    MINICPM_CUDA_LAUNCHED("div_scalar");
}

void launch_get_rows(cudaStream_t s, float * dst, const float * src, const int32_t * rows, int64_t R, int64_t H) {
    if (R <= 0) return;
    get_rows_kernel<<<unsigned(R), k_threads, 0, s>>>(dst, src, rows, H);
    MINICPM_CUDA_LAUNCHED("get_rows");
}

}  // namespace cuda
}  // namespace minicpm
