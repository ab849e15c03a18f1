#include "cuda/step-graph.cuh"

#include <cstring>

namespace minicpm {
namespace cuda {

namespace {
constexpr int      k_max_failures = 2;  // failed captures before a key stays eager
constexpr uint64_t k_fnv_basis = 1469598103934665603ull, k_fnv_prime = 1099511628211ull;
}  // namespace

step_graphs::step_graphs(bool enabled, size_t staging_bytes, cudaStream_t stream) : stream_(stream) {
    if (!enabled) {
        off_reason_ = "turned off";
        return;
    }
    // An empty capture, instantiated: drivers or tools (some debuggers, MPS setups) that cannot capture say
    // so here, at load, instead of on every step.
    cudaGraph_t     g = nullptr;
    cudaGraphExec_t exec = nullptr;
    cudaError_t     e = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
    if (e == cudaSuccess) e = cudaStreamEndCapture(stream_, &g);
    if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, g, 0);
    if (exec) cudaGraphExecDestroy(exec);
    if (g) cudaGraphDestroy(g);
    if (e == cudaSuccess) e = cudaMallocHost((void **) &pinned_, staging_bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();  // not sticky: clear it so that the next check does not report it
        pinned_ = nullptr;
        off_reason_ = std::string("capture unavailable: ") + cudaGetErrorString(e);
        return;
    }
    pinned_cap_ = staging_bytes;
    enabled_ = true;
}

step_graphs::~step_graphs() {
    if (mode_ == mode::capture) {
        cudaGraph_t g = nullptr;
        if (cudaStreamEndCapture(stream_, &g) == cudaSuccess && g) cudaGraphDestroy(g);
    }
    for (auto & kv : graphs_) cudaGraphExecDestroy(kv.second.exec);
    if (pinned_) cudaFreeHost(pinned_);
}

bool step_graphs::begin(int64_t key) {
    if (!enabled_ || mode_ != mode::eager) return false;
    refused_ = nullptr;
    sig_ = k_fnv_basis;
    pinned_used_ = 0;
    key_ = key;
    // The previous step's copies may still be reading the staging about to be refilled.
    MINICPM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (graphs_.count(key)) {
        mode_ = mode::replay;
        return true;
    }
    if (seen_.insert(key).second) return false;  // first sighting: eager, so that every buffer gets its size
    if (failures_[key] >= k_max_failures) return false;
    if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        cudaGetLastError();
        ++failures_[key];
        ++fallbacks_;
        return false;
    }
    mode_ = mode::capture;
    return true;
}

bool step_graphs::end() {
    if (mode_ == mode::eager) return false;
    const mode m = mode_;
    mode_ = mode::eager;
    if (m == mode::replay) {
        const auto it = graphs_.find(key_);
        if (refused_ != nullptr || it->second.sig != sig_) {
            drop(key_);  // recorded again the next time the key comes
            ++fallbacks_;
            return false;
        }
        MINICPM_CUDA_CHECK(cudaGraphLaunch(it->second.exec, stream_));
        ++replays_;
        return true;
    }
    cudaGraph_t     g = nullptr;
    cudaGraphExec_t exec = nullptr;
    cudaError_t     e = cudaStreamEndCapture(stream_, &g);
    if (e == cudaSuccess && refused_ == nullptr) e = cudaGraphInstantiate(&exec, g, 0);
    if (g) cudaGraphDestroy(g);
    if (e != cudaSuccess || refused_ != nullptr) {
        cudaGetLastError();
        if (exec) cudaGraphExecDestroy(exec);
        ++failures_[key_];
        ++fallbacks_;
        return false;
    }
    graphs_[key_] = {exec, sig_};
    MINICPM_CUDA_CHECK(cudaGraphLaunch(exec, stream_));  // the capture recorded the step; this runs it
    ++captures_;
    return true;
}

void step_graphs::note(std::initializer_list<uint64_t> v) {
    if (mode_ == mode::eager) return;
    for (const uint64_t x : v) sig_ = (sig_ ^ x) * k_fnv_prime;
}

void step_graphs::refuse(const char * why) {
    if (mode_ != mode::eager && refused_ == nullptr) refused_ = why;
}

const void * step_graphs::stage(const void * src, size_t n) {
    const size_t at = (pinned_used_ + 15) & ~size_t(15);
    if (at > pinned_cap_ || n > pinned_cap_ - at) {
        refuse("pinned staging full");
        return nullptr;
    }
    std::memcpy(pinned_ + at, src, n);
    pinned_used_ = at + n;
    note({at, n});
    return pinned_ + at;
}

step_graph_stats step_graphs::stats() const {
    step_graph_stats s;
    s.enabled = enabled_;
    s.off_reason = off_reason_.c_str();
    s.captures = captures_;
    s.replays = replays_;
    s.fallbacks = fallbacks_;
    return s;
}

void step_graphs::drop(int64_t key) {
    const auto it = graphs_.find(key);
    if (it == graphs_.end()) return;
    cudaGraphExecDestroy(it->second.exec);
    graphs_.erase(it);
}

}  // namespace cuda
}  // namespace minicpm
