// Shared CUDA helpers: status-returning error checks (never exit), element loads from every stored format,
// launch shapes. Included by the .cu files of the CUDA backend only.
#pragma once

#include "core/backend.h"
#include "core/status.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace minicpm {
namespace cuda {

// A CUDA error becomes a minicpm::error (status + message) that the API boundary turns into a status code.
inline void check(cudaError_t e, const char * what) {
    if (e == cudaSuccess) return;
    const int32_t status = e == cudaErrorMemoryAllocation ? MINICPM_STATUS_OUT_OF_MEMORY : MINICPM_STATUS_INTERNAL;
    fail(status, std::string("cuda: ") + what + ": " + cudaGetErrorString(e));
}
#define MINICPM_CUDA_CHECK(expr) ::minicpm::cuda::check((expr), #expr)
#define MINICPM_CUDA_LAUNCHED(what) ::minicpm::cuda::check(cudaGetLastError(), what)

constexpr int k_warp = 32;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Element i of a plain-type array (f32, f16, bf16) as f32.
__device__ __forceinline__ float load_plain(const void * p, int32_t type, int64_t i) {
    switch (type) {
        case MINICPM_DTYPE_F16: return __half2float(((const __half *) p)[i]);
        case MINICPM_DTYPE_BF16: return __bfloat162float(((const __nv_bfloat16 *) p)[i]);
        default: return ((const float *) p)[i];
    }
}

__device__ __forceinline__ void store_plain(void * p, int32_t type, int64_t i, float v) {
    switch (type) {
        case MINICPM_DTYPE_F16: ((__half *) p)[i] = __float2half_rn(v); break;
        case MINICPM_DTYPE_BF16: ((__nv_bfloat16 *) p)[i] = __float2bfloat16_rn(v); break;
        default: ((float *) p)[i] = v;
    }
}

// A weight descriptor as kernels read it (the fields of tensor_desc, by value).
struct wdesc {
    int32_t         type;
    int32_t         group_size;
    int32_t         scale_type;
    int64_t         rows, cols, n_groups;
    const void *    data;
    const void *    scales;
    const uint8_t * zeros;
    const int32_t * perm;
    const int32_t * order;  // a reordered copy's column order (reordered_desc), else nullptr
};

inline wdesc to_wdesc(const tensor_desc & t) {
    return {int32_t(t.type), t.group_size, int32_t(t.scale_type), t.rows, t.cols, t.n_groups(), t.data, t.scales,
            t.zeros, t.perm, nullptr};
}

// w[n][k] as f32, for every format (the definitions of core/tensor.h).
__device__ __forceinline__ float load_weight(const wdesc & w, int64_t n, int64_t k) {
    const int64_t i = n * w.cols + k;
    if (w.type != MINICPM_DTYPE_Q8 && w.type != MINICPM_DTYPE_Q4) return load_plain(w.data, w.type, i);
    const int64_t g = w.perm ? w.perm[k] : k / w.group_size;
    const float   s = load_plain(w.scales, w.scale_type, n * w.n_groups + g);
    if (w.type == MINICPM_DTYPE_Q8) return float(((const int8_t *) w.data)[i]) * s;
    const uint8_t b = ((const uint8_t *) w.data)[i / 2];
    const int32_t q = (i % 2 == 0) ? (b & 0xf) : (b >> 4);
    const int32_t z = w.zeros ? w.zeros[n * w.n_groups + g] : 8;
    return float(q - z) * s;
}

// One batch row as the KV ops see it: its segment's committed slots, its row index in the segment (-1: a row
// of no segment, which the ops skip), where its segment's block table starts in the flattened table, and which
// earlier rows it sees (causal or a mask).
struct row_info {
    int32_t  j;
    int32_t  n_past;
    int32_t  blocks_off;
    int32_t  causal;
    uint64_t mask;
};

}  // namespace cuda
}  // namespace minicpm
