// InfLLM v2 sparse attention on the CPU: the reference ops (ops-ref-sparse.cpp, the specification in plain
// loops) and the fast ops (sparse-attention.cpp: threads, 16-lane vectors). Semantics: core/backend.h
// (kv_compress, sparse_attention) and /work/shared/docs/INFLLM_V2.md.
//
// Stage-1 arithmetic is pinned down so that both op sets pick bitwise the same blocks (the fast path must
// select exactly what the reference selects, not merely nearly): in f32 with no fused multiply-add (these
// files build with -ffp-contract=off),
//   dot(q, c)  = ((q0 c0 + q1 c1) + q2 c2) + ...     in order of d
//   s_h[j]     = dot(q_h, C1[j]) * scale
//   lse_h      = m + log(sum_j sparse_exp(s_h[j] - m)), m = max_j s_h[j], the sum in order of j
//   S[j]       = sum_h sparse_exp(s_h[j] - lse_h), in order of h
// sparse_exp is the polynomial exp of cpu/fast-exp.h (about 2 ulp), which vectorizes to the same bits.
#pragma once

#include "core/backend.h"
#include "core/threadpool.h"
#include "cpu/ops-fast.h"

#include <cstdint>
#include <vector>

namespace minicpm {

// The sequence one row attends as plain decoding would hold it (ENGINE_REFERENCE.md §3.1 step 8). An unmasked
// row sees its segment's slots 0..p as they are. A tree row (segment mask) sees the n_past committed slots, then
// the rows its mask shows in row order, then itself: the sequence plain decoding has at slot p = n_past + (rows
// shown) after committing those rows. Steps 1-9 run on that sequence: selection, windows and the dense switch
// use that p, and its kernels that end past the committed slots (the "tail kernels") are computed per row from
// that sequence's keys, never stored (the caches hold committed slots only). They must be: a tail kernel
// changes the LSE over C1 (or C2) and thereby every stage-1 score, so reusing another row's kernels or leaving
// them out can change the selection even though the blocks the tail kernels pool into are all local ones.
struct sparse_row_view {
    int32_t              p = 0;        // the row's slot in its sequence
    int32_t              n_fixed = 0;  // slots [0, n_fixed) are pool slots of the same index, kernels cached
    std::vector<int32_t> tail;         // pool slots of the sequence's slots n_fixed .. p

    int32_t slot(int32_t t) const { return t < n_fixed ? t : tail[size_t(t - n_fixed)]; }
};
void sparse_row_view_of(sparse_row_view & v, const kv_segment & sg, int32_t r);
// The kernels of level g that end in the view's tail, j in [g.count(n_fixed), g.count(p + 1)), for KV head h,
// in the reference's arithmetic (ref_kv_compress): out[(j - g.count(n_fixed)) * hd + d]. Returns their count.
int32_t sparse_tail_kernels(std::vector<float> & out, const sparse_row_view & v, const sparse_kernel_geom & g,
                            const kv_layer & kv, const int32_t * blocks, int32_t h);

void ref_kv_compress(const kv_compressed & cc, const kv_layer & kv, const kv_segment * segs, const int32_t * from,
                     int32_t n_segs);
void ref_sparse_attention(float * out, const float * q, const kv_layer & kv, const kv_compressed & cc,
                          const kv_segment * segs, int32_t n_segs, int32_t n_head, float scale,
                          const sparse_attn_params & sp, uint64_t * selected, int32_t sel_words);

void fast_kv_compress(thread_pool & tp, const kv_compressed & cc, const kv_layer & kv, const kv_segment * segs,
                      const int32_t * from, int32_t n_segs);
void fast_sparse_attention(const cpu_kernel_table & kt, thread_pool & tp, float * out, const float * q, const kv_layer & kv,
                           const kv_compressed & cc, const kv_segment * segs, int32_t n_segs, int32_t n_head,
                           float scale, const sparse_attn_params & sp, uint64_t * selected, int32_t sel_words);

// Inner loops of the fast path, one set per instruction set (sparse-attention-impl.h):
//   scores:    s[j][16] = dot(qT lanes, c[j]) * scale for n contiguous kernels (qT is [hd][16], lane = head)
//   lse:       lse[16] per lane over s[n][16]
//   group_sum: S[j] (+)= sum over the first G lanes of exp(s[j][lane] - lse[lane])
//   load_block:  stage 2, one KV block of one KV head as f32 (K transposed)
//   block_heads: stage 2, online-softmax update of G heads of one row with the first n slots of a loaded block
struct sparse_kernel_table {
    void (*scores)(float * s, const float * qT, const float * c, int32_t n, int32_t hd, float scale);
    void (*lse)(float * lse, const float * s, int32_t n);
    void (*group_sum)(float * S, const float * s, const float * lse, int32_t n, int32_t G, bool accumulate);
    void (*load_block)(float * kt, float * vb, const kv_layer & kv, int32_t block, int32_t hk, int32_t n);
    void (*block_heads)(float * o, float * m, float * l, const float * q, int32_t G, int32_t hd, const float * kt,
                        const float * vb, int32_t n, float * sc);
};
const sparse_kernel_table & sparse_kernels_for(const char * family);  // by cpu_kernel_table::name
#if defined(MINICPM_X86)
const sparse_kernel_table & sparse_kernels_avx2();
const sparse_kernel_table & sparse_kernels_avx512();
#endif

// Shared checks of both op sets (head counts, tree size, a selection buffer too small): throw with a message.
void sparse_check_args(const kv_layer & kv, const kv_segment * segs, int32_t n_segs, int32_t n_head,
                       const sparse_attn_params & sp, const uint64_t * selected, int32_t sel_words);

}  // namespace minicpm
