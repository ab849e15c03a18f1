// The reference CPU ops (see ops-ref.h): they favour obviousness over speed.
//
// Shape letters (as in core/backend.h): T tokens, H n_embd, N output features, K input features,
// nh query heads, nkv KV heads, hd head dim, P slots attended.
#include "cpu/ops-ref.h"

#include "cpu/cpu-common.h"
#include "cpu/qpack.h"

#include <cmath>
#include <vector>

namespace minicpm {

void dequantize_row(const tensor_desc & w, int64_t n, float * out) {
    const int64_t K = w.cols;
    if (!w.quantized()) {
        for (int64_t k = 0; k < K; ++k) out[k] = load_f32(w.row(n), w.type, k);
        return;
    }
    // Stored rows the backend dropped (tensor.h: data nullptr, packed set) come back from the packed copy.
    static thread_local std::vector<uint8_t> row;
    const uint8_t * data = (const uint8_t *) w.data;
    int64_t         base = n * K;  // element index of the row's first value in data
    if (data == nullptr) {
        row.resize(size_t(w.type == dtype::q4 ? K / 2 : K));
        qunpack_rows(w, n, 1, row.data());
        data = row.data();
        base = 0;
    }
    const int64_t G = w.n_groups();
    for (int64_t k = 0; k < K; ++k) {
        const int64_t g = w.perm ? w.perm[k] : k / w.group_size;
        const float   s = load_f32(w.scales, w.scale_type, n * G + g);
        const int64_t i = base + k;
        if (w.type == dtype::q8) {
            out[k] = float(((const int8_t *) data)[i]) * s;
        } else {
            const uint8_t byte = data[i / 2];
            const int32_t q = (i % 2 == 0) ? (byte & 0xf) : (byte >> 4);
            const int32_t z = w.zeros ? w.zeros[n * G + g] : 8;
            out[k] = float(q - z) * s;
        }
    }
}

// y[T,N] = x[T,K] . W[N,K]^T
void ref_matmul(float * y, const float * x, const tensor_desc & w, int64_t T) {
    const int64_t N = w.rows, K = w.cols;
    std::vector<float> wr(static_cast<size_t>(K));
    for (int64_t n = 0; n < N; ++n) {
        dequantize_row(w, n, wr.data());
        for (int64_t t = 0; t < T; ++t) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; ++k) acc += x[t * K + k] * wr[size_t(k)];
            y[t * N + n] = acc;
        }
    }
}

// y[T,H] = x / sqrt(mean(x^2) + eps) * g
void ref_rms_norm(float * y, const float * x, const tensor_desc & g, int64_t T, float eps) {
    const int64_t H = g.cols;
    for (int64_t t = 0; t < T; ++t) {
        float ss = 0.0f;
        for (int64_t i = 0; i < H; ++i) ss += x[t * H + i] * x[t * H + i];
        const float r = 1.0f / std::sqrt(ss / float(H) + eps);
        for (int64_t i = 0; i < H; ++i) y[t * H + i] = x[t * H + i] * r * load_f32(g.data, g.type, i);
    }
}

// out[T,H] = E[tokens[t]] * scale
void ref_embed(float * out, const int32_t * tokens, const tensor_desc & e, int64_t T, float scale) {
    const int64_t H = e.cols;
    std::vector<float> row(static_cast<size_t>(H));
    for (int64_t t = 0; t < T; ++t) {
        dequantize_row(e, tokens[t], row.data());
        for (int64_t i = 0; i < H; ++i) out[t * H + i] = row[size_t(i)] * scale;
    }
}

// x[T, nh, hd]: split-half rotation of (x[i], x[i + hd/2]) by the angle of position pos[t], frequency i.
void ref_rope(float * x, const int32_t * pos, const float * cos_sin, int64_t T, int32_t n_heads, int32_t hd) {
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

// Row j of a segment -> slot n_past + j of its sequence.
void ref_kv_store(const kv_layer & kv, const float * k, const float * v, const kv_segment * segs, int32_t n_segs) {
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

// out[T, nh*hd]: per segment, row and query head, a full softmax over the slots the row sees: the committed
// slots [0, n_past) and the batch rows kv_row_visible() allows.
void ref_attention(float * out, const float * q, const kv_layer & kv, const kv_segment * segs, int32_t n_segs,
                   int32_t n_head, float scale) {
    const int32_t nkv = kv.n_head_kv, hd = kv.head_dim, group = n_head / nkv;
    std::vector<int32_t> slots;
    std::vector<float>   w;
    for (int32_t s = 0; s < n_segs; ++s) {
        const kv_segment & sg = segs[s];
        for (int32_t r = 0; r < sg.n_rows; ++r) {
            slots.clear();
            for (int32_t p = 0; p < sg.n_past; ++p) slots.push_back(p);
            for (int32_t i = 0; i <= r; ++i)
                if (kv_row_visible(sg, r, i)) slots.push_back(sg.n_past + i);
            const int64_t row = sg.row_begin + r;
            const size_t  P = slots.size();
            w.assign(P, 0.0f);
            for (int32_t h = 0; h < n_head; ++h) {
                const float * qh = q + (row * n_head + h) * hd;
                const int32_t hk = h / group;
                float mx = -INFINITY;
                for (size_t j = 0; j < P; ++j) {
                    const int32_t p = slots[j];
                    const int64_t off = kv_offset(kv, sg.blocks[p / MINICPM_KV_BLOCK_SIZE], hk,
                                                  p % MINICPM_KV_BLOCK_SIZE);
                    float dot = 0.0f;
                    for (int32_t d = 0; d < hd; ++d) dot += qh[d] * load_f32(kv.k, kv.type, off + d);
                    w[j] = dot * scale;
                    mx = std::fmax(mx, w[j]);
                }
                float sum = 0.0f;
                for (size_t j = 0; j < P; ++j) {
                    w[j] = std::exp(w[j] - mx);
                    sum += w[j];
                }
                float * o = out + (row * n_head + h) * hd;
                for (int32_t d = 0; d < hd; ++d) o[d] = 0.0f;
                for (size_t j = 0; j < P; ++j) {
                    const int32_t p = slots[j];
                    const int64_t off = kv_offset(kv, sg.blocks[p / MINICPM_KV_BLOCK_SIZE], hk,
                                                  p % MINICPM_KV_BLOCK_SIZE);
                    for (int32_t d = 0; d < hd; ++d) o[d] += w[j] / sum * load_f32(kv.v, kv.type, off + d);
                }
            }
        }
    }
}

// out[n] = silu(gate[n]) * up[n], silu(z) = z / (1 + exp(-z))
void ref_silu_mul(float * out, const float * gate, const float * up, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// x[n] += a[n] * scale
void ref_add_scaled(float * x, const float * a, float scale, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += a[i] * scale;
}

// x[n] /= d (a division, as HF divides by the logit divisor: exact to the last bit)
void ref_div_scalar(float * x, float d, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] /= d;
}

// dst[r, :] = src[rows[r], :]
void ref_get_rows(float * dst, const float * src, const int32_t * rows, int64_t R, int64_t H) {
    for (int64_t r = 0; r < R; ++r)
        for (int64_t i = 0; i < H; ++i) dst[r * H + i] = src[int64_t(rows[r]) * H + i];
}

}  // namespace minicpm
