// The reference CPU ops: plain single-threaded loops with f32 accumulation. They are the specification every
// fast op is tested against (csrc/tests/test-ops.cpp), so they favour obviousness over speed.
//
// Shape letters (as in core/backend.h): T tokens, H n_embd, N output features, K input features,
// nh query heads, nkv KV heads, hd head dim, P positions attended.
#include "cpu/cpu-common.h"

#include <cmath>
#include <vector>

namespace minicpm {

namespace {

// y[T,N] = x[T,K] . W[N,K]^T
void ref_matmul(thread_pool & tp, float * y, const float * x, const tensor_view & w, int64_t T) {
    const int64_t N = w.rows, K = w.cols;
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t n = 0; n < N; ++n) {
            const void * wr = w.row(n);
            float acc = 0.0f;
            for (int64_t k = 0; k < K; ++k) acc += x[t * K + k] * load_f32(wr, w.type, k);
            y[t * N + n] = acc;
        }
    }
}

// y[T,H] = x / sqrt(mean(x^2) + eps) * g
void ref_rms_norm(thread_pool & tp, float * y, const float * x, const tensor_view & g, int64_t T, float eps) {
    const int64_t H = g.cols;
    for (int64_t t = 0; t < T; ++t) {
        float ss = 0.0f;
        for (int64_t i = 0; i < H; ++i) ss += x[t * H + i] * x[t * H + i];
        const float r = 1.0f / std::sqrt(ss / float(H) + eps);
        for (int64_t i = 0; i < H; ++i) y[t * H + i] = x[t * H + i] * r * load_f32(g.data, g.type, i);
    }
}

// out[T,H] = E[tokens[t]] * scale
void ref_embed(thread_pool & tp, float * out, const int32_t * tokens, const tensor_view & e, int64_t T,
               float scale) {
    const int64_t H = e.cols;
    for (int64_t t = 0; t < T; ++t) {
        const void * er = e.row(tokens[t]);
        for (int64_t i = 0; i < H; ++i) out[t * H + i] = load_f32(er, e.type, i) * scale;
    }
}

// x[T, nh, hd]: split-half rotation of (x[i], x[i + hd/2]) by the angle of position pos[t], frequency i.
void ref_rope(thread_pool & tp, float * x, const int32_t * pos, const float * cos_sin, int64_t T, int32_t n_heads,
              int32_t hd) {
    const int32_t half = hd / 2;
    for (int64_t t = 0; t < T; ++t) {
        const float * cs = cos_sin + int64_t(pos[t]) * hd;
        for (int32_t h = 0; h < n_heads; ++h) {
            float * u = x + (t * n_heads + h) * hd;
            for (int32_t i = 0; i < half; ++i) {
                const float c = cs[2 * i], s = cs[2 * i + 1];
                const float a = u[i], b = u[i + half];
                u[i] = a * c - b * s;
                u[i + half] = b * c + a * s;
            }
        }
    }
}

// k[T, nkv*hd], v[T, nkv*hd] -> pool slots of each segment's positions n_past .. n_past + n_rows - 1
void ref_kv_store(thread_pool & tp, const kv_layer & kv, const float * k, const float * v, const kv_segment * segs,
                  int32_t n_segs) {
    const int32_t nkv = kv.n_head_kv, hd = kv.head_dim;
    for (int32_t s = 0; s < n_segs; ++s) {
        const kv_segment & sg = segs[s];
        for (int32_t r = 0; r < sg.n_rows; ++r) {
            const int32_t p = sg.n_past + r;
            const int32_t block = sg.blocks[p / MINICPM_KV_BLOCK_SIZE], slot = p % MINICPM_KV_BLOCK_SIZE;
            const int64_t row = int64_t(sg.row_begin + r) * nkv * hd;
            for (int32_t h = 0; h < nkv; ++h) {
                const int64_t dst = kv_offset(kv, block, h, slot);
                for (int32_t d = 0; d < hd; ++d) {
                    store_f32(kv.k, kv.type, dst + d, k[row + h * hd + d]);
                    store_f32(kv.v, kv.type, dst + d, v[row + h * hd + d]);
                }
            }
        }
    }
}

// out[T, nh*hd]: per segment, row and query head, a full softmax over the P = n_past + row + 1 visible positions.
void ref_attention(thread_pool & tp, float * out, const float * q, const kv_layer & kv, const kv_segment * segs,
                   int32_t n_segs, int32_t n_head, float scale) {
    const int32_t nkv = kv.n_head_kv, hd = kv.head_dim, group = n_head / nkv;
    std::vector<float> w;
    for (int32_t s = 0; s < n_segs; ++s) {
        const kv_segment & sg = segs[s];
        for (int32_t r = 0; r < sg.n_rows; ++r) {
            const int32_t P = sg.n_past + r + 1;
            const int64_t row = sg.row_begin + r;
            w.assign(size_t(P), 0.0f);
            for (int32_t h = 0; h < n_head; ++h) {
                const float * qh = q + (row * n_head + h) * hd;
                const int32_t hk = h / group;
                float mx = -INFINITY;
                for (int32_t p = 0; p < P; ++p) {
                    const int64_t off = kv_offset(kv, sg.blocks[p / MINICPM_KV_BLOCK_SIZE], hk,
                                                  p % MINICPM_KV_BLOCK_SIZE);
                    float dot = 0.0f;
                    for (int32_t d = 0; d < hd; ++d) dot += qh[d] * load_f32(kv.k, kv.type, off + d);
                    w[p] = dot * scale;
                    mx = std::fmax(mx, w[p]);
                }
                float sum = 0.0f;
                for (int32_t p = 0; p < P; ++p) {
                    w[p] = std::exp(w[p] - mx);
                    sum += w[p];
                }
                float * o = out + (row * n_head + h) * hd;
                for (int32_t d = 0; d < hd; ++d) o[d] = 0.0f;
                for (int32_t p = 0; p < P; ++p) {
                    const int64_t off = kv_offset(kv, sg.blocks[p / MINICPM_KV_BLOCK_SIZE], hk,
                                                  p % MINICPM_KV_BLOCK_SIZE);
                    for (int32_t d = 0; d < hd; ++d) o[d] += w[p] / sum * load_f32(kv.v, kv.type, off + d);
                }
            }
        }
    }
}

// out[n] = silu(gate[n]) * up[n], silu(z) = z / (1 + exp(-z))
void ref_silu_mul(thread_pool & tp, float * out, const float * gate, const float * up, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// x[n] += a[n] * scale
void ref_add_scaled(thread_pool & tp, float * x, const float * a, float scale, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += a[i] * scale;
}

}  // namespace

const backend_ops & cpu_reference_ops() {
    static const backend_ops ops = {
        "cpu-reference", ref_matmul, ref_rms_norm, ref_embed, ref_rope, ref_kv_store, ref_attention,
        ref_silu_mul,    ref_add_scaled,
    };
    return ops;
}

}  // namespace minicpm
