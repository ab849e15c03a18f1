// Base-NEON kernel of the quantized matmul (see qmatmul.h, qmatmul-neon-impl.h), for ARM64 CPUs without
// FEAT_DotProd (Cortex-A53/A72: Raspberry Pi 3/4): smull / smlal2 make eight 16-bit sums of two products each
// (|w x| <= 128 * 127, so two fit int16), sadalp widens pairs of them into the int32 lanes.
#include "cpu/qmatmul.h"

#include <arm_neon.h>

namespace minicpm {

namespace {

inline int32x4_t qn_dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
    const int16x8_t p = vmlal_high_s8(vmull_s8(vget_low_s8(a), vget_low_s8(b)), a, b);
    return vpadalq_s16(acc, p);
}

#include "cpu/qmatmul-neon-impl.h"

}  // namespace

void qdot_neon(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T, int64_t K,
               const uint8_t * w, bool q4, const float * ws, const float * wc, int64_t nr, int64_t n0, int64_t G,
               int64_t gsteps) {
    if (q4) {
        run<true>(y, ldy, xq, xls, xgs, T, K, w, ws, wc, nr, n0, G, gsteps);
    } else {
        run<false>(y, ldy, xq, xls, xgs, T, K, w, ws, wc, nr, n0, G, gsteps);
    }
}

}  // namespace minicpm
