// The one place a backend is chosen.
#include "core/backend.h"

#include "core/status.h"

#include <string>

namespace minicpm {

std::unique_ptr<backend> make_cpu_backend(const backend_options & o);  // cpu/backend-cpu.cpp
#if defined(MINICPM_CUDA)
std::unique_ptr<backend> make_cuda_backend(const backend_options & o);  // cuda/backend-cuda.cu
bool                     cuda_device_available();
#endif

const char * backend_kind_name(backend_kind k) { return k == backend_kind::cuda ? "cuda" : "cpu"; }

backend_kind resolve_backend(int32_t requested) {
    switch (requested) {
        case MINICPM_BACKEND_AUTO:
#if defined(MINICPM_CUDA)
            if (cuda_device_available()) return backend_kind::cuda;
#endif
            return backend_kind::cpu;
        case MINICPM_BACKEND_CPU: return backend_kind::cpu;
        case MINICPM_BACKEND_CUDA:
#if defined(MINICPM_CUDA)
            return backend_kind::cuda;  // a machine without a device is told so when the backend is made
#else
            fail(MINICPM_STATUS_UNSUPPORTED, "backend cuda: this build has no CUDA backend; use cpu or auto");
#endif
        default:
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "backend " + std::to_string(requested) +
                                                      " is not a minicpm_backend (0 auto, 1 cpu, 2 cuda)");
    }
}

std::unique_ptr<backend> make_backend(backend_kind kind, const backend_options & opts) {
    if (kind == backend_kind::cpu) return make_cpu_backend(opts);
#if defined(MINICPM_CUDA)
    if (kind == backend_kind::cuda) return make_cuda_backend(opts);
#endif
    resolve_backend(int32_t(kind));  // throws for a backend this build lacks
    fail(MINICPM_STATUS_INTERNAL, "make_backend: unknown backend kind");
}

}  // namespace minicpm
