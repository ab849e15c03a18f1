// The process's one device memory arena: a single cudaMalloc made when the first CUDA backend is created,
// sized from its memory limit, and shared by every CUDA backend alive
// (the model's weights, each engine's KV pool and workspace) until the last one goes. Buffers are carved
// from it first-fit (core/range-alloc.h), so a run allocates no device memory after load and a limit holds.
// MINICPM_CUDA_ARENA=off (for compute-sanitizer runs, scripts/gpu-check.sh): the same accounting, but each buffer
// is an allocation of its own, so that an access past a buffer is past an allocation, which memcheck reports.
#pragma once

#include "core/range-alloc.h"
#include "cuda/common.cuh"

#include <map>
#include <memory>
#include <mutex>

namespace minicpm {
namespace cuda {

class device_arena {
  public:
    // The live arena, or a new one of `limit` bytes (0: 90% of the free device memory, half of it on an
    // integrated GPU such as Jetson, whose device memory is the system's). Throws _OUT_OF_MEMORY when the
    // limit exceeds the free device memory or cannot be allocated.
    static std::shared_ptr<device_arena> acquire(uint64_t limit, bool integrated);
    ~device_arena();

    // Throws _OUT_OF_MEMORY naming the request, its usage and what the arena has left.
    void * take(size_t bytes, const char * usage);
    void   give(void * p);
    device_memory_info info() const;

  private:
    device_arena() = default;
    mutable std::mutex               mu_;
    uint8_t *                        base_ = nullptr;  // nullptr: MINICPM_CUDA_ARENA=off
    std::unique_ptr<range_allocator> ranges_;
    std::map<void *, size_t>         own_;  // arena off: each buffer's allocation -> its range in the accounting
    uint64_t                         dev_free_ = 0, dev_total_ = 0;  // at creation, before the arena
};

}  // namespace cuda
}  // namespace minicpm
