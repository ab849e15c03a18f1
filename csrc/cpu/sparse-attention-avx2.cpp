// AVX2 build of the fast InfLLM v2 inner loops; see sparse-attention-impl.h (same source, wider vectors).
#include "cpu/ops-sparse.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace minicpm {

namespace {
#include "cpu/fast-exp.h"
#include "cpu/sparse-attention-impl.h"

// The impl functions have the table's signatures: this file only compiles them with wider vectors.
const sparse_kernel_table k_table = {sp_scores_impl, sp_lse_impl, sp_group_sum_impl, sp_load_block_impl,
                                     sp_block_heads_impl};
}  // namespace

const sparse_kernel_table & sparse_kernels_avx2() { return k_table; }

}  // namespace minicpm
