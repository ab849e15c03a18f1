// Baseline (any CPU) build of the flash attention task; see attention-impl.h.
#include "cpu/ops-fast.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__aarch64__)
#    include <arm_neon.h>
#endif

namespace minicpm {

namespace {
#include "cpu/fast-exp.h"
#include "cpu/attention-impl.h"
}  // namespace

void attention_task_portable(float * out, const float * q, const kv_layer & kv, const kv_segment & sg, int32_t r0,
                             int32_t r1, int32_t n_head, int32_t hk, int32_t group, float scale, float * scratch) {
    attention_task_impl(out, q, kv, sg, r0, r1, n_head, hk, group, scale, scratch);
}

}  // namespace minicpm
