// MiniCPM4 forward pass (MINICPM4.md sections 3-4). Every constant comes from the config.
#include "model/minicpm4.h"

#include "core/status.h"

#include <algorithm>
#include <cmath>
#include <new>
#include <string>

namespace minicpm {

// LongRoPE table, HF order of f32 operations: theta_i(p) = (p * (1 / f_i)) * inv_i with
// inv_i = 1 / theta_base^(2i / d). HF builds its first cache for S = max_position_embeddings, so the long
// factors apply exactly when that exceeds original_max_position_embeddings. cos and sin carry mscale.
std::vector<float> build_rope_table(const model_config & cfg) {
    const int32_t hd = cfg.n_head_dim;
    const int32_t half = hd / 2;
    const bool use_long = cfg.n_ctx_orig > 0 && cfg.n_ctx_train > cfg.n_ctx_orig;
    const std::vector<float> & factors = use_long ? cfg.rope_long_factor : cfg.rope_short_factor;
    if (!factors.empty() && int32_t(factors.size()) != half)
        fail(MINICPM_STATUS_BAD_MODEL, "config.json: rope_scaling has " + std::to_string(factors.size()) +
                                           " factors, expected head_dim / 2 = " + std::to_string(half));
    const float mscale = cfg.rope_mscale();

    std::vector<float> inv(static_cast<size_t>(half)), rfac(static_cast<size_t>(half), 1.0f);
    for (int32_t i = 0; i < half; ++i) {
        const float expo = float(2 * i) / float(hd);
        inv[size_t(i)] = 1.0f / std::pow(cfg.rope_theta, expo);
        if (!factors.empty()) rfac[size_t(i)] = 1.0f / factors[size_t(i)];
    }
    std::vector<float> table(size_t(cfg.n_ctx_train) * size_t(hd));
    for (int32_t p = 0; p < cfg.n_ctx_train; ++p) {
        float * row = table.data() + size_t(p) * size_t(hd);
        for (int32_t i = 0; i < half; ++i) {
            const float theta = (float(p) * rfac[size_t(i)]) * inv[size_t(i)];
            row[2 * i] = float(std::cos(double(theta))) * mscale;
            row[2 * i + 1] = float(std::sin(double(theta))) * mscale;
        }
    }
    return table;
}

std::unique_ptr<model> model::load(const std::string & dir, bool use_mmap) {
    std::unique_ptr<model> m(new model());
    m->files_ = load_model_files(dir, use_mmap);
    const model_config & c = m->files_->config;
    if (c.n_ctx_train <= 0 || c.n_head_dim <= 0 || c.n_head_dim % 2 != 0)
        fail(MINICPM_STATUS_BAD_MODEL, dir + "/config.json: max_position_embeddings " + std::to_string(c.n_ctx_train) +
                                           " and head_dim " + std::to_string(c.n_head_dim) +
                                           " must be positive (head_dim even)");
    m->rope_ = build_rope_table(c);
    return m;
}

// Scratch buffers start 64 bytes apart (16 floats) relative to the start of the caller's vector.
static size_t round_up(size_t n) { return (n + 15) & ~size_t(15); }

void model::forward(const backend_ops & ops, thread_pool & tp, kv_pool & kv, const batch_view & batch, float * logits,
                    std::vector<float> & scratch) const {
    const model_config &  c = config();
    const model_weights & w = weights();
    const int64_t         T = batch.n_tokens;
    const int32_t         H = c.n_embd, nh = c.n_head, nkv = c.n_head_kv, hd = c.n_head_dim, F = c.n_ff;
    const int32_t         R = batch.n_logit_rows;

    // Checks that guard memory safety (the caller validated ids and capacity; a slip here must not read
    // outside the rope table or the batch).
    if (T <= 0 || batch.n_segs <= 0 || !batch.tokens || !batch.segs)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "forward: empty batch");
    if (R < 0 || (R > 0 && (!batch.logit_rows || !logits)))
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "forward: logit rows without a destination");
    int64_t covered = 0;
    for (int32_t s = 0; s < batch.n_segs; ++s) {
        const kv_segment & sg = batch.segs[s];
        if (sg.n_rows <= 0 || sg.row_begin < 0 || sg.row_begin + int64_t(sg.n_rows) > T || sg.n_past < 0 || !sg.blocks)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "forward: segment " + std::to_string(s) + " is malformed");
        if (int64_t(sg.n_past) + sg.n_rows > c.n_ctx_train)
            fail(MINICPM_STATUS_TOO_LARGE, "forward: position " +
                                               std::to_string(int64_t(sg.n_past) + sg.n_rows - 1) +
                                               " is beyond the model's " + std::to_string(c.n_ctx_train) +
                                               " positions");
        covered += sg.n_rows;
    }
    if (covered != T) fail(MINICPM_STATUS_INVALID_ARGUMENT, "forward: segments do not cover the batch");
    for (int32_t r = 0; r < R; ++r)
        if (batch.logit_rows[r] < 0 || batch.logit_rows[r] >= T ||
            (r > 0 && batch.logit_rows[r] <= batch.logit_rows[r - 1]))
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "forward: logit rows must be ascending batch rows");

    size_t off = 0;
    auto take = [&](size_t n) {
        const size_t at = off;
        off += round_up(n);
        return at;
    };
    const size_t o_x = take(size_t(T) * H), o_a = take(size_t(T) * H);
    const size_t o_q = take(size_t(T) * nh * hd), o_k = take(size_t(T) * nkv * hd), o_v = take(size_t(T) * nkv * hd);
    const size_t o_att = take(size_t(T) * nh * hd), o_o = take(size_t(T) * H);
    const size_t o_gate = take(size_t(T) * F), o_up = take(size_t(T) * F);
    const size_t o_pos = take(size_t(T));                    // int32 positions, see below
    const size_t o_rows = take(size_t(R > 0 ? R : 1) * H);  // the logit rows, gathered
    if (scratch.size() < off) scratch.resize(off);

    float * base = scratch.data();
    float * x = base + o_x;
    float * a = base + o_a;
    float * q = base + o_q;
    float * k = base + o_k;
    float * v = base + o_v;
    float * att = base + o_att;
    float * o = base + o_o;
    float * gate = base + o_gate;
    float * up = base + o_up;
    float * rows = base + o_rows;
    // int32 and float have the same size; placement new starts int32 objects in the float storage legally.
    int32_t * pos = new (base + o_pos) int32_t[size_t(T)];
    for (int32_t s = 0; s < batch.n_segs; ++s) {
        const kv_segment & sg = batch.segs[s];
        for (int32_t j = 0; j < sg.n_rows; ++j) pos[sg.row_begin + j] = sg.n_past + j;
    }

    const float rscale = c.residual_scale();
    const float attn_scale = 1.0f / std::sqrt(float(hd));

    auto cb = [&](const char * name, int32_t il, const float * data, int64_t n_rows, int64_t n_cols) {
        if (batch.hook) batch.hook(batch.hook_user, name, il, data, n_rows, n_cols);
    };

    ops.embed(tp, x, batch.tokens, w.embed, T, c.scale_emb);
    cb("inp_scaled", -1, x, T, H);
    for (int32_t il = 0; il < c.n_layer; ++il) {
        const layer_weights & lw = w.layers[size_t(il)];
        const kv_layer        kvl = kv.layer(il);

        ops.rms_norm(tp, a, x, lw.attn_norm, T, c.rms_norm_eps);
        cb("attn_norm", il, a, T, H);
        ops.matmul(tp, q, a, lw.wq, T);
        ops.matmul(tp, k, a, lw.wk, T);
        ops.matmul(tp, v, a, lw.wv, T);
        ops.rope(tp, q, pos, rope_.data(), T, nh, hd);
        ops.rope(tp, k, pos, rope_.data(), T, nkv, hd);
        cb("q_rope", il, q, T, int64_t(nh) * hd);
        cb("k_rope", il, k, T, int64_t(nkv) * hd);
        cb("v", il, v, T, int64_t(nkv) * hd);
        ops.kv_store(tp, kvl, k, v, batch.segs, batch.n_segs);  // keys are cached after RoPE
        ops.attention(tp, att, q, kvl, batch.segs, batch.n_segs, nh, attn_scale);
        cb("attn_out", il, att, T, int64_t(nh) * hd);
        ops.matmul(tp, o, att, lw.wo, T);
        cb("attn_proj", il, o, T, H);
        ops.add_scaled(tp, x, o, rscale, int64_t(T) * H);
        cb("ffn_inp", il, x, T, H);

        ops.rms_norm(tp, a, x, lw.ffn_norm, T, c.rms_norm_eps);
        cb("ffn_norm", il, a, T, H);
        ops.matmul(tp, gate, a, lw.w_gate, T);
        ops.matmul(tp, up, a, lw.w_up, T);
        ops.silu_mul(tp, gate, gate, up, int64_t(T) * F);
        cb("ffn_act", il, gate, T, F);
        ops.matmul(tp, o, gate, lw.w_down, T);
        cb("ffn_out", il, o, T, H);
        ops.add_scaled(tp, x, o, rscale, int64_t(T) * H);
        cb("l_out", il, x, T, H);
    }
    if (R == 0) return;

    // Only the requested rows pay for the final norm and the vocabulary-sized head.
    for (int32_t r = 0; r < R; ++r) {
        const float * src = x + size_t(batch.logit_rows[r]) * H;
        std::copy(src, src + H, rows + size_t(r) * H);
    }
    ops.rms_norm(tp, rows, rows, w.norm, R, c.rms_norm_eps);
    cb("result_norm", -1, rows, R, H);
    // HF divides the hidden state by hidden_size / dim_model_base before the head (exact for powers of two).
    const float divisor = c.logit_divisor();
    for (size_t i = 0; i < size_t(R) * H; ++i) rows[i] /= divisor;
    ops.matmul(tp, logits, rows, w.head, R);
    cb("result_output", -1, logits, R, c.n_vocab);
}

}  // namespace minicpm
