// The backend seam: the model graph (csrc/model/minicpm4.cpp) calls only these ops. The CPU reference table
// is the specification; the fast CPU table (and later CUDA) must match it, op by op (csrc/tests/test-ops.cpp).
//
// Shape letters: T = tokens in the batch, H = n_embd, N = output features, K = input features,
// nh = query heads, nkv = KV heads, hd = head dim. All activations are f32, row-major.
#pragma once

#include "core/tensor.h"
#include "core/threadpool.h"

#include <cstdint>

namespace minicpm {

// One layer's slice of the KV pool. Layout: [n_blocks][nkv][MINICPM_KV_BLOCK_SIZE][hd] for k and for v,
// so one KV head of one 64-token block is a contiguous 64 x hd tile.
struct kv_layer {
    dtype   type = dtype::f32;
    void *  k = nullptr;
    void *  v = nullptr;
    int32_t n_head_kv = 0;
    int32_t head_dim = 0;
};

// The tokens of one sequence inside a batch: rows [row_begin, row_begin + n_rows) of q/k/v/out hold its
// positions [n_past, n_past + n_rows). blocks[i] is the pool block that holds positions [64 i, 64 i + 64).
struct kv_segment {
    int32_t         row_begin = 0;
    int32_t         n_rows = 0;
    int32_t         n_past = 0;
    const int32_t * blocks = nullptr;
};

struct backend_ops {
    const char * name;

    // y[T,N] = x[T,K] . W[N,K]^T ; W in its stored dtype (f32, f16, bf16), used in place.
    void (*matmul)(thread_pool & tp, float * y, const float * x, const tensor_view & w, int64_t T);

    // y[T,H] = x / sqrt(mean(x^2) + eps) * g ; g is a [H] vector in any dtype. y may alias x.
    void (*rms_norm)(thread_pool & tp, float * y, const float * x, const tensor_view & g, int64_t T, float eps);

    // out[T,H] = E[tokens[t]] * scale ; token ids are already validated.
    void (*embed)(thread_pool & tp, float * out, const int32_t * tokens, const tensor_view & e, int64_t T,
                  float scale);

    // In place split-half RoPE on x[T, n_heads, hd]. cos_sin[p * hd + 2 i] = cos(theta_i(p)) * mscale and
    // cos_sin[p * hd + 2 i + 1] = sin(theta_i(p)) * mscale for i < hd/2; pos[t] is token t's position.
    void (*rope)(thread_pool & tp, float * x, const int32_t * pos, const float * cos_sin, int64_t T,
                 int32_t n_heads, int32_t hd);

    // Writes k[T, nkv*hd] and v[T, nkv*hd] rows into the pool at each segment's positions (converted to
    // kv.type).
    void (*kv_store)(thread_pool & tp, const kv_layer & kv, const float * k, const float * v,
                     const kv_segment * segs, int32_t n_segs);

    // Causal GQA attention over the pool: for each segment and row t, query head h attends to positions
    // [0, n_past + t] of KV head h / (nh / nkv) with softmax(q.k * scale). out[T, nh*hd]. Memory use must not
    // grow with the square of the context.
    void (*attention)(thread_pool & tp, float * out, const float * q, const kv_layer & kv, const kv_segment * segs,
                      int32_t n_segs, int32_t n_head, float scale);

    // out[T,N] = silu(gate[T,N]) * up[T,N]; out may alias gate.
    void (*silu_mul)(thread_pool & tp, float * out, const float * gate, const float * up, int64_t n);

    // x[n] += a[n] * scale
    void (*add_scaled)(thread_pool & tp, float * x, const float * a, float scale, int64_t n);
};

const backend_ops & cpu_reference_ops();  // plain loops: the specification
const backend_ops & cpu_fast_ops();       // SIMD + threads, chosen once by CPU features at first call
const char *        cpu_features();       // space-separated features the fast table found and uses

}  // namespace minicpm
