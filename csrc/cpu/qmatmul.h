// Quantized matmul (q8 / q4 weights) on the CPU: integer dot products of the weights with activations quantized
// per row to int8 in blocks of 32 (one f32 scale per block), then scaled in f32.
//
//   y[t,n] = sum_g sw[n,g] * ( sum_{b in g} sx[t,b] * idot_b(u[n], qx[t]) - c[n,g] * sum_{b in g} sx[t,b] * sum(qx[t,b]) )
//
// where u is the weight in an unsigned "u8 form" (q8: q + 128; q4: the nibble 0..15) and c the matching offset
// (q8: 128; q4: the zero point, 8 when symmetric), so that u8 x s8 dot-product instructions (vpdpbusd) apply.
// The integer dot products are exact in every variant; variants differ only in the order of the f32 sums.
//
// Layouts (K a multiple of 64, group a multiple of 64 or one group per row):
//   u8 weights per row: q8 in natural k order; q4 per 64-column chunk [32 even columns | 32 odd columns], the
//   order the nibbles unpack in. Activations are permuted the same way per weight format.
//   lane scales: one f32 per 4 consecutive u8 positions (a 32-bit lane): the block scale of those 4 columns.
//   group sums: per row t and group g, sum_{b in g} sx[t,b] * sum(qx[t,b]).
// Kernels use no std:: templates or inline code shared with baseline files (see ops-fast.h).
#pragma once

#include "core/backend.h"
#include "core/threadpool.h"

#include <cstdint>

namespace minicpm {

struct cpu_kernel_table;

// y[t, n0 + r] for t < T, r < nr. xq [T][K] int8, xls [T][K/4], xgs [T][G]; w: the stored rows n0 .. n0 + nr
// (q8: int8, q4: packed nibbles), turned into the u8 form in registers; ws, wc [nr][G]: the weight scale and
// scale * offset c. gsteps = group / 64. ldy = row stride of y.
typedef void (*qdot_fn)(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                        int64_t K, const uint8_t * w, bool q4, const float * ws, const float * wc, int64_t nr,
                        int64_t n0, int64_t G, int64_t gsteps);

struct qmatmul_variant {
    const char * name;      // "avx512-vnni", "avx-vnni", "neon-i8mm", "neon-dotprod", "neon", "portable"
    const char * features;  // CPU features used
    qdot_fn      dot;
};

// The variants this CPU runs, best first (tests compare each with the plain op).
int qmatmul_variants(const qmatmul_variant ** out, int cap);
// The variant used with a fast kernel family: the best one the family's instruction set allows.
const qmatmul_variant & qmatmul_for(const cpu_kernel_table & kt);

// True when w runs through the integer kernels (q8 / q4, K and group multiples of 64, no g_idx permutation).
bool qmatmul_supported(const tensor_desc & w);
// y[T,N] = x[T,K] . W^T with variant v. w must be qmatmul_supported.
void qmatmul(const qmatmul_variant & v, thread_pool & tp, float * y, const float * x, const tensor_desc & w,
             int64_t T);

void qdot_portable(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                   int64_t K, const uint8_t * w, bool q4, const float * ws, const float * wc, int64_t nr, int64_t n0,
                   int64_t G, int64_t gsteps);
#if defined(MINICPM_X86)
void qdot_avx512vnni(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                     int64_t K, const uint8_t * w, bool q4, const float * ws, const float * wc, int64_t nr, int64_t n0,
                     int64_t G, int64_t gsteps);
void qdot_avxvnni(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                  int64_t K, const uint8_t * w, bool q4, const float * ws, const float * wc, int64_t nr, int64_t n0,
                  int64_t G, int64_t gsteps);
#endif
#if defined(__aarch64__)
// Base NEON (smull / sadalp), sdot (FEAT_DotProd) and smmla (FEAT_I8MM; its one-token, odd-row and odd-token
// parts run the sdot kernel).
void qdot_neon(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T, int64_t K,
               const uint8_t * w, bool q4, const float * ws, const float * wc, int64_t nr, int64_t n0, int64_t G,
               int64_t gsteps);
void qdot_neon_dotprod(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                       int64_t K, const uint8_t * w, bool q4, const float * ws, const float * wc, int64_t nr,
                       int64_t n0, int64_t G, int64_t gsteps);
void qdot_neon_i8mm(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                    int64_t K, const uint8_t * w, bool q4, const float * ws, const float * wc, int64_t nr, int64_t n0,
                    int64_t G, int64_t gsteps);
#endif

}  // namespace minicpm
