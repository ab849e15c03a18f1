// y[T,N] = x[T,K] . W[N,K]^T on the GPU.
//   small batches (T <= 8, decode): one warp per output row streams the row once for all T activations
//     (16-byte loads, four in flight per lane, for f16/bf16 rows whose K is a multiple of 8 and that are
//     16-byte aligned); memory-bound by design;
//   larger batches with f16/bf16 weights: the tensor-core GEMM (gemm.cu), activations rounded once to the
//     weight's 16-bit type (the same class of rounding as the CPU's AMX path). f16 weights: a row whose
//     largest |x| would overflow f16 (65504; the CPU op keeps f32) is scaled by a power of two first and its
//     outputs scaled back (exact), so it keeps f16's relative precision against its largest value;
//   larger batches with q8 / q4 weights in group order: the quantized tensor-core GEMM (qgemm.cu) over
//     activations rounded once to bf16;
//   anything else (f32, K not a multiple of 8, unaligned rows, permuted q8 / q4 without a reordered copy at
//     large T): the warp-per-row kernel over chunks of 8 rows; q8 / q4 rows in group order are read packed,
//     16 bytes a load, four loads in flight a lane (gemv_packed_kernel).
// GPTQ act-order weights (g_idx) run as group-ordered ones from their reordered copy (reordered_desc): the
// activations are gathered into the copy's column order on their way into the scratch (rounded to bf16 for
// the GEMM, f32 for the GEMV), which is the only extra work.
#include "cuda/ops.cuh"

#include <algorithm>
#include <type_traits>

namespace minicpm {
namespace cuda {

namespace {

constexpr int k_gemv_rows = 8;     // T handled by one pass of the warp-per-row kernel
constexpr int k_gemv_warps = 4;    // warps (output rows) per thread block
// 16-byte weight loads a lane issues before it uses the first: one in flight per lane leaves an H200's HBM
// (4.8 TB/s) mostly idle. A lane still adds its loads in the order of the one-at-a-time loop (the same bits).
// Weights are read once per call: streaming loads (evict first), so the activations stay cached.
constexpr int k_gemv_unroll = 4;

// The chunks c0, c0 + 32, ... (up to k_gemv_unroll of them, below chunks) of a row, all issued before any is used.
__device__ __forceinline__ void load_chunks(uint4 (&raw)[k_gemv_unroll], const uint4 * row, int64_t c0, int64_t chunks) {
#pragma unroll
    for (int u = 0; u < k_gemv_unroll; ++u)
        if (c0 + u * k_warp < chunks) raw[u] = __ldcs(row + c0 + u * k_warp);
}

// Eight consecutive activations (p 32-byte aligned when vec).
__device__ __forceinline__ void load8(float (&v)[8], const float * p, bool vec) {
    if (vec) {
        const float4 lo = ((const float4 *) p)[0], hi = ((const float4 *) p)[1];
        v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
    } else {
        for (int e = 0; e < 8; ++e) v[e] = p[e];
    }
}

template <int TT>
__global__ void gemv_kernel(float * y, const float * x, wdesc w, int64_t T, int64_t t0) {
    const int64_t n = int64_t(blockIdx.x) * k_gemv_warps + threadIdx.x / k_warp;
    const int     lane = threadIdx.x % k_warp;
    if (n >= w.rows) return;
    const int64_t K = w.cols;
    float         acc[TT];
    for (int t = 0; t < TT; ++t) acc[t] = 0.0f;
    const bool vec = (w.type == MINICPM_DTYPE_BF16 || w.type == MINICPM_DTYPE_F16) && K % 8 == 0 &&
                     uintptr_t(w.data) % 16 == 0;
    if (vec) {
        const uint4 * row = (const uint4 *) ((const uint16_t *) w.data + n * K);
        const int64_t chunks = K / 8;
        const bool    xvec = uintptr_t(x) % 16 == 0;
        for (int64_t c0 = lane; c0 < chunks; c0 += k_warp * k_gemv_unroll) {
            uint4 raw[k_gemv_unroll];
            load_chunks(raw, row, c0, chunks);
#pragma unroll
            for (int u = 0; u < k_gemv_unroll; ++u) {
                const int64_t c = c0 + u * k_warp;
                if (c >= chunks) break;
                float            wf[8];
                const uint16_t * h = (const uint16_t *) &raw[u];
                for (int e = 0; e < 8; ++e) {
                    if (w.type == MINICPM_DTYPE_BF16) {
                        wf[e] = __uint_as_float(uint32_t(h[e]) << 16);
                    } else {
                        wf[e] = __half2float(__ushort_as_half(h[e]));
                    }
                }
                for (int t = 0; t < TT; ++t) {
                    if (t0 + t >= T) break;
                    float xr[8];
                    load8(xr, x + (t0 + t) * K + c * 8, xvec);
                    for (int e = 0; e < 8; ++e) acc[t] += wf[e] * xr[e];
                }
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
    const int64_t chunks = K / per;
    const bool    xvec = uintptr_t(x) % 16 == 0;
    for (int64_t c0 = lane; c0 < chunks; c0 += k_warp * k_gemv_unroll) {
        uint4 raw[k_gemv_unroll];
        load_chunks(raw, row, c0, chunks);
#pragma unroll
        for (int u = 0; u < k_gemv_unroll; ++u) {
            const int64_t c = c0 + u * k_warp;
            if (c >= chunks) break;
            const uint8_t * b = (const uint8_t *) &raw[u];
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
                float dot = 0.0f;
                for (int e0 = 0; e0 < per; e0 += 8) {
                    float xr[8];
                    load8(xr, x + (t0 + t) * K + k0 + e0, xvec);
                    for (int e = 0; e < 8; ++e) dot += wf[e0 + e] * xr[e];
                }
                acc[t] += s * dot;
            }
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
           w.group_size % 32 == 0 && w.cols % 32 == 0 && uintptr_t(w.data) % 16 == 0;  // 16-byte loads
}

// out[t][j] = x[t][order[j]] (order nullptr: x[t][j]) for rows of K, rounded to bf16 (H f32: copied).
template <typename H>
__global__ void round_kernel(H * out, const float * x, int64_t n, const int32_t * order, int64_t K) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const float v = order ? x[i - i % K + order[i % K]] : x[i];
        if constexpr (std::is_same<H, float>::value) {
            out[i] = v;
        } else {
            out[i] = __float2bfloat16_rn(v);
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

// Row t of x (K values) rounded to f16, scaled by 2^-p when its largest |x| is past f16's largest value (65504),
// p such that the largest scaled value is under 2^15; row_scale[t] = 2^p undoes it in the GEMM's epilogue. One
// block per row; a row of inf or NaN keeps scale 1 (its outputs are not finite either way).
__global__ void round_f16_rows_kernel(__half * out, float * row_scale, const float * x, int64_t K) {
    __shared__ float part[32];
    const float *    xr = x + int64_t(blockIdx.x) * K;
    float            m = 0.0f;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) m = fmaxf(m, fabsf(xr[k]));
    for (int o = k_warp / 2; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (threadIdx.x % k_warp == 0) part[threadIdx.x / k_warp] = m;
    __syncthreads();
    m = 0.0f;
    for (unsigned i = 0; i < blockDim.x / k_warp; ++i) m = fmaxf(m, part[i]);
    int p = 0;
    if (m > 65504.0f && isfinite(m)) {
        frexpf(m, &p);  // m = f 2^p, f in [0.5, 1)
        p -= 15;
    }
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
        out[int64_t(blockIdx.x) * K + k] = __float2half_rn(ldexpf(xr[k], -p));
    if (threadIdx.x == 0) row_scale[blockIdx.x] = ldexpf(1.0f, p);
}

// The f16 GEMM's row scales: after the rounded activations, 16-byte aligned.
float * f16_row_scales(void * xb, int64_t T, int64_t K) {
    return (float *) ((uint8_t *) xb + (size_t(T * K) * 2 + 15) / 16 * 16);
}

template <typename H>
void round_activations(cudaStream_t s, H * xb, const float * x, int64_t T, const wdesc & w) {
    const int64_t n = T * w.cols;
    round_kernel<H><<<unsigned(std::min<int64_t>(ceil_div(n, 256), 65535)), 256, 0, s>>>(xb, x, n, w.order, w.cols);
    MINICPM_CUDA_LAUNCHED("matmul: round activations");
}

size_t data_bytes(const wdesc & w) { return size_t(w.type == MINICPM_DTYPE_Q4 ? w.rows * w.cols / 2 : w.rows * w.cols); }

// TT: the rows a kernel is built for (1: batch-1 decode, in fewer registers, so more warps stream the weights).
template <int TT>
void launch_gemv(cudaStream_t s, float * y, const float * x, const wdesc & w, int64_t rows, bool packed) {
    const unsigned blocks = unsigned(ceil_div(w.rows, k_gemv_warps));
    if (packed && w.type == MINICPM_DTYPE_Q4) {
        gemv_packed_kernel<TT, true><<<blocks, k_gemv_warps * k_warp, 0, s>>>(y, x, w, rows, 0);
    } else if (packed) {
        gemv_packed_kernel<TT, false><<<blocks, k_gemv_warps * k_warp, 0, s>>>(y, x, w, rows, 0);
    } else {
        gemv_kernel<TT><<<blocks, k_gemv_warps * k_warp, 0, s>>>(y, x, w, rows, 0);
    }
    MINICPM_CUDA_LAUNCHED("matmul: gemv");
}

}  // namespace

bool matmul_uses_tensor_cores(const wdesc & w, int64_t T) {
    return T > k_gemv_rows && (gemm16_supported(w) || qgemm_supported(w));
}

int32_t plan_matmul_splits(const wdesc & w, int64_t T, int32_t n_sms) {
    if (!matmul_uses_tensor_cores(w, T)) return 1;
    return qgemm_supported(w) ? plan_qgemm_splits(w, T, n_sms) : plan_gemm16_splits(w, T, n_sms);
}

size_t matmul_scratch_bytes(const wdesc & w, int64_t T) {
    if (matmul_uses_tensor_cores(w, T) && w.type == MINICPM_DTYPE_F16)
        return (size_t(T * w.cols) * 2 + 15) / 16 * 16 + size_t(T) * sizeof(float);  // + row scales
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
            round_activations<__nv_bfloat16>(s, (__nv_bfloat16 *) xb, x, T, w);
            launch_gemm16(s, y, xb, nullptr, w, T, splits, partials);
        } else {
            float * row_scale = f16_row_scales(xb, T, w.cols);
            round_f16_rows_kernel<<<unsigned(T), 256, 0, s>>>((__half *) xb, row_scale, x, w.cols);
            MINICPM_CUDA_LAUNCHED("matmul: round activations to f16");
            launch_gemm16(s, y, xb, row_scale, w, T, splits, partials);
        }
        return;
    }
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
        if (rows == 1) {
            launch_gemv<1>(s, ys, xs, w, rows, packed);
        } else {
            launch_gemv<k_gemv_rows>(s, ys, xs, w, rows, packed);
        }
    }
}

}  // namespace cuda
}  // namespace minicpm
