// Quantized matmul (q8 / q4 weights) on the CPU: integer dot products of the weights with activations quantized
// per row to int8 in blocks of 32 (one f32 scale per block), then scaled in f32.
//
//   y[t,n] = sum_g sw[n,g] * ( sum_{b in g} sx[t,b] * idot_b(u[n], qx[t]) - c[n,g] * sum_{b in g} sx[t,b] * sum(qx[t,b]) )
//
// where u is the weight in an unsigned "u8 form" (q8: q + 128; q4: the nibble 0..15) and c the matching offset
// (q8: 128; q4: the zero point, 8 when symmetric), so that u8 x s8 dot-product instructions (vpdpbusd) apply.
// The integer dot products are exact in every variant; variants differ only in the order of the f32 sums.
//
// Layouts (K a multiple of 64, group 32, a multiple of 64, or one group per row):
//   u8 weights per row: q8 in natural k order; q4 per 64-column chunk [32 even columns | 32 odd columns], the
//   order the nibbles unpack in. Activations are permuted the same way per weight format.
//   lane scales: one f32 per 4 consecutive u8 positions (a 32-bit lane): the block scale of those 4 columns.
//   group sums: per row t and group g, sum_{b in g} sx[t,b] * sum(qx[t,b]).
//   group 32 (gsteps = 0): each 64-column step holds groups 2s and 2s+1; the 16 lanes of a step belong to
//   group 2s+1 where bit l of 0xff00 (q8) or 0xf0f0 (q4) is set, else to group 2s.
// Kernels use no std:: templates or inline code shared with baseline files (see ops-fast.h).
#pragma once

#include "core/backend.h"
#include "core/threadpool.h"
#include "cpu/qpack.h"

#include <cstdint>

namespace minicpm {

struct cpu_kernel_table;

// y[t, n0 + r] for t < T, r < nr. xq [T][K] int8, xls [T][K/4], xgs [T][G]; w: the stored rows n0 .. n0 + nr
// (q8: int8, q4: packed nibbles), turned into the u8 form in registers; ws, wc [nr][G]: the weight scale and
// scale * offset c. gsteps = group / 64 (0: group 32). ldy = row stride of y.
typedef void (*qdot_fn)(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                        int64_t K, const uint8_t * w, bool q4, const float * ws, const float * wc, int64_t nr,
                        int64_t n0, int64_t G, int64_t gsteps);

// The batched path of a variant (AMX-INT8), used for T >= min_rows when K and the group are multiples of 32.
// Activations are quantized per row in blocks of 32 exactly as for the dot path (same int8 values), laid out
// as VNNI tiles: per 16-token block tb and 32-column block kb, 512 bytes at xa + (tb * nkb + kb) * 512, 8 rows
// of column quads x 16 tokens x 4 int8 (q4 columns ordered per 32-column block [16 even | 16 odd]); the 16
// tokens' scales at sx + (tb * nkb + kb) * 16.
struct qgemm_kernels {
    // Rows [t0, t1) of x[T,K] into xa / sx; rows from T up to the next multiple of 16 become zero.
    void (*pack_x)(int8_t * xa, float * sx, const float * x, int64_t T, int64_t K, bool q4, int64_t t0,
                   int64_t t1);
    // y[t, n0 + r] for t < T, r < nr (n0 a multiple of 32). w: the whole stored tensor (q8 int8, q4 nibbles);
    // ws [nr][G]: f32 weight scales of rows n0 ..; zeros [N][G] or nullptr (zero point 8); scratch:
    // qgemm_scratch_bytes(K) bytes.
    void (*rows)(float * y, int64_t ldy, const int8_t * xa, const float * sx, int64_t T, int64_t K,
                 const uint8_t * w, bool q4, const float * ws, const uint8_t * zeros, int64_t G, int64_t group,
                 int64_t N, int64_t n0, int64_t nr, int8_t * scratch);
    int64_t min_rows;
};
// 32 unpacked weight rows (row stride K rounded up to 64, plus 64) + their scales per 32-column block.
inline int64_t qgemm_scratch_bytes(int64_t K) { return 32 * ((K + 63) / 64 * 64 + 64) + 4 * (K + 31) / 32 * 32; }

struct qmatmul_variant {
    const char *          name;      // "amx-int8", "avx512-vnni", "avx-vnni", "neon-i8mm", "neon-dotprod", "neon", "portable"
    const char *          features;  // CPU features used
    qdot_fn               dot;
    const qgemm_kernels * gemm = nullptr;  // nullptr: the dot kernel at every T
    const qpacked_kernels * packed = nullptr;  // the kernels over w.packed (qpack.h); nullptr: stored rows only
};

// The variants this CPU runs, best first (tests compare each with the plain op).
int qmatmul_variants(const qmatmul_variant ** out, int cap);
// The variant used with a fast kernel family: the best one the family's instruction set allows.
const qmatmul_variant & qmatmul_for(const cpu_kernel_table & kt);

// True when w runs through the integer kernels (q8 / q4, K a multiple of 64, group 32 or a multiple of 64,
// no g_idx permutation).
bool qmatmul_supported(const tensor_desc & w);
// True when this CPU runs a variant with a packed kernel: worth preparing w.packed for.
bool qmatmul_packs();
// y[T,N] = x[T,K] . W^T with variant v. w must be qmatmul_supported. With w.packed set, v's packed kernels
// run every T and w.data is not read.
void qmatmul(const qmatmul_variant & v, thread_pool & tp, float * y, const float * x, const tensor_desc & w,
             int64_t T);

void qdot_portable(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                   int64_t K, const uint8_t * w, bool q4, const float * ws, const float * wc, int64_t nr, int64_t n0,
                   int64_t G, int64_t gsteps);
#if defined(MINICPM_X86)
// The AMX-INT8 tile shapes both AMX kernels use: tiles 0-3 C (16 x 16 s32), 4-5 A (16 rows x 32 int8), 6-7 B
// (8 rows x 64 bytes: 8 column quads x 16 x 4 int8).
void qamx_load_config();
void qgemm_pack_x_amx(int8_t * xa, float * sx, const float * x, int64_t T, int64_t K, bool q4, int64_t t0,
                      int64_t t1);
void qgemm_rows_amx(float * y, int64_t ldy, const int8_t * xa, const float * sx, int64_t T, int64_t K,
                    const uint8_t * w, bool q4, const float * ws, const uint8_t * zeros, int64_t G, int64_t group,
                    int64_t N, int64_t n0, int64_t nr, int8_t * scratch);
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
