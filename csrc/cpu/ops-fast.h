// Internal seam between the fast-op drivers (ops-fast.cpp, plain C++: threading, scratch buffers) and the
// per-instruction-set kernels (files ending -avx2.cpp / -avx512.cpp / -amx.cpp). Kernels take raw pointers and
// use no std:: templates, so no inline or template code compiled with wide-vector flags can leak into the
// baseline code through the linker's choice of one COMDAT copy.
#pragma once

#include "core/backend.h"
#include "core/threadpool.h"

#include <cstdint>

namespace minicpm {

// y[t, n] for t < T and n in [n0, n1): x[T,K] . W[n0:n1, K]^T. ldy = row stride of y (= W rows).
typedef void (*matmul_rows_fn)(float * y, int64_t ldy, const float * x, int64_t T, const void * w, dtype wt,
                               int64_t K, int64_t n0, int64_t n1);

// One attention task: query rows [r0, r1) of segment sg, the `group` query heads hk * group .. hk * group +
// group - 1 that share KV head hk. scratch holds attention_scratch_floats(rows * group, hd) floats.
typedef void (*attention_task_fn)(float * out, const float * q, const kv_layer & kv, const kv_segment & sg,
                                  int32_t r0, int32_t r1, int32_t n_head, int32_t hk, int32_t group, float scale,
                                  float * scratch);

inline int64_t attention_scratch_floats(int32_t n_q, int32_t hd) {
    // Kt[hd][64] + V[64][hd] + O[n_q][hd] + m[n_q] + l[n_q] + s[64]; the BF16 dot-product task also keeps
    // 4 x 64 scores, 4 x 32 weight pairs and the queries as bf16 (n_q * hd / 2).
    return 2 * 64 * int64_t(hd) + int64_t(n_q) * (hd + 2) + (int64_t(n_q) * hd + 1) / 2 + 4 * 64 + 4 * 32;
}

// BF16 dot-product kernels (vdpbf16ps, bfdot/bfmmla): activations are rounded to bf16 once per call into xb
// ([T][Kp] bf16, Kp = K rounded up to the table's bf16_k_block, zero past K), weights are used as stored.
// pack: rows [t0, t1) of x[T,K] into xb. rows: y[t, n] for t < T, n in [n0, n1) (ldy = row stride of y).
typedef void (*bf16_pack_x_fn)(uint16_t * xb, const float * x, int64_t K, int64_t Kp, int64_t t0, int64_t t1);
typedef void (*matmul_bf16_rows_fn)(float * y, int64_t ldy, const uint16_t * xb, int64_t Kp, int64_t T,
                                    const uint16_t * w, int64_t K, int64_t n0, int64_t n1);

// Elementwise kernels (elementwise-impl.h compiled per instruction set).
typedef void (*rms_norm_row_fn)(float * y, const float * x, const float * g, int64_t H, float eps);
typedef void (*silu_mul_fn)(float * out, const float * gate, const float * up, int64_t n);
typedef void (*add_scaled_fn)(float * x, const float * a, float scale, int64_t n);

// The kernels one fast table runs with (a "kernel family"). dispatch.cpp picks the best for this CPU; tests run
// every variant; MINICPM_KERNELS forces one by name ("exact": the best family whose every op is exact f32).
struct cpu_kernel_table {
    const char *        name;
    const char *        features;  // space-separated CPU features this variant uses
    matmul_rows_fn      matmul_rows;     // exact FMA path: any weight dtype, f32 activations
    attention_task_fn   attention_task;
    bool                attention_bf16;  // attention_task rounds q and p to bf16 where the KV cache is bf16
    bool                amx_bf16;        // bf16 weights with T >= k_amx_min_tokens go to the AMX kernel
    bf16_pack_x_fn      bf16_pack_x;     // nullptr: no bf16 dot-product path
    matmul_bf16_rows_fn matmul_bf16_rows;  // bf16 weights (below the AMX threshold where amx_bf16)
    int32_t             bf16_k_block;    // Kp granularity of xb for matmul_bf16_rows
    rms_norm_row_fn     rms_norm_row;
    silu_mul_fn         silu_mul;
    add_scaled_fn       add_scaled;
};

constexpr int64_t k_amx_min_tokens = 5;  // below this the bf16 dot-product (or FMA) path is as fast (memory-bound)

// Which matmul kernel a family runs for a weight dtype and batch size, and so which precision applies:
// fma = exact f32 products; dpbf16 and amx = activations rounded to bf16, exact products, f32 accumulation.
enum class matmul_path { fma, dpbf16, amx };
inline matmul_path select_matmul_path(const cpu_kernel_table & kt, dtype wt, int64_t T) {
    if (wt != dtype::bf16) return matmul_path::fma;
    if (kt.amx_bf16 && T >= k_amx_min_tokens) return matmul_path::amx;
    return kt.matmul_bf16_rows != nullptr ? matmul_path::dpbf16 : matmul_path::fma;
}
inline const char * matmul_path_name(matmul_path p) {
    return p == matmul_path::amx ? "amx" : p == matmul_path::dpbf16 ? "dpbf16" : "fma";
}
// Whether a family's attention runs BF16 dot products (q and p rounded to bf16, f32 accumulation) for this KV
// layout, or exact f32 (the task falls back for other KV dtypes and head dims that are not a multiple of 16).
inline bool attention_uses_bf16(const cpu_kernel_table & kt, dtype kv_type, int32_t hd) {
    return kt.attention_bf16 && kv_type == dtype::bf16 && hd % 16 == 0;
}
// True when every op of the family is exact f32 (only summation order differs from the reference).
inline bool cpu_kernels_exact(const cpu_kernel_table & kt) {
    return !kt.amx_bf16 && kt.matmul_bf16_rows == nullptr && !kt.attention_bf16;
}

const cpu_kernel_table & cpu_kernels();                   // the best variant, chosen once
int                      cpu_kernel_variants(const cpu_kernel_table ** out, int cap);  // all runnable here
const cpu_kernel_table * cpu_kernel_by_name(const char * name);  // nullptr when not runnable here
int cpu_kernel_compiled_names(const char ** out, int cap);  // every family this build has, best first

// The fast ops (semantics in backend.h), run with a kernel table on a thread pool.
void fast_matmul(const cpu_kernel_table & kt, thread_pool & tp, float * y, const float * x, const tensor_desc & w,
                 int64_t T);
void fast_attention(const cpu_kernel_table & kt, thread_pool & tp, float * out, const float * q, const kv_layer & kv,
                    const kv_segment * segs, int32_t n_segs, int32_t n_head, float scale);
void fast_rms_norm(const cpu_kernel_table & kt, thread_pool & tp, float * y, const float * x, const tensor_desc & g, int64_t T, float eps);
void fast_embed(thread_pool & tp, float * out, const int32_t * tokens, const tensor_desc & e, int64_t T, float scale);
void fast_rope(thread_pool & tp, float * x, const int32_t * pos, const float * cos_sin, int64_t T, int32_t n_heads,
               int32_t hd);
void fast_kv_store(thread_pool & tp, const kv_layer & kv, const float * k, const float * v, const kv_segment * segs,
                   int32_t n_segs);
void fast_silu_mul(const cpu_kernel_table & kt, thread_pool & tp, float * out, const float * gate, const float * up, int64_t n);
void fast_add_scaled(const cpu_kernel_table & kt, thread_pool & tp, float * x, const float * a, float scale, int64_t n);
void fast_div_scalar(thread_pool & tp, float * x, float d, int64_t n);
void fast_get_rows(thread_pool & tp, float * dst, const float * src, const int32_t * rows, int64_t R, int64_t H);

void matmul_rows_portable(float * y, int64_t ldy, const float * x, int64_t T, const void * w, dtype wt, int64_t K,
                          int64_t n0, int64_t n1);
void rms_norm_row_portable(float * y, const float * x, const float * g, int64_t H, float eps);
void silu_mul_portable(float * out, const float * gate, const float * up, int64_t n);
void add_scaled_portable(float * x, const float * a, float scale, int64_t n);
void attention_task_portable(float * out, const float * q, const kv_layer & kv, const kv_segment & sg, int32_t r0,
                             int32_t r1, int32_t n_head, int32_t hk, int32_t group, float scale, float * scratch);

#if defined(MINICPM_X86)
void rms_norm_row_avx2(float * y, const float * x, const float * g, int64_t H, float eps);
void silu_mul_avx2(float * out, const float * gate, const float * up, int64_t n);
void add_scaled_avx2(float * x, const float * a, float scale, int64_t n);
void rms_norm_row_avx512(float * y, const float * x, const float * g, int64_t H, float eps);
void silu_mul_avx512(float * out, const float * gate, const float * up, int64_t n);
void add_scaled_avx512(float * x, const float * a, float scale, int64_t n);
void matmul_rows_avx2(float * y, int64_t ldy, const float * x, int64_t T, const void * w, dtype wt, int64_t K,
                      int64_t n0, int64_t n1);
// bf16 weights on AVX2 (matmul-bf16-avx2.cpp), called by matmul_rows_avx2; exact products as above.
void matmul_rows_bf16_avx2(float * y, int64_t ldy, const float * x, int64_t T, const uint16_t * w, int64_t K,
                           int64_t n0, int64_t n1);
void attention_task_avx2(float * out, const float * q, const kv_layer & kv, const kv_segment & sg, int32_t r0,
                         int32_t r1, int32_t n_head, int32_t hk, int32_t group, float scale, float * scratch);
void matmul_rows_avx512(float * y, int64_t ldy, const float * x, int64_t T, const void * w, dtype wt, int64_t K,
                        int64_t n0, int64_t n1);
void attention_task_avx512(float * out, const float * q, const kv_layer & kv, const kv_segment & sg, int32_t r0,
                           int32_t r1, int32_t n_head, int32_t hk, int32_t group, float scale, float * scratch);
// attention_task_avx512 with BF16 dot products for bf16 KV caches (falls back to it otherwise).
void attention_task_dpbf16_avx512(float * out, const float * q, const kv_layer & kv, const kv_segment & sg,
                                  int32_t r0, int32_t r1, int32_t n_head, int32_t hk, int32_t group, float scale,
                                  float * scratch);
void bf16_pack_x_avx512(uint16_t * xb, const float * x, int64_t K, int64_t Kp, int64_t t0, int64_t t1);
void matmul_rows_dpbf16_avx512(float * y, int64_t ldy, const uint16_t * xb, int64_t Kp, int64_t T,
                               const uint16_t * w, int64_t K, int64_t n0, int64_t n1);

// AMX BF16: xb holds x converted by amx_pack_x (tokens padded to 32, K padded to 32; amx_pack_x fills the
// 16-token blocks of tokens [t0, t1), both multiples of 16). amx_matmul_rows computes rows [n0, n1)
// of y (n0 a multiple of 32, n1 - n0 <= k_amx_rows_per_task). scratch holds (n1 - n0 rounded up to 32) *
// amx_k_pad(K) bf16: the task's weight rows in tile order when they are reused across token pairs.
constexpr int64_t k_amx_rows_per_task = 256;
int64_t amx_k_pad(int64_t K);
int64_t amx_t_pad(int64_t T);
void    amx_pack_x(uint16_t * xb, const float * x, int64_t T, int64_t K, int64_t t0, int64_t t1);
void    amx_matmul_rows(float * y, int64_t ldy, const uint16_t * xb, int64_t T, const uint16_t * w, int64_t K,
                        int64_t N, int64_t n0, int64_t n1, uint16_t * scratch);
bool    amx_request_permission();  // once per thread that uses AMX; false when the OS refuses
#endif

#if defined(__aarch64__)
// The ARM64 extensions the kernels use, from the kernel's hwcaps (HWCAP_ASIMDDP, HWCAP2_BF16, HWCAP2_I8MM).
struct arm_features {
    bool dotprod = false, bf16 = false, i8mm = false;
};
arm_features arm_cpu_features();
// NEON (always present on ARM64): exact FMA matmul with bf16 widened by shift and f16 by fcvtl.
void matmul_rows_neon(float * y, int64_t ldy, const float * x, int64_t T, const void * w, dtype wt, int64_t K,
                      int64_t n0, int64_t n1);
// ARMv8.6 BF16 (bfdot for one token, bfmmla for token pairs), used where HWCAP2_BF16 says so.
void bf16_pack_x_neon(uint16_t * xb, const float * x, int64_t K, int64_t Kp, int64_t t0, int64_t t1);
void matmul_rows_bf16_neon(float * y, int64_t ldy, const uint16_t * xb, int64_t Kp, int64_t T, const uint16_t * w,
                           int64_t K, int64_t n0, int64_t n1);
#endif

}  // namespace minicpm
