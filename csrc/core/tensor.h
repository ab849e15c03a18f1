// Descriptor of a weight tensor as the backend holds it: storage format, shape, and where its parts live.
#pragma once

#include "core/dtype.h"

#include <cstdint>

namespace minicpm {

struct buffer;

// A 2-D (or 1-D, rows == 1) row-major weight: rows = HF shape[0] (out features), cols = shape[1] (in features).
//   f32 / f16 / bf16: data holds rows x cols elements.
//   q8: data holds rows x cols int8 values; w[n][k] = q[n][k] * scale[n][g(k)].
//   q4: data holds rows x cols 4-bit values, two per byte, low nibble first (element k of row n is nibble
//       n * cols + k); w[n][k] = (q[n][k] - zero[n][g(k)]) * scale[n][g(k)], zero = 8 when zeros is null.
// g(k) = k / group_size, or perm[k] when a permutation is given (GPTQ's g_idx with desc_act). Scales are
// [rows][n_groups] in scale_type (f32 or f16); zeros are [rows][n_groups] uint8.
// Every pointer is in the address space of the backend that owns `buf` (host memory on the CPU backend).
struct tensor_desc {
    dtype          type = dtype::f32;
    int64_t        rows = 0;
    int64_t        cols = 0;
    const void *   data = nullptr;
    const buffer * buf = nullptr;  // the backend buffer holding data (and the parts below)
    // Quantized formats only.
    int32_t        group_size = 0;
    dtype          scale_type = dtype::f32;
    const void *   scales = nullptr;
    const uint8_t * zeros = nullptr;
    const int32_t * perm = nullptr;
    // A copy the backend prepared for its kernels, or nullptr; never saved. CPU: interleaved for the x86
    // integer kernels (cpu/qpack.h); CUDA: act-order columns sorted by group (cuda/ops.cuh). With it set, data
    // may be nullptr: the stored rows were dropped (on the CPU they are read back from it, qunpack_rows).
    const void *   packed = nullptr;

    bool    quantized() const { return dtype_is_quantized(type); }
    int64_t n_groups() const;  // groups per row (1 for a plain type)
    size_t  data_bytes() const;  // bytes of data alone
    size_t  bytes() const;       // data + scales + zeros + perm
    // Start of row r of a plain-type tensor (f32 / f16 / bf16).
    const uint8_t * row(int64_t r) const { return (const uint8_t *) data + size_t(r * cols) * dtype_size(type); }
};

}  // namespace minicpm
