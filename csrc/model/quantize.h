// Weight quantization on the host: round-to-nearest q8 / q4 of plain tensors (on-the-fly quantization at load)
// and the GPTQ (AutoGPTQ v1) int4 layout converted into the engine's q4 descriptor layout (core/tensor.h).
#pragma once

#include "core/tensor.h"

#include <cstdint>
#include <string>
#include <vector>

namespace minicpm {

// A quantized tensor in host memory, in the layout of core/tensor.h (scales are f16).
struct quantized_tensor {
    dtype                 type = dtype::q8;
    int64_t               rows = 0, cols = 0;
    int32_t               group_size = 0;
    std::vector<uint8_t>  data;    // q8: rows x cols int8; q4: rows x cols nibbles, low nibble first
    std::vector<uint16_t> scales;  // [rows][n_groups] f16
    std::vector<uint8_t>  zeros;   // [rows][n_groups] (q4 asymmetric), empty = symmetric (zero 8)
    std::vector<int32_t>  perm;    // [cols] group of each column (GPTQ g_idx with desc_act), empty = k / group

    int64_t n_groups() const { return (cols + group_size - 1) / group_size; }
    // A descriptor over this host memory (valid while *this lives).
    tensor_desc desc() const;
};

// Round to nearest, per row and group of `group` input features (a multiple of 32, or >= cols for one group
// per row):
//   q8: symmetric, scale = max|w| / 127 (rounded to f16), q = clamp(round(w / scale), -127, 127);
//   q4: asymmetric over [min(w, 0), max(w, 0)]: scale = (max - min) / 15 (f16), zero = clamp(round(-min /
//       scale), 0, 15), q = clamp(round(w / scale) + zero, 0, 15).
// src is a plain (f32 / f16 / bf16) tensor. Throws on a non-finite weight.
quantized_tensor quantize_rtn(const tensor_desc & src, dtype type, int32_t group, const std::string & name);

// A GPTQ int4 linear as published (AutoGPTQ v1 layout, out = N, in = K):
//   qweight int32 [K/8, N]: eight 4-bit values along K per word, lowest nibble = smallest k;
//   qzeros int32 [n_groups, N/8]: eight zero points along N per word, stored minus one in v1 (zero = z + 1),
//   as is in gptq_v2;
//   scales f16 [n_groups, N]; g_idx int32 [K] (may be null: k / group).
// Every value is validated (g_idx in range, zero points); the result is the engine's q4 with zeros (or no
// zeros when every zero point is 8), perm = g_idx unless g_idx == k / group.
quantized_tensor gptq_to_q4(const int32_t * qweight, const int32_t * qzeros, const uint16_t * scales,
                            const int32_t * g_idx, int64_t N, int64_t K, int32_t group, const std::string & name,
                            bool v2 = false);

}  // namespace minicpm
