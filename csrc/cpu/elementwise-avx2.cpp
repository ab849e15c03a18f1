// avx2 build of the elementwise fast ops; see elementwise-impl.h.
#include "cpu/ops-fast.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace minicpm {

namespace {
#include "cpu/fast-exp.h"
#include "cpu/elementwise-impl.h"
}  // namespace

void rms_norm_row_avx2(float * y, const float * x, const float * g, int64_t H, float eps) {
    ew_rms_norm_row_impl(y, x, g, H, eps);
}
void silu_mul_avx2(float * out, const float * gate, const float * up, int64_t n) { ew_silu_mul_impl(out, gate, up, n); }
void add_scaled_avx2(float * x, const float * a, float scale, int64_t n) { ew_add_scaled_impl(x, a, scale, n); }

}  // namespace minicpm
