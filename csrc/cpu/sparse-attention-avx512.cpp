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
void attend(float * o, const float * q, int32_t G, const kv_layer & kv, const int32_t * blocks, int32_t hk,
            const int32_t * sel, const int32_t * lim, int32_t n_sel, float * kt, float * vb, float * sc) {
    sp_attend_impl(o, q, G, kv, blocks, hk, sel, lim, n_sel, kt, vb, sc);
}

const sparse_kernel_table k_table = {scores, lse, group_sum, attend};
}  // namespace

const sparse_kernel_table & sparse_kernels_avx512() { return k_table; }

}  // namespace minicpm
