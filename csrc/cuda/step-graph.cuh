// Step graphs of the CUDA backend (backend::begin_graph_step): a small step's kernels and uploads recorded
// once per key as a CUDA graph, then replayed with one launch. What a replay may not change is checked, not
// assumed: every op of a step adds its launch parameters (pointers, shapes, plans, scalars) to a signature,
// and a replay whose signature differs from the recorded one does not launch; the caller issues the step
// eagerly and the key is recorded again. Host data (token ids, positions, row and block tables) reaches the
// device through pinned staging allocated with the backend: the graph's copies read fixed pinned addresses,
// which the ops of each replayed step refill in the same order.
#pragma once

#include "cuda/common.cuh"

#include <initializer_list>
#include <map>
#include <set>
#include <string>

namespace minicpm {
namespace cuda {

class step_graphs {
  public:
    enum class mode { eager, capture, replay };

    // enabled false, or a device on which an empty capture fails: every step runs eagerly (stats say why).
    step_graphs(bool enabled, size_t staging_bytes, cudaStream_t stream);
    ~step_graphs();

    mode current() const { return mode_; }
    bool begin(int64_t key);
    // Ends the step: launches the recorded or replayed graph (true), or discards the attempt (false).
    bool end();

    // Adds launch parameters to the step's signature (no-op outside a step).
    void note(std::initializer_list<uint64_t> v);
    // The step cannot be a graph (an op that reads back, grows a buffer, or is not supported in one).
    void refuse(const char * why);
    // A copy of n host bytes in pinned staging for an upload inside a step; nullptr (and the step refused)
    // when staging is full.
    const void * stage(const void * src, size_t n);

    step_graph_stats stats() const;

  private:
    struct recorded {
        cudaGraphExec_t exec = nullptr;
        uint64_t        sig = 0;
    };
    void drop(int64_t key);

    cudaStream_t                stream_;
    bool                        enabled_ = false;
    std::string                 off_reason_;
    mode                        mode_ = mode::eager;
    int64_t                     key_ = 0;
    uint64_t                    sig_ = 0;
    const char *                refused_ = nullptr;  // why the current step cannot be a graph
    uint8_t *                   pinned_ = nullptr;
    size_t                      pinned_cap_ = 0, pinned_used_ = 0;
    std::map<int64_t, recorded> graphs_;
    std::set<int64_t>           seen_;       // keys that ran eagerly once (their buffers are sized)
    std::map<int64_t, int>      failures_;   // failed captures per key; a key stops trying after a few
    uint64_t                    captures_ = 0, replays_ = 0, fallbacks_ = 0;
};

}  // namespace cuda
}  // namespace minicpm
