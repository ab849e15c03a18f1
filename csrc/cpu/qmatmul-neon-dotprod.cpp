// ARM64 dot-product kernel of the quantized matmul (see qmatmul.h, qmatmul-neon-impl.h), for CPUs with
// FEAT_DotProd (HWCAP_ASIMDDP): sdot adds four s8 x s8 products per int32 lane. Also the one-token, odd-row
// and odd-token parts of the i8mm kernel.
#include "cpu/qmatmul.h"

#include <arm_neon.h>

namespace minicpm {

namespace {

inline int32x4_t qn_dot16(int32x4_t acc, int8x16_t a, int8x16_t b) { return vdotq_s32(acc, a, b); }

#include "cpu/qmatmul-neon-impl.h"

}  // namespace

void qdot_neon_dotprod(float * y, int64_t ldy, const int8_t * xq, const float * xls, const float * xgs, int64_t T,
                       int64_t K, const uint8_t * w, bool q4, const float * ws, const float * wc, int64_t nr,
                       int64_t n0, int64_t G, int64_t gsteps) {
    if (q4) {
        run<true>(y, ldy, xq, xls, xgs, T, K, w, ws, wc, nr, n0, G, gsteps);
    } else {
        run<false>(y, ldy, xq, xls, xgs, T, K, w, ws, wc, nr, n0, G, gsteps);
    }
}

}  // namespace minicpm
