// Helpers shared by the CPU op files: element loads from any stored dtype, and the fast-op entry points the
// dispatcher (dispatch.cpp) chooses between.
#pragma once

#include "core/backend.h"
#include "core/dtype.h"

#include <cstdint>

namespace minicpm {

inline float load_f32(const void * p, dtype t, int64_t i) {
    switch (t) {
        case dtype::f32: return ((const float *) p)[i];
        case dtype::f16: return f16_to_f32(((const uint16_t *) p)[i]);
        case dtype::bf16: return bf16_to_f32(((const uint16_t *) p)[i]);
        default: return 0.0f;  // quantized formats are read whole rows at a time (dequantize_row)
    }
}

inline void store_f32(void * p, dtype t, int64_t i, float v) {
    switch (t) {
        case dtype::f32: ((float *) p)[i] = v; break;
        case dtype::f16: ((uint16_t *) p)[i] = f32_to_f16(v); break;
        case dtype::bf16: ((uint16_t *) p)[i] = f32_to_bf16(v); break;
        default: break;  // never a store target
    }
}

// Offset (in elements) of head h, slot `slot` of pool block `block` in a kv_layer's k or v array.
inline int64_t kv_offset(const kv_layer & kv, int32_t block, int32_t h, int32_t slot) {
    return ((int64_t(block) * kv.n_head_kv + h) * MINICPM_KV_BLOCK_SIZE + slot) * kv.head_dim;
}

}  // namespace minicpm
