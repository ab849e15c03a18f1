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
    // Kt[hd][64] + V[64][hd] + O[n_q][hd] + m[n_q] + l[n_q] + s[64]
    return 2 * 64 * int64_t(hd) + int64_t(n_q) * (hd + 2) + 64;
}

// The kernels one fast table runs with. dispatch.cpp picks the best for this CPU; tests run every variant.
struct cpu_kernel_table {
    const char *      name;
    const char *      features;  // space-separated CPU features this variant uses
    matmul_rows_fn    matmul_rows;
    attention_task_fn attention_task;
    bool              amx_bf16;  // bf16 weights with T >= k_amx_min_tokens go to the AMX kernel
};

constexpr int64_t k_amx_min_tokens = 5;  // below this the exact FMA path is as fast (memory-bound)

const cpu_kernel_table & cpu_kernels();                   // the best variant, chosen once
int                      cpu_kernel_variants(const cpu_kernel_table ** out, int cap);  // all runnable here
const cpu_kernel_table * cpu_kernel_by_name(const char * name);  // nullptr when not runnable here

// The fast ops (semantics in backend.h), run with a kernel table on a thread pool.
void fast_matmul(const cpu_kernel_table & kt, thread_pool & tp, float * y, const float * x, const tensor_desc & w,
                 int64_t T);
void fast_attention(const cpu_kernel_table & kt, thread_pool & tp, float * out, const float * q, const kv_layer & kv,
                    const kv_segment * segs, int32_t n_segs, int32_t n_head, float scale);
void fast_rms_norm(thread_pool & tp, float * y, const float * x, const tensor_desc & g, int64_t T, float eps);
void fast_embed(thread_pool & tp, float * out, const int32_t * tokens, const tensor_desc & e, int64_t T, float scale);
void fast_rope(thread_pool & tp, float * x, const int32_t * pos, const float * cos_sin, int64_t T, int32_t n_heads,
               int32_t hd);
void fast_kv_store(thread_pool & tp, const kv_layer & kv, const float * k, const float * v, const kv_segment * segs,
                   int32_t n_segs);
void fast_silu_mul(thread_pool & tp, float * out, const float * gate, const float * up, int64_t n);
void fast_add_scaled(thread_pool & tp, float * x, const float * a, float scale, int64_t n);
void fast_div_scalar(thread_pool & tp, float * x, float d, int64_t n);
void fast_get_rows(thread_pool & tp, float * dst, const float * src, const int32_t * rows, int64_t R, int64_t H);

void matmul_rows_portable(float * y, int64_t ldy, const float * x, int64_t T, const void * w, dtype wt, int64_t K,
                          int64_t n0, int64_t n1);
void attention_task_portable(float * out, const float * q, const kv_layer & kv, const kv_segment & sg, int32_t r0,
                             int32_t r1, int32_t n_head, int32_t hk, int32_t group, float scale, float * scratch);

#if defined(MINICPM_X86)
void matmul_rows_avx2(float * y, int64_t ldy, const float * x, int64_t T, const void * w, dtype wt, int64_t K,
                      int64_t n0, int64_t n1);
void attention_task_avx2(float * out, const float * q, const kv_layer & kv, const kv_segment & sg, int32_t r0,
                         int32_t r1, int32_t n_head, int32_t hk, int32_t group, float scale, float * scratch);
void matmul_rows_avx512(float * y, int64_t ldy, const float * x, int64_t T, const void * w, dtype wt, int64_t K,
                        int64_t n0, int64_t n1);
void attention_task_avx512(float * out, const float * q, const kv_layer & kv, const kv_segment & sg, int32_t r0,
                           int32_t r1, int32_t n_head, int32_t hk, int32_t group, float scale, float * scratch);

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

}  // namespace minicpm
