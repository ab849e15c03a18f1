// The one place a backend is chosen.
#include "core/backend.h"

#include "core/status.h"

#include <string>

namespace minicpm {

std::unique_ptr<backend> make_cpu_backend(const backend_options & o);  // cpu/backend-cpu.cpp

const char * backend_kind_name(backend_kind k) { return k == backend_kind::cuda ? "cuda" : "cpu"; }

backend_kind resolve_backend(int32_t requested) {
    switch (requested) {
        case MINICPM_BACKEND_AUTO:
        case MINICPM_BACKEND_CPU: return backend_kind::cpu;
        case MINICPM_BACKEND_CUDA:
            fail(MINICPM_STATUS_UNSUPPORTED, "backend cuda: this build has no CUDA backend; use cpu or auto");
        default:
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "backend " + std::to_string(requested) +
                                                      " is not a minicpm_backend (0 auto, 1 cpu, 2 cuda)");
    }
}

std::unique_ptr<backend> make_backend(backend_kind kind, const backend_options & opts) {
    if (kind != backend_kind::cpu) resolve_backend(int32_t(kind));  // throws for a backend this build lacks
    return make_cpu_backend(opts);
}

}  // namespace minicpm
