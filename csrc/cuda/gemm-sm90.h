// The sm_90 wgmma GEMM's switch (gemm.cu), in plain C++ for test-cuda: what the start-up probe found, and a
// way to send every bf16 / f16 GEMM to the mma.sync kernel so that a test can compare the two.
#pragma once

#include <string>

namespace minicpm {
namespace cuda {

struct wgmma_state {
    bool        sm90 = false;     // the device is compute capability 9.0
    bool        built = false;    // the library holds the sm_90a kernel
    bool        enabled = false;  // the probe passed: prefill GEMMs take it
    std::string report;           // the probe's result, as in the backend's features
};
wgmma_state gemm16_wgmma_state();
// false: every GEMM takes mma.sync until set back (tests only; the probe's verdict still applies).
void gemm16_allow_wgmma(bool allow);

}  // namespace cuda
}  // namespace minicpm
