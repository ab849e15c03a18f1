#include "cuda/arena.cuh"

#include <cstdlib>
#include <cstring>

namespace minicpm {
namespace cuda {

namespace {
std::mutex                  g_mu;
std::weak_ptr<device_arena> g_arena;

std::string mib(uint64_t b) { return std::to_string(b >> 20) + " MiB"; }
}  // namespace

std::shared_ptr<device_arena> device_arena::acquire(uint64_t limit, bool integrated) {
    std::lock_guard<std::mutex> lk(g_mu);
    if (auto live = g_arena.lock()) return live;
    size_t free_b = 0, total_b = 0;
    MINICPM_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (limit > free_b)
        fail(MINICPM_STATUS_OUT_OF_MEMORY, "backend cuda: the device memory limit " + mib(limit) + " exceeds the " +
                                               mib(free_b) + " free of " + mib(total_b) + " on the device");
    const uint64_t size = limit > 0 ? limit : integrated ? free_b / 2 : free_b / 10 * 9;
    std::shared_ptr<device_arena> a(new device_arena());
    const char *      env = std::getenv("MINICPM_CUDA_ARENA");
    const bool        one_block = env == nullptr || std::strcmp(env, "off") != 0;
    const cudaError_t e = one_block ? cudaMalloc(&a->base_, size) : cudaSuccess;
    if (e != cudaSuccess) {
        cudaGetLastError();  // clear the sticky allocation error
        fail(MINICPM_STATUS_OUT_OF_MEMORY, "backend cuda: cannot allocate the device arena of " + mib(size) + " (" +
                                               mib(free_b) + " free): " + cudaGetErrorString(e));
    }
    a->ranges_ = std::make_unique<range_allocator>(size, 256);
    a->dev_free_ = free_b;
    a->dev_total_ = total_b;
    g_arena = a;
    return a;
}

device_arena::~device_arena() {
    if (base_) cudaFree(base_);
    for (const auto & b : own_) cudaFree(b.first);
}

void * device_arena::take(size_t bytes, const char * usage) {
    std::lock_guard<std::mutex> lk(mu_);
    size_t at = 0;
    if (!ranges_->take(bytes, &at))
        fail(MINICPM_STATUS_OUT_OF_MEMORY,
             "backend cuda: " + std::to_string(bytes) + " bytes of " + usage + " do not fit in the device arena (" +
                 mib(ranges_->size()) + ", " + mib(ranges_->free_bytes()) + " free, largest piece " +
                 mib(ranges_->largest_free()) + "); raise the device memory limit (model params device_memory)");
    if (base_) return base_ + at;
    void *            p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();  // not sticky: the next launch check must not report it again
        ranges_->give(at);
        check(e, usage);
    }
    own_[p] = at;
    return p;
}

void device_arena::give(void * p) {
    std::lock_guard<std::mutex> lk(mu_);
    if (base_) {
        ranges_->give(size_t((uint8_t *) p - base_));
        return;
    }
    const auto it = own_.find(p);
    if (it == own_.end()) return;  // not thrown: give runs in destructors
    ranges_->give(it->second);
    own_.erase(it);
    cudaFree(p);
}

device_memory_info device_arena::info() const {
    std::lock_guard<std::mutex> lk(mu_);
    return {dev_free_, dev_total_, ranges_->size(), ranges_->free_bytes()};
}

}  // namespace cuda
}  // namespace minicpm
