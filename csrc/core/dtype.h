// Storage formats of weights and the KV cache, and exact conversions to and from f32. f32/f16/bf16 are plain
// element types; q8/q4 are block-quantized weight formats described by a tensor_desc (core/tensor.h).
#pragma once

#include "minicpm.h"

#include <cstdint>
#include <cstring>

namespace minicpm {

enum class dtype : int32_t {
    f32 = MINICPM_DTYPE_F32,
    f16 = MINICPM_DTYPE_F16,
    bf16 = MINICPM_DTYPE_BF16,
    q8 = MINICPM_DTYPE_Q8,
    q4 = MINICPM_DTYPE_Q4,
};

inline bool dtype_is_quantized(dtype t) { return t == dtype::q8 || t == dtype::q4; }
// Bytes of one element of a plain type (f32, f16, bf16); quantized formats are sized by tensor_desc::bytes().
inline size_t dtype_size(dtype t) { return t == dtype::f32 ? 4 : 2; }
const char * dtype_name(dtype t);

inline float bf16_to_f32(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

float    f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace minicpm
