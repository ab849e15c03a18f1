// y[T,N] = x[T,K] . W[N,K]^T on the GPU.
//   small batches (T <= 8, decode): one warp per output row streams the row once for all T activations
//     (16-byte loads for f16/bf16 rows whose K is a multiple of 8); memory-bound by design;
//   larger batches with f16/bf16 weights: tensor cores (WMMA 16x16x16, f32 accumulation) on 64x64 output
//     tiles, activations rounded once to the weight's 16-bit type (the same class of rounding as the CPU's AMX
//     path);
//   larger batches with q8 / q4 weights in group order: the quantized tensor-core GEMM (qgemm.cu) over
//     activations rounded once to bf16;
//   anything else (f32, permuted q8 / q4 without a reordered copy at large T): the warp-per-row kernel over
//     chunks of 8 rows; q8 / q4 rows in group order are read packed, 16 bytes a lane (gemv_packed_kernel).
// GPTQ act-order weights (g_idx) run as group-ordered ones from their reordered copy (reordered_desc): the
// activations are gathered into the copy's column order on their way into the scratch (rounded to bf16 for
// the GEMM, f32 for the GEMV), which is the only extra work.
#include "cuda/ops.cuh"

#include <mma.h>

#include <algorithm>
#include <type_traits>

namespace minicpm {
namespace cuda {

namespace {

constexpr int k_gemv_rows = 8;     // T handled by one pass of the warp-per-row kernel
constexpr int k_gemv_warps = 4;    // warps (output rows) per thread block

template <int TT>
__global__ void gemv_kernel(float * y, const float * x, wdesc w, int64_t T, int64_t t0) {
    const int64_t n = int64_t(blockIdx.x) * k_gemv_warps + threadIdx.x / k_warp;
    const int     lane = threadIdx.x % k_warp;
    if (n >= w.rows) return;
    const int64_t K = w.cols;
    float         acc[TT];
    for (int t = 0; t < TT; ++t) acc[t] = 0.0f;
    const bool vec = (w.type == MINICPM_DTYPE_BF16 || w.type == MINICPM_DTYPE_F16) && K % 8 == 0;
    if (vec) {
        const uint4 * row = (const uint4 *) ((const uint16_t *) w.data + n * K);
        for (int64_t c = lane; c < K / 8; c += k_warp) {
            const uint4 raw = row[c];
            float       wf[8];
            const uint16_t * h = (const uint16_t *) &raw;
            for (int e = 0; e < 8; ++e) {
                if (w.type == MINICPM_DTYPE_BF16) {
                    wf[e] = __uint_as_float(uint32_t(h[e]) << 16);
                } else {
                    wf[e] = __half2float(__ushort_as_half(h[e]));
                }
            }
            for (int t = 0; t < TT; ++t) {
                if (t0 + t >= T) break;
                const float * xr = x + (t0 + t) * K + c * 8;
                for (int e = 0; e < 8; ++e) acc[t] += wf[e] * xr[e];
            }
        }
    } else {
        for (int64_t k = lane; k < K; k += k_warp) {
            const float wk = load_weight(w, n, k);
            for (int t = 0; t < TT; ++t) {
                if (t0 + t >= T) break;
                acc[t] += wk * x[(t0 + t) * K + k];
            }
        }
    }
    for (int t = 0; t < TT; ++t) {
        float v = acc[t];
        for (int o = k_warp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0 && t0 + t < T) y[(t0 + t) * w.rows + n] = v;
    }
}

// Packed q8 / q4 rows read directly, 16 bytes a lane at a time (16 int8 or 32 int4 weights), with the
// group's scale (and zero point) loaded once per load: for group-ordered columns (no g_idx permutation) whose
// groups hold whole loads. Dequantizing into a 16-bit copy first would read the weights twice.
template <int TT, bool Q4>
__global__ void gemv_packed_kernel(float * y, const float * x, wdesc w, int64_t T, int64_t t0) {
    constexpr int per = Q4 ? 32 : 16;  // weights per 16-byte load
    const int64_t n = int64_t(blockIdx.x) * k_gemv_warps + threadIdx.x / k_warp;
    const int     lane = threadIdx.x % k_warp;
    if (n >= w.rows) return;
    const int64_t K = w.cols;
    const uint4 * row = (const uint4 *) ((const uint8_t *) w.data + (Q4 ? n * K / 2 : n * K));
    float         acc[TT];
    for (int t = 0; t < TT; ++t) acc[t] = 0.0f;
    for (int64_t c = lane; c < K / per; c += k_warp) {
        const uint4     raw = row[c];
        const uint8_t * b = (const uint8_t *) &raw;
        const int64_t   k0 = c * per, g = k0 / w.group_size;
        const float     s = load_plain(w.scales, w.scale_type, n * w.n_groups + g);
        float           wf[per];
        if (Q4) {
            const int32_t z = w.zeros ? w.zeros[n * w.n_groups + g] : 8;
            for (int e = 0; e < 16; ++e) {
                wf[2 * e] = float(int32_t(b[e] & 0xf) - z);
                wf[2 * e + 1] = float(int32_t(b[e] >> 4) - z);
            }
        } else {
            for (int e = 0; e < 16; ++e) wf[e] = float(int8_t(b[e]));
        }
        for (int t = 0; t < TT; ++t) {
            if (t0 + t >= T) break;
            const float * xr = x + (t0 + t) * K + k0;
            float         dot = 0.0f;
            for (int e = 0; e < per; ++e) dot += wf[e] * xr[e];
            acc[t] += s * dot;
        }
    }
    for (int t = 0; t < TT; ++t) {
        float v = acc[t];
        for (int o = k_warp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0 && t0 + t < T) y[(t0 + t) * w.rows + n] = v;
    }
}

bool packed_gemv(const wdesc & w) {
    return (w.type == MINICPM_DTYPE_Q8 || w.type == MINICPM_DTYPE_Q4) && w.perm == nullptr && w.group_size > 0 &&
           w.group_size % 32 == 0 && w.cols % 32 == 0;
}

template <typename H> __device__ __forceinline__ H to_half_type(float v);
template <> __device__ __forceinline__ __nv_bfloat16 to_half_type<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half to_half_type<__half>(float v) { return __float2half_rn(v); }

// out[t][j] = x[t][order[j]] (order nullptr: x[t][j]) for rows of K, rounded to H (f32: copied).
template <typename H>
__global__ void round_kernel(H * out, const float * x, int64_t n, const int32_t * order, int64_t K) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const float v = order ? x[i - i % K + order[i % K]] : x[i];
        if constexpr (std::is_same<H, float>::value) {
            out[i] = v;
        } else {
            out[i] = to_half_type<H>(v);
        }
    }
}

// Row n of a reordered copy: column j of the copy is column order[j] of w (q4: nibbles, two per byte).
template <bool Q4> __global__ void reorder_kernel(uint8_t * out, const uint8_t * in, const int32_t * order, int64_t K) {
    const int64_t n = blockIdx.x, row = Q4 ? K / 2 : K;
    for (int64_t b = threadIdx.x; b < row; b += blockDim.x) {
        if (Q4) {
            uint8_t v = 0;
            for (int h = 0; h < 2; ++h) {
                const int64_t k = n * K + order[2 * b + h];
                v |= uint8_t(((in[k / 2] >> (4 * (k % 2))) & 0xf) << (4 * h));
            }
            out[n * row + b] = v;
        } else {
            out[n * row + b] = in[n * K + order[b]];
        }
    }
}

constexpr int k_tile = 64, k_kstep = 32, k_pad = 8;

// One 64 x 64 tile of y per block of 4 warps (2 x 2, each 32 x 32 = 2 x 2 fragments). Tiles past the edges
// are zero-filled in shared memory, so any T, N and K work.
template <typename H>
__global__ void gemm_tc_kernel(float * y, const H * xb, const H * w, int64_t T, int64_t N, int64_t K) {
    using namespace nvcuda;
    __shared__ __align__(32) H  as[k_tile][k_kstep + k_pad];
    __shared__ __align__(32) H  bs[k_tile][k_kstep + k_pad];
    __shared__ __align__(32) float cs[k_tile][k_tile + 4];
    const int64_t t0 = int64_t(blockIdx.y) * k_tile, n0 = int64_t(blockIdx.x) * k_tile;
    const int     warp = threadIdx.x / k_warp, wr = warp / 2, wc = warp % 2;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    const H zero = to_half_type<H>(0.0f);
    for (int64_t k0 = 0; k0 < K; k0 += k_kstep) {
        for (int e = threadIdx.x; e < k_tile * k_kstep; e += blockDim.x) {
            const int r = e / k_kstep, c = e % k_kstep;
            const int64_t k = k0 + c;
            as[r][c] = (t0 + r < T && k < K) ? xb[(t0 + r) * K + k] : zero;
            bs[r][c] = (n0 + r < N && k < K) ? w[(n0 + r) * K + k] : zero;
        }
        __syncthreads();
        for (int kk = 0; kk < k_kstep; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, H, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, H, wmma::col_major> b[2];
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &as[wr * 32 + i * 16][kk], k_kstep + k_pad);
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &bs[wc * 32 + j * 16][kk], k_kstep + k_pad);
            for (int i = 0; i < 2; ++i)
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(&cs[wr * 32 + i * 16][wc * 32 + j * 16], acc[i][j], k_tile + 4, wmma::mem_row_major);
    __syncthreads();
    for (int e = threadIdx.x; e < k_tile * k_tile; e += blockDim.x) {
        const int r = e / k_tile, c = e % k_tile;
        if (t0 + r < T && n0 + c < N) y[(t0 + r) * N + n0 + c] = cs[r][c];
    }
}

template <typename H>
void round_activations(cudaStream_t s, H * xb, const float * x, int64_t T, const wdesc & w) {
    const int64_t n = T * w.cols;
    round_kernel<H><<<unsigned(std::min<int64_t>(ceil_div(n, 256), 65535)), 256, 0, s>>>(xb, x, n, w.order, w.cols);
    MINICPM_CUDA_LAUNCHED("matmul: round activations");
}

template <typename H>
void gemm_tc(cudaStream_t s, float * y, const float * x, const wdesc & w, int64_t T, void * xb) {
    round_activations<H>(s, (H *) xb, x, T, w);
    const dim3 grid(unsigned(ceil_div(w.rows, k_tile)), unsigned(ceil_div(T, k_tile)));
    gemm_tc_kernel<H><<<grid, 4 * k_warp, 0, s>>>(y, (const H *) xb, (const H *) w.data, T, w.rows, w.cols);
    MINICPM_CUDA_LAUNCHED("matmul: tensor-core gemm");
}

size_t data_bytes(const wdesc & w) { return size_t(w.type == MINICPM_DTYPE_Q4 ? w.rows * w.cols / 2 : w.rows * w.cols); }

}  // namespace

bool matmul_uses_tensor_cores(const wdesc & w, int64_t T) {
    return T > k_gemv_rows && (w.type == MINICPM_DTYPE_BF16 || w.type == MINICPM_DTYPE_F16 || qgemm_supported(w));
}

size_t matmul_scratch_bytes(const wdesc & w, int64_t T) {
    if (matmul_uses_tensor_cores(w, T)) return size_t(T * w.cols) * 2;
    return w.order ? size_t(std::min<int64_t>(T, k_gemv_rows) * w.cols) * sizeof(float) : 0;
}

bool reorder_supported(const wdesc & w) {
    if ((w.type != MINICPM_DTYPE_Q8 && w.type != MINICPM_DTYPE_Q4) || w.perm == nullptr) return false;
    wdesc r = w;
    r.perm = nullptr;
    r.data = nullptr;  // the copy: aligned
    return qgemm_supported(r) && packed_gemv(r);
}

size_t reordered_bytes(const wdesc & w) { return (data_bytes(w) + 15) / 16 * 16 + size_t(w.cols) * sizeof(int32_t); }

wdesc reordered_desc(const wdesc & w, const void * copy) {
    wdesc r = w;
    r.data = copy;
    r.perm = nullptr;
    r.order = (const int32_t *) ((const uint8_t *) copy + (data_bytes(w) + 15) / 16 * 16);
    return r;
}

void launch_reorder_columns(cudaStream_t s, void * copy, const wdesc & w) {
    const wdesc r = reordered_desc(w, copy);
    if (w.type == MINICPM_DTYPE_Q4) {
        reorder_kernel<true><<<unsigned(w.rows), 256, 0, s>>>((uint8_t *) copy, (const uint8_t *) w.data, r.order, w.cols);
    } else {
        reorder_kernel<false><<<unsigned(w.rows), 256, 0, s>>>((uint8_t *) copy, (const uint8_t *) w.data, r.order, w.cols);
    }
    MINICPM_CUDA_LAUNCHED("matmul: reorder act-order columns");
}

void launch_matmul(cudaStream_t s, float * y, const float * x, const wdesc & w, int64_t T, void * xb, int32_t splits,
                   float * partials) {
    if (T <= 0) return;
    if (matmul_uses_tensor_cores(w, T)) {
        if (qgemm_supported(w)) {
            round_activations<__nv_bfloat16>(s, (__nv_bfloat16 *) xb, x, T, w);
            launch_qgemm(s, y, (const __nv_bfloat16 *) xb, w, T, splits, partials);
        } else if (w.type == MINICPM_DTYPE_BF16) {
            gemm_tc<__nv_bfloat16>(s, y, x, w, T, xb);
        } else {
            gemm_tc<__half>(s, y, x, w, T, xb);
        }
        return;
    }
    const unsigned blocks = unsigned(ceil_div(w.rows, k_gemv_warps));
    const bool packed = packed_gemv(w);
    // A reordered copy has no g_idx left to read: only the packed GEMV over gathered activations is right.
    if (w.order && !packed) fail(MINICPM_STATUS_INTERNAL, "matmul: a reordered weight outside the packed GEMV");
    for (int64_t t0 = 0; t0 < T; t0 += k_gemv_rows) {
        const int64_t rows = std::min<int64_t>(k_gemv_rows, T - t0);
        const float * xs = x + t0 * w.cols;
        float *       ys = y + t0 * w.rows;
        if (w.order) {  // this chunk's rows gathered into the copy's column order
            round_activations<float>(s, (float *) xb, xs, rows, w);
            xs = (const float *) xb;
        }
        if (packed && w.type == MINICPM_DTYPE_Q4) {
            gemv_packed_kernel<k_gemv_rows, true><<<blocks, k_gemv_warps * k_warp, 0, s>>>(ys, xs, w, rows, 0);
        } else if (packed) {
            gemv_packed_kernel<k_gemv_rows, false><<<blocks, k_gemv_warps * k_warp, 0, s>>>(ys, xs, w, rows, 0);
        } else {
            gemv_kernel<k_gemv_rows><<<blocks, k_gemv_warps * k_warp, 0, s>>>(ys, xs, w, rows, 0);
        }
        MINICPM_CUDA_LAUNCHED("matmul: gemv");
    }
}

}  // namespace cuda
}  // namespace minicpm
