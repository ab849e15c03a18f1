// AVX512 build of the fast InfLLM v2 inner loops; see sparse-attention-impl.h (same source, wider vectors).
#include "cpu/ops-sparse.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace minicpm {

namespace {
#include "cpu/fast-exp.h"
#include "cpu/sparse-attention-impl.h"

void scores(float * s, const float * qT, const float * c, int32_t n, int32_t hd, float scale) {
    sp_scores_impl(s, qT, c, n, hd, scale);
}
void lse(float * out, const float * s, int32_t n) { sp_lse_impl(out, s, n); }
void group_sum(float * S, const float * s, const float * l, int32_t n, int32_t G, bool acc) {
    sp_group_sum_impl(S, s, l, n, G, acc);
}
void load_block(float * kt, float * vb, const kv_layer & kv, int32_t block, int32_t hk, int32_t n) {
    sp_load_block_impl(kt, vb, kv, block, hk, n);
}
void block_heads(float * o, float * m, float * l, const float * q, int32_t G, int32_t hd, const float * kt,
                 const float * vb, int32_t n, float * sc) {
    sp_block_heads_impl(o, m, l, q, G, hd, kt, vb, n, sc);
}

const sparse_kernel_table k_table = {scores, lse, group_sum, load_block, block_heads};
}  // namespace

const sparse_kernel_table & sparse_kernels_avx512() { return k_table; }

}  // namespace minicpm
