// CPM.cu's Marlin repack of GPTQ int4 (`*-marlin-cpmcu`, model_gptq.safetensors; ENGINE_REFERENCE section 5)
// undone into the engine's q4 layout (core/tensor.h). The generator doing it forward is src/checkpoint/marlin.ts.
#pragma once

#include "model/quantize.h"

namespace minicpm {

// qweight int32 [K/16, 2N]: the [K, N] 4-bit values (value = q - 8) cut into 16x16 tiles ([K/16, N*16]), every
// 1024-element chunk permuted by Marlin's fragment permutation with the 8-nibble interleave, 8 nibbles per word;
// scales f16 [G, N] permuted in chunks of 64 (G > 1) or 32 (G == 1, per channel). Needs K % 16 == 0,
// N % 64 == 0, K % G == 0. The result is symmetric q4 (zero point 8) with group K / G.
quantized_tensor marlin_to_q4(const int32_t * qweight, const uint16_t * scales, int64_t N, int64_t K, int64_t G,
                              const std::string & name);

// Rows [n0, n1) of a q4 tensor without a permutation (a slice of a fused qkv / gate_up projection).
quantized_tensor q4_rows(const quantized_tensor & q, int64_t n0, int64_t n1);

// [a | b]: two symmetric q4 tensors (host memory) of the same rows and group size, without permutations, side by side along
// the in features (an EAGLE head's fc from its fc1 / fc2 halves, which CPM.cu repacks separately).
quantized_tensor q4_side_by_side(const tensor_desc & a, const tensor_desc & b, const std::string & name);

}  // namespace minicpm
