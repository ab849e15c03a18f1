// The backend seam (seam v2). A backend is an object: it owns its execution context (the CPU backend its
// thread pool), allocates its own buffers (weights, KV pool, activations, tables), copies data in and out,
// and runs the ops below over those buffers. The model graph (csrc/model/minicpm4.cpp) and the scheduler
// (csrc/engine/) see only buffers and ops: they never dereference an activation on the host. A backend is
// made in one place, make_backend(), from the public backend field.
//
// The plain CPU ops are the specification; every other op set (fast CPU kernel families, CUDA) must match
// them, op by op (csrc/tests/test-ops.cpp).
//
// Shape letters: T = rows (tokens) in the batch, H = n_embd, N = output features, K = input features,
// nh = query heads, nkv = KV heads, hd = head dim. Activations are f32, row-major.
//
// Batch metadata (segments, block tables, ancestor masks) is host memory that an op reads when it runs; a
// device backend copies what it needs. Token ids, positions and row lists are uploaded into backend buffers
// by the caller, like activations.
#pragma once

#include "core/sparse-attn.h"
#include "core/tensor.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace minicpm {

class thread_pool;

enum class backend_kind : int32_t { cpu = MINICPM_BACKEND_CPU, cuda = MINICPM_BACKEND_CUDA };

enum class buffer_usage : int32_t { weights, kv, compute };

// A block of backend memory. `data` is an address in the backend's space (host memory on the CPU).
struct buffer {
    void *       data = nullptr;
    size_t       size = 0;
    buffer_usage usage = buffer_usage::compute;
    bool         owned = true;  // false: wraps memory the backend did not allocate (mapped weights)
};

// One layer's slice of the KV pool. Layout: [n_blocks][nkv][MINICPM_KV_BLOCK_SIZE][hd] for k and for v, so
// one KV head of one 64-token block is a contiguous 64 x hd tile.
struct kv_layer {
    dtype   type = dtype::f32;
    void *  k = nullptr;
    void *  v = nullptr;
    int32_t n_head_kv = 0;
    int32_t head_dim = 0;
};

// The rows of one sequence inside a batch: rows [row_begin, row_begin + n_rows). Every row sees the n_past
// committed KV slots of its sequence; row j writes its K/V to slot n_past + j and sees, among the batch's rows
// of its sequence, itself and:
//   mask == nullptr: every earlier row (causal);
//   mask != nullptr: row i < j exactly when bit i of mask[j] is set (a token tree; n_rows <= 64).
// Slot s lives in pool block blocks[s / 64] at index s % 64. Positions (for RoPE) are per row, explicit, and
// independent of slots: siblings in a tree share a position.
struct kv_segment {
    int32_t          row_begin = 0;
    int32_t          n_rows = 0;
    int32_t          n_past = 0;
    const int32_t *  blocks = nullptr;
    const uint64_t * mask = nullptr;
};

constexpr int32_t k_max_tree_rows = 64;  // rows of one masked segment (bits of a mask word)

// True when row j of segment sg sees row i (i <= j) of the same segment.
inline bool kv_row_visible(const kv_segment & sg, int32_t j, int32_t i) {
    return i == j || (i < j && (sg.mask == nullptr || ((sg.mask[j] >> i) & 1u)));
}

// Device sampling (engine/sampler.h's common cases on logits that stay in backend memory). One row: the
// request's parameters, its Philox key (the seed) and counter (how many tokens it has drawn, so a seed gives
// the same tokens on every run), and its entries [adjust_begin, adjust_begin + n_adjust) of the adjust table.
struct sample_row {
    float    temperature = 0.0f;  // <= 0: greedy
    int32_t  top_k = 0;
    float    top_p = 1.0f;
    float    min_p = 0.0f;
    float    repetition_penalty = 1.0f;
    float    presence_penalty = 0.0f;
    float    frequency_penalty = 0.0f;
    uint64_t seed = 0;
    uint64_t counter = 0;
    int32_t  adjust_begin = 0;
    int32_t  n_adjust = 0;
};
// A token whose logit a row changes, at most once per row: + bias, then, when n_all > 0 (it is in the penalty
// window), the repetition penalty and presence / frequency penalties over n_generated (sampler::adjust).
struct sample_adjust {
    int32_t token = 0;
    float   bias = 0.0f;
    int32_t n_all = 0;
    int32_t n_generated = 0;
};
// token = -1 when every logit of the row is -inf or NaN after adjustment. logprob: log-softmax of the raw logit.
struct sample_out {
    int32_t token = -1;
    float   logprob = 0.0f;
};

// Device memory as a device backend sees it: free and total on the device when its arena was made (before
// it), the arena's size and what is left in it. All zero on the CPU.
struct device_memory_info {
    uint64_t device_free = 0, device_total = 0, arena = 0, arena_free = 0;
};

struct backend_options {
    int32_t     n_threads = 0;         // 0 = physical cores
    bool        reference = false;     // run the plain reference ops (tests)
    const char * kernels = nullptr;    // CPU kernel family to force (e.g. "avx2"); nullptr = best for this CPU
    uint64_t    memory_limit = 0;      // CUDA: bytes of the device arena; 0 = 90% of the free memory (half: Jetson)
    bool        step_graphs = false;   // CUDA: record small steps as CUDA graphs and replay them (see begin_graph_step)
};

// Step graphs as a device backend reports them: whether they are on (and why not), how many were recorded,
// how many steps replayed one, and how many steps that tried ran eagerly instead (capture failed, or the
// step's ops differed from the recorded ones).
struct step_graph_stats {
    bool        enabled = false;
    const char * off_reason = "";
    uint64_t    captures = 0, replays = 0, fallbacks = 0;
};

class backend {
  public:
    virtual ~backend() = default;

    virtual backend_kind kind() const = 0;
    // e.g. "cpu avx512+amx" or "cpu-reference": the backend and the kernel family that runs.
    virtual const char * name() const = 0;
    virtual const char * features() const = 0;  // space-separated hardware features the kernels use
    virtual int          n_threads() const = 0;
    // True when backend addresses are host addresses (CPU): results may then be written straight into host
    // arrays instead of being downloaded.
    virtual bool         host_memory() const = 0;
    // The host thread pool of a CPU backend (host-side work such as sampling may share it); nullptr otherwise.
    virtual thread_pool * host_pool() { return nullptr; }

    // ---- memory. Failures throw minicpm::error (_OUT_OF_MEMORY naming the size and the usage).
    virtual buffer alloc(size_t bytes, buffer_usage usage) = 0;  // zero-filled
    virtual void   release(buffer & b) = 0;                      // idempotent; b becomes empty
    // Weights as read from the checkpoint: a host backend wraps the mapping in place, a device copies it.
    virtual buffer import_weights(const void * host, size_t bytes) = 0;
    // A backend-specific copy of placed weight w that its kernels read faster (w.packed), or an empty buffer
    // (the default): the x86 CPU backend interleaves quantized weights for its integer kernels (cpu/qpack.h).
    // A copy is lossless and complete, so the caller may drop w's stored rows (tensor.h).
    virtual buffer prepare_weights(const tensor_desc & w) {
        (void) w;
        return {};
    }
    virtual void upload(const buffer & dst, size_t offset, const void * src, size_t bytes) = 0;
    virtual void download(void * dst, const buffer & src, size_t offset, size_t bytes) = 0;
    virtual void copy(const buffer & dst, size_t dst_offset, const buffer & src, size_t src_offset, size_t bytes) = 0;
    virtual void fill_zero(const buffer & dst, size_t offset, size_t bytes) = 0;
    virtual void synchronize() = 0;  // every op issued so far has finished
    virtual device_memory_info device_memory() const { return {}; }

    // ---- ops (pointers are addresses inside this backend's buffers).
    // y[T,N] = x[T,K] . W[N,K]^T, W in its stored format (f32, f16, bf16, q8, q4).
    virtual void matmul(float * y, const float * x, const tensor_desc & w, int64_t T) = 0;
    // y[T,H] = x / sqrt(mean(x^2) + eps) * g ; g is a [H] vector of a plain type. y may alias x.
    virtual void rms_norm(float * y, const float * x, const tensor_desc & g, int64_t T, float eps) = 0;
    // out[T,H] = E[tokens[t]] * scale ; token ids are already validated.
    virtual void embed(float * out, const int32_t * tokens, const tensor_desc & e, int64_t T, float scale) = 0;
    // In place split-half RoPE on x[T, n_heads, hd]. cos_sin[p * hd + 2 i] = cos(theta_i(p)) * mscale and
    // cos_sin[p * hd + 2 i + 1] = sin(theta_i(p)) * mscale for i < hd/2; pos[t] is row t's position.
    virtual void rope(float * x, const int32_t * pos, const float * cos_sin, int64_t T, int32_t n_heads,
                      int32_t hd) = 0;
    // Writes rows of k[T, nkv*hd] and v[T, nkv*hd] into their segment's slots (converted to kv.type).
    virtual void kv_store(const kv_layer & kv, const float * k, const float * v, const kv_segment * segs,
                          int32_t n_segs) = 0;
    // GQA attention over the pool: query head h of a row attends with softmax(q.k * scale) to the slots its
    // row sees (see kv_segment), through KV head h / (nh / nkv). out[T, nh*hd]. Memory use must not grow with
    // the square of the context.
    virtual void attention(float * out, const float * q, const kv_layer & kv, const kv_segment * segs,
                           int32_t n_segs, int32_t n_head, float scale) = 0;
    // ---- InfLLM v2 sparse attention (core/sparse-attn.h; /work/shared/docs/INFLLM_V2.md).
    // Computes every C1 and C2 kernel of segment s whose last slot lies in [from[s], n_past + n_rows) from the
    // K rows in the pool and stores it in cc (the layer's side storage). from is host memory.
    virtual void kv_compress(const kv_compressed & cc, const kv_layer & kv, const kv_segment * segs,
                             const int32_t * from, int32_t n_segs) = 0;
    // Like attention(), but row j of segment s (slot p = n_past + j) attends only to the 64-slot blocks
    // INFLLM_V2.md steps 1-9 select for it and its KV head (every block 0..p/64 when p + 1 < dense_len). The
    // compressed caches must cover every slot the rows see (kv_compress). A tree row (masked segment) runs
    // those steps on the sequence plain decoding would hold after committing the rows its mask shows
    // (cpu/ops-sparse.h, sparse_row_view): the caches need to cover only the n_past committed slots, and tree
    // rows whose p there has p + 1 < dense_len are left alone (out and selected untouched) for the dense op, so
    // that they compute exactly what plain decoding computes. selected (optional, host memory): bit b of word w
    // at [row][kv head][sel_words] is set when block 64 w + b is attended.
    virtual void sparse_attention(float * out, const float * q, const kv_layer & kv, const kv_compressed & cc,
                                  const kv_segment * segs, int32_t n_segs, int32_t n_head, float scale,
                                  const sparse_attn_params & sp, uint64_t * selected, int32_t sel_words) = 0;
    // out[n] = silu(gate[n]) * up[n]; out may alias gate.
    virtual void silu_mul(float * out, const float * gate, const float * up, int64_t n) = 0;
    // x[n] += a[n] * scale
    virtual void add_scaled(float * x, const float * a, float scale, int64_t n) = 0;
    // x[n] /= d
    virtual void div_scalar(float * x, float d, int64_t n) = 0;
    // dst[r, :] = src[rows[r], :] for r < R; rows of H floats.
    virtual void get_rows(float * dst, const float * src, const int32_t * rows, int64_t R, int64_t H) = 0;
    // Draws one token per row of logits[R, n_vocab] (backend memory) and writes R results to out (host memory):
    // only the chosen ids travel. The kept tokens are the host sampler's (up to the rounding of mass sums);
    // the draw scans ids in order with a counter-based RNG (the host scans its candidate order with its own
    // stream), so a seed gives the same distribution as the host sampler, not the same tokens. Returns false, doing nothing, on a
    // backend without a device sampler (the caller downloads the logits and samples on the host).
    virtual bool sample(const float * logits, int32_t n_vocab, const sample_row * rows, int32_t R,
                        const sample_adjust * adjust, int32_t n_adjust, sample_out * out) {
        return false;
    }

    // ---- step graphs. The ops of one step (uploads included; no download, synchronize or sparse op) may be
    // issued between begin_graph_step(key) and end_graph_step(): returns true when the backend takes them
    // into a graph for `key` (the first time a key is seen the step runs eagerly, to size every buffer; the
    // second records a graph; later ones replay it, the ops then only stage their host data). end_graph_step
    // returns true when the step ran; false when it did not (capture failed, or the ops differed from the
    // recorded ones: pointers, shapes, plans): the caller then issues the same ops again outside a step.
    // Ops must not depend on device results read back on the host inside a step.
    virtual bool             begin_graph_step(int64_t key) { return false; }
    virtual bool             end_graph_step() { return false; }
    virtual step_graph_stats graph_stats() const { return {}; }
};

// The one place a backend is chosen. Throws _UNSUPPORTED for a kind this build or machine cannot run
// (CUDA without the CUDA build or a device), _INVALID_ARGUMENT for an unknown kernel family.
std::unique_ptr<backend> make_backend(backend_kind kind, const backend_options & opts);
// MINICPM_BACKEND_AUTO / CPU / CUDA -> the kind that runs (AUTO: the best available). Throws as above.
backend_kind resolve_backend(int32_t requested);
const char * backend_kind_name(backend_kind k);

// The CPU backend's kernel families runnable on this machine, best first ("avx512+amx", "avx512", "avx2",
// "portable"), and the features the best one uses.
int          cpu_kernel_family_names(const char ** out, int cap);
const char * cpu_features();

}  // namespace minicpm
