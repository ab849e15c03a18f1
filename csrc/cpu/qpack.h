// The interleaved ("packed") copy of a quantized weight that the x86 integer kernels read (VNNI when decoding,
// AMX-INT8 tiles for batches): made once when the CPU backend prepares the model's weights; the stored tensor
// (what is saved, what the plain ops and NEON read) is left as it is.
//
// Panels of 16 rows, one after another (the last one zero-padded), each one sequential stream:
//   weights, per 32-column block b and 4-column quad i (q8: i < 8; q4: i < 4), 64 bytes = 16 rows x 4 u8 in
//   the u8 form of qmatmul.h (a vpdpbusd operand whose lane r is row r):
//     q8: byte (r, j) = q[r][32b + 4i + j] + 128
//     q4: byte (r, j) = u[r][32b + 4i + j] | u[r][32b + 16 + 4i + j] << 4 (nibble 0..15)
//   then the scales [G][16] in the stored scale type (f16 or f32; padding rows 0),
//   then, when the tensor has zero points, zeros [G][16] u8 (padding rows 0);
//   the panel is padded to 64 bytes.
// Activations pair with it in natural column order: int8 per 32-column block with one f32 scale per block.
#pragma once

#include "core/tensor.h"

#include <cstddef>
#include <cstdint>

namespace minicpm {

struct qpack_layout {
    int64_t N = 0, K = 0, G = 0, group = 0;  // group: columns per group (K for one group per row)
    bool    q4 = false, f16_scales = false, zeros = false;
    int64_t weight_bytes = 0;  // per panel, before the scales
    int64_t panel_bytes = 0;
    int64_t n_panels = 0;
};

qpack_layout qpack_layout_of(const tensor_desc & w);  // w must be qmatmul_supported
size_t       qpack_bytes(const tensor_desc & w);
// Writes the packed copy of w to out (qpack_bytes(w) bytes, 64-byte aligned).
void         qpack(const tensor_desc & w, uint8_t * out);

// Rows [r0, r0 + nr) of w's stored data (the tensor.h q8 / q4 row-major form, nr * K or nr * K / 2 bytes) read
// back from its packed copy w.packed: the packing is lossless, so these are the bytes it was made from. For
// paths that need the stored rows after the backend dropped them (w.data nullptr; see model::place_weights).
void qunpack_rows(const tensor_desc & w, int64_t r0, int64_t nr, uint8_t * out);

// Activation row x[K] for the packed kernels: int8 q[K] in natural order, rounded to nearest (ties to even)
// after scaling each 32-column block by 127 / max|x| (xs[K/32]: max|x| / 127), and per group g the sum over its
// blocks of xs * sum(q) (xg[G]). qpack_quantize is the definition; a kernel's own must give the same bits.
// One 32-column block: q = round_even(x * 127 / max|x|) (0 for an all-zero block), *scale = max|x| / 127;
// returns sum(q). The block quantizer of every integer path (this file's and qmatmul.h's).
int32_t quantize_block32(const float * x, int8_t * q, float * scale);
typedef void (*qpack_quantize_fn)(const float * x, int64_t K, int64_t group, int8_t * q, float * xs, float * xg);
void qpack_quantize(const float * x, int64_t K, int64_t group, int8_t * q, float * xs, float * xg);

// xq [T][K] regrouped as AMX A tiles for the batch kernels: [token tile][32-column block][16 tokens x 32], zero
// past T, with one more zero tile so that tiles can be read in pairs: qpack_tile_bytes(T, K) bytes.
// qpack_tile_x writes token tile i (tokens 16 i .. 16 i + 15); the caller zeroes the extra tile.
inline size_t qpack_tile_bytes(int64_t T, int64_t K) { return size_t(((T + 15) / 16 + 1) * K * 16); }
void         qpack_tile_x(const int8_t * xq, int64_t T, int64_t K, int64_t i, int8_t * xa);

// y[t, 16 p + r] for t < T, panels p in [p0, p1), rows below N; xq [T][K], xs [T][K/32], xg [T][G] as
// quantized above.
typedef void (*qpacked_fn)(float * y, int64_t ldy, const int8_t * xq, const float * xs, const float * xg, int64_t T,
                           const uint8_t * packed, const qpack_layout & L, int64_t p0, int64_t p1);

struct qpacked_kernels {
    qpack_quantize_fn quantize;
    qpacked_fn        rows;
    qpacked_fn        batch = nullptr;  // batches of at least batch_min_rows rows (q4: _q4); xq in A-tile order
    int64_t           batch_min_rows = 0, batch_min_rows_q4 = 0;
};

#if defined(MINICPM_X86)
void qpack_quantize_avx512(const float * x, int64_t K, int64_t group, int8_t * q, float * xs, float * xg);
void qpack_quantize_avx2(const float * x, int64_t K, int64_t group, int8_t * q, float * xs, float * xg);
void qpacked_avx512vnni(float * y, int64_t ldy, const int8_t * xq, const float * xs, const float * xg, int64_t T,
                        const uint8_t * packed, const qpack_layout & L, int64_t p0, int64_t p1);
// AMX-INT8 tiles (tdpbsud), 32 tokens x 2 panels at a time; xq in A-tile order (qpack_tile_x).
void qpacked_amxint8(float * y, int64_t ldy, const int8_t * xq, const float * xs, const float * xg, int64_t T,
                     const uint8_t * packed, const qpack_layout & L, int64_t p0, int64_t p1);
void qpacked_avxvnni(float * y, int64_t ldy, const int8_t * xq, const float * xs, const float * xg, int64_t T,
                     const uint8_t * packed, const qpack_layout & L, int64_t p0, int64_t p1);
#endif

}  // namespace minicpm
