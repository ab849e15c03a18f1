// The reference CPU ops: plain single-threaded loops with f32 accumulation, the specification every other op
// set is tested against (csrc/tests/test-ops.cpp). Semantics of each op: see backend.h.
#pragma once

#include "core/backend.h"

#include <cstdint>

namespace minicpm {

void ref_matmul(float * y, const float * x, const tensor_desc & w, int64_t T);
void ref_rms_norm(float * y, const float * x, const tensor_desc & g, int64_t T, float eps);
void ref_embed(float * out, const int32_t * tokens, const tensor_desc & e, int64_t T, float scale);
void ref_rope(float * x, const int32_t * pos, const float * cos_sin, int64_t T, int32_t n_heads, int32_t hd);
void ref_kv_store(const kv_layer & kv, const float * k, const float * v, const kv_segment * segs, int32_t n_segs);
void ref_attention(float * out, const float * q, const kv_layer & kv, const kv_segment * segs, int32_t n_segs,
                   int32_t n_head, float scale);
void ref_silu_mul(float * out, const float * gate, const float * up, int64_t n);
void ref_add_scaled(float * x, const float * a, float scale, int64_t n);
void ref_div_scalar(float * x, float d, int64_t n);
void ref_get_rows(float * dst, const float * src, const int32_t * rows, int64_t R, int64_t H);

// Row n of any weight format as f32 (cols floats): the definition of each storage format (core/tensor.h).
void dequantize_row(const tensor_desc & w, int64_t n, float * out);

}  // namespace minicpm
