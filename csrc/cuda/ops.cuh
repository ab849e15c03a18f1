// Kernel launchers of the CUDA backend (one family per .cu file, named like the CPU ops). Every pointer is a
// device address; every launch goes on `stream` and is checked.
#pragma once

#include "cuda/common.cuh"
#include "cuda/gemm-sm90.h"

namespace minicpm {
namespace cuda {

// elementwise.cu
void launch_embed(cudaStream_t s, float * out, const int32_t * tokens, const wdesc & e, int64_t T, float scale);
void launch_rms_norm(cudaStream_t s, float * y, const float * x, const wdesc & g, int64_t T, int64_t H, float eps);
void launch_rope(cudaStream_t s, float * x, const int32_t * pos, const float * cos_sin, int64_t T, int32_t nh,
                 int32_t hd);
void launch_silu_mul(cudaStream_t s, float * out, const float * gate, const float * up, int64_t n);
void launch_add_scaled(cudaStream_t s, float * x, const float * a, float scale, int64_t n);
void launch_div_scalar(cudaStream_t s, float * x, float d, int64_t n);
void launch_get_rows(cudaStream_t s, float * dst, const float * src, const int32_t * rows, int64_t R, int64_t H);

// matmul.cu: y[T,N] = x[T,K] . W[N,K]^T. xb is scratch of matmul_scratch_bytes (activations rounded to
// 16 bits for the tensor cores, or gathered into a reordered weight's column order for the GEMV); splits of K
// (plan_matmul_splits: the tensor-core GEMMs' plans) write their partials to `partials` (k_qsplit_floats).
bool    matmul_uses_tensor_cores(const wdesc & w, int64_t T);
size_t  matmul_scratch_bytes(const wdesc & w, int64_t T);
int32_t plan_matmul_splits(const wdesc & w, int64_t T, int32_t n_sms);
void    launch_matmul(cudaStream_t s, float * y, const float * x, const wdesc & w, int64_t T, void * xb, int32_t splits,
                      float * partials);
// GPTQ act-order (a g_idx permutation): a copy of the weight whose K columns are sorted by group, read like a
// group-ordered weight by the packed GEMV and the quantized GEMM, with the column order (order[j]: the
// original column at position j) after the rows. Scales and zero points are per group: they are not copied.
// reorder_supported: the copy would take both fast kernels. reordered_desc: the copy as the kernels read it.
bool   reorder_supported(const wdesc & w);
size_t reordered_bytes(const wdesc & w);
wdesc  reordered_desc(const wdesc & w, const void * copy);
// Writes the copy's rows from w's; its order (the copy's tail) must be in place.
void   launch_reorder_columns(cudaStream_t s, void * copy, const wdesc & w);

// qgemm.cu: the quantized tensor-core GEMM over activations already rounded to bf16 (xb, T x K). Supported:
// q8 / q4 without a column permutation, K a multiple of 64, groups a multiple of 32 (or one per row), rows
// 16-byte aligned. splits > 1 cuts K into that many spans (split-K) whose f32 partials, splits x T x N floats
// (at most k_qsplit_floats), are added in a fixed order: plan_qgemm_splits picks it for grids under one wave.
constexpr int64_t k_qsplit_floats = int64_t(2) << 20;  // the partials' scratch, one fixed size (8 MiB)
bool    qgemm_supported(const wdesc & w);
int32_t plan_qgemm_splits(const wdesc & w, int64_t T, int32_t n_sms);
void    launch_qgemm(cudaStream_t s, float * y, const __nv_bfloat16 * xb, const wdesc & w, int64_t T, int32_t splits,
                     float * partials);

// Both GEMMs' split-K: y[i] = the sum of `splits` partials of n floats each (partials[z n + i]), in split order.
void launch_split_reduce(cudaStream_t s, float * y, const float * partials, int64_t n, int32_t splits);

// gemm.cu: the bf16 / f16 tensor-core GEMM over activations already rounded to the weight's type (xb, T x K,
// 16-byte aligned); row_scale (T floats, or nullptr) multiplies each output row. Supported: K a multiple of
// 8, rows 16-byte aligned. splits > 1 cuts K like the q-gemm (plan_gemm16_splits, partials of at most
// k_qsplit_floats).
bool    gemm16_supported(const wdesc & w);
int32_t plan_gemm16_splits(const wdesc & w, int64_t T, int32_t n_sms);
void    launch_gemm16(cudaStream_t s, float * y, const void * xb, const float * row_scale, const wdesc & w, int64_t T,
                      int32_t splits, float * partials);

#ifndef MINICPM_CUDA_SM90
#define MINICPM_CUDA_SM90 0
#endif
// gemm.cu's sm_90 path: the wgmma GEMM (sm90/gemm-wgmma.cu, built for sm_90a alone when nvcc has it:
// MINICPM_CUDA_SM90), 128 x 256 tiles; the same arguments as launch_gemm16, out the T x N slab of split 0 (the
// partials when splits > 1). gemm.cu calls it only on compute capability 9.0 after its start-up probe passed.
void launch_gemm16_wgmma(cudaStream_t s, float * out, const void * xb, const float * row_scale, const wdesc & w,
                         int64_t T, int32_t splits);
// Runs the probe once (backend start, before any capture): the wgmma GEMM against the mma.sync one on small
// fixed problems. Returns the text for the backend's features ("" off sm_90).
std::string gemm16_sm90_start();

// attention.cu: rows described by rows[T]; blocks is the flattened block table.
void launch_kv_store(cudaStream_t s, void * k_pool, void * v_pool, int32_t kv_type, int32_t nkv, int32_t hd,
                     const float * k, const float * v, const row_info * rows, const int32_t * blocks, int64_t T);
void launch_attention(cudaStream_t s, float * out, const float * q, const void * k_pool, const void * v_pool,
                      int32_t kv_type, int32_t nh, int32_t nkv, int32_t hd, float scale, const row_info * rows,
                      const int32_t * blocks, int64_t T);
// Split-K decode attention: n_parts == 0 when the batch should take launch_attention (many rows, a short
// context, or a head group too large for the kernel). max_slots: the longest row context in the batch.
struct split_plan {
    int32_t n_parts = 0, part_len = 0;
};
split_plan plan_split_attention(int32_t nh, int32_t nkv, int32_t hd, int64_t T, int32_t max_slots, int32_t n_sms);
size_t     split_scratch_floats(const split_plan & p, int32_t nh, int32_t hd, int64_t T);
void       launch_attention_split(cudaStream_t s, float * out, const float * q, const void * k_pool,
                                  const void * v_pool, int32_t kv_type, int32_t nh, int32_t nkv, int32_t hd, float scale,
                                  const row_info * rows, const int32_t * blocks, int64_t T, const split_plan & p,
                                  float * scratch);

// sparse.cu (InfLLM v2). A segment's compression jobs: C1 kernels j0[0] .. j0[0] + n[0] - 1, C2 likewise.
struct sparse_seg {
    int32_t j0[2], n[2], blocks_off;
};
// A row of sparse attention: its batch row, its slot p in the sequence it attends (cpu/ops-sparse.h,
// sparse_row_view), where its segment's block table starts. Slots below n_fixed are the pool slots of the same
// index, with cached kernels; slots n_fixed .. p (a tree row's ancestors, then itself) are the pool slots
// tails[tail_off ..], and the kernels that end among them are the row's own, at tail-kernel row tk_off. An
// unmasked row has n_fixed = p + 1: no tail.
struct sparse_row {
    int32_t row, p, blocks_off, n_fixed, tail_off, tk_off;
};
// The tree rows' tail slots, and their tail kernels k[tk_off][nkv][t1_cap + t2_cap][hd]: C1 ones, then C2 ones
// (LSE over C2 only); kernel j of a level sits at j - count(n_fixed).
struct sparse_tails {
    const int32_t * slots;
    float *         k;
    int32_t         t1_cap, t2_cap;
};
void   launch_kv_compress(cudaStream_t s, const kv_compressed & cc, const void * k_pool, int32_t kv_type, int32_t nkv,
                          int32_t hd, const sparse_seg * segs, int32_t n_segs, int32_t max_jobs, const int32_t * blocks);
// Computes the tail kernels of rows[T] (rows without a tail do nothing), in kv_compress's arithmetic.
void   launch_sparse_tail_kernels(cudaStream_t s, const sparse_tails & tl, const kv_compressed & cc,
                                  const void * k_pool, int32_t kv_type, int32_t nkv, int32_t hd,
                                  const sparse_row * rows, int64_t T, const int32_t * blocks);
// Stage-1 scratch for T rows: s1 [T][nh][n1_cap], s2 [T][nh][n2_cap] (LSE over C2 only), lse [T][nh].
struct sparse_scratch {
    float * s1, * s2, * lse;
    int32_t n1_cap, n2_cap;
};
// The most dynamic shared memory one selection kernel needs (the caller checks it against the device).
size_t select_shared_bytes(int32_t G, int32_t hd, int32_t nb_cap);
// Writes sel[T][nkv][sel_words] (blocks 0 .. 64 sel_words - 1).
void launch_sparse_select(cudaStream_t s, uint64_t * sel, int32_t sel_words, const sparse_scratch & w,
                          const kv_compressed & cc, const sparse_tails & tl, const float * q, int32_t nh, int32_t nkv,
                          int32_t hd, float scale, const sparse_attn_params & sp, const sparse_row * rows, int64_t T,
                          const int32_t * blocks);
// Stage 2 over the selected blocks. n_parts (sparse_attention_parts: 1 for many rows) > 1 cuts each row's
// selection into parts; scratch then holds T x nh x n_parts x (hd + 2) floats. max_sel: the most blocks any
// row may select. tails: sparse_tails::slots.
int32_t sparse_attention_parts(int64_t T, int32_t max_sel);
void    launch_sparse_attention(cudaStream_t s, float * out, const float * q, const void * k_pool, const void * v_pool,
                                int32_t kv_type, int32_t nh, int32_t nkv, int32_t hd, float scale, const sparse_row * rows,
                                int64_t T, const int32_t * blocks, const int32_t * tails, const uint64_t * sel,
                                int32_t sel_words, int32_t n_parts, float * scratch);

// sample.cu: keys is scratch of R x V words; rows and adjust are device copies of the host tables.
void launch_sample(cudaStream_t s, sample_out * out, uint32_t * keys, const float * logits, int32_t V,
                   const sample_row * rows, int32_t R, const sample_adjust * adjust);

}  // namespace cuda
}  // namespace minicpm
