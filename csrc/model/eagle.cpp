// EAGLE head: loading in the published layout, FR-Spec head gathering, and the forward over backend ops.
#include "model/eagle.h"

#include "core/json.h"
#include "core/status.h"
#include "model/marlin.h"
#include "model/weights.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

namespace minicpm {

namespace {

std::string read_config(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(MINICPM_STATUS_IO, path + ": cannot open: " + std::strerror(errno));
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// An integer field of the head's config.json: absent -> dflt (< 0: required).
int32_t int_field(const json_value & root, const char * key, int32_t dflt, const std::string & src) {
    const json_value * v = root.find(key);
    if (v == nullptr || v->is_null()) {
        if (dflt < 0) fail(MINICPM_STATUS_BAD_MODEL, src + ": '" + key + "' is missing");
        return dflt;
    }
    if (!v->is_int || v->integer < 1 || v->integer > (int64_t(1) << 22))
        fail(MINICPM_STATUS_BAD_MODEL, src + ": '" + key + "' must be a positive integer");
    return int32_t(v->integer);
}

size_t round_up(size_t n) { return (n + 15) & ~size_t(15); }

}  // namespace

std::unique_ptr<eagle_head> eagle_head::load(const std::string & dir, const model & target, bool use_mmap) {
    const model_config & tc = target.config();
    auto files = std::shared_ptr<tensor_files>(open_tensor_files(dir, use_mmap));
    tensor_files & f = *files;
    if (!f.has("fc.weight") && !f.has("fc.qweight"))
        fail(MINICPM_STATUS_BAD_MODEL, f.listing() + ": no tensor 'fc.weight': not an EAGLE head in the "
                                                     "MiniCPM4-8B-Eagle-FRSpec layout (nor fc.qweight of its QAT -cpmcu form)");
    const std::string    src = dir + "/config.json";
    const std::string    text = read_config(src);
    const json_value     root = json_parse(text.data(), text.size(), src);
    if (!root.is_object()) fail(MINICPM_STATUS_BAD_MODEL, src + ": the top level must be a JSON object");

    std::unique_ptr<eagle_head> h(new eagle_head(target));
    model_config & c = h->cfg_;
    c = tc;  // vocabulary, positions and RoPE are the target's
    c.sparse = model_config::sparse_attention{};
    c.n_layer = int_field(root, "num_hidden_layers", 1, src);
    if (c.n_layer != 1)
        fail(MINICPM_STATUS_UNSUPPORTED, src + ": num_hidden_layers is " + std::to_string(c.n_layer) +
                                             "; an EAGLE head has one decoder layer");
    auto same = [&](const char * key, int32_t got, int32_t want) {
        if (got != want)
            fail(MINICPM_STATUS_BAD_MODEL, src + ": '" + key + "' is " + std::to_string(got) + ", the target has " +
                                               std::to_string(want) + " (this head belongs to another model)");
    };
    same("hidden_size", int_field(root, "hidden_size", -1, src), tc.n_embd);
    c.n_head = int_field(root, "num_attention_heads", -1, src);
    c.n_head_kv = int_field(root, "num_key_value_heads", c.n_head, src);
    c.n_head_dim = int_field(root, "head_dim", tc.n_embd / c.n_head, src);
    same("head_dim", c.n_head_dim, tc.n_head_dim);  // the target's RoPE table is shared
    if (c.n_head % c.n_head_kv != 0)
        fail(MINICPM_STATUS_BAD_MODEL, src + ": num_key_value_heads must divide num_attention_heads");
    c.n_ff = int_field(root, "intermediate_size", -1, src);
    if (root.find("vocab_size") != nullptr) same("vocab_size", int_field(root, "vocab_size", -1, src), tc.n_vocab);
    if (const json_value * e = root.find("rms_norm_eps"); e != nullptr && !e->is_null()) {
        if (!e->is_number() || !(e->number > 0.0))
            fail(MINICPM_STATUS_BAD_MODEL, src + ": 'rms_norm_eps' must be a positive number");
        c.rms_norm_eps = float(e->number);
    }
    // CPM.cu asserts that every MiniCPM scale the head names equals the target's.
    for (const char * key : {"scale_emb", "scale_depth", "dim_model_base"}) {
        const json_value * v = root.find(key);
        if (v == nullptr || v->is_null()) continue;
        const double want = std::string(key) == "scale_emb" ? tc.scale_emb
                            : std::string(key) == "scale_depth" ? tc.scale_depth
                                                                : double(tc.dim_model_base);
        if (!v->is_number() || std::fabs(v->number - want) > 1e-6 * std::fabs(want))
            fail(MINICPM_STATUS_BAD_MODEL, src + ": '" + key + "' differs from the target's (" + std::to_string(want) + ")");
    }
    h->rscale_ = tc.scale_depth / std::sqrt(float(tc.n_layer + 1));

    const int64_t H = c.n_embd, F = c.n_ff;
    const int64_t q = int64_t(c.n_head) * c.n_head_dim, kv = int64_t(c.n_head_kv) * c.n_head_dim;
    eagle_weights & w = h->w_;
    if (f.has("fc.qweight")) {  // CPM.cu's QAT head: fc1 (embedding half) and fc2 (hidden half) Marlin-packed
        const std::vector<tensor_desc> halves = f.bind_marlin("fc", {H, H}, H);  // concatenated on N
        w.fc = f.keep(q4_side_by_side(halves[0], halves[1], f.listing() + ": fc"));
    } else {
        w.fc = f.bind("fc.weight", {H, 2 * H});
    }
    const tensor_desc bias = f.bind("fc.bias", {H});
    w.norm1 = f.bind("input_norm1.weight", {H});
    w.norm2 = f.bind("input_norm2.weight", {H});
    layer_weights & L = w.layer;
    L.attn_norm = f.bind("layers.0.input_layernorm.weight", {H});
    L.ffn_norm = f.bind("layers.0.post_attention_layernorm.weight", {H});
    if (f.has("layers.0.self_attn.qkv_proj.qweight")) {  // the QAT head's layer in Marlin form, fused as the target's
        const auto qkv = f.bind_marlin("layers.0.self_attn.qkv_proj", {q, kv, kv}, H);
        const auto gu = f.bind_marlin("layers.0.mlp.gate_up_proj", {F, F}, H);
        L.wq = qkv[0], L.wk = qkv[1], L.wv = qkv[2], L.w_gate = gu[0], L.w_up = gu[1];
        L.wo = f.bind_marlin("layers.0.self_attn.o_proj", {H}, q)[0];
        L.w_down = f.bind_marlin("layers.0.mlp.down_proj", {H}, F)[0];
    } else {
        L.wq = f.bind("layers.0.self_attn.q_proj.weight", {q, H});
        L.wk = f.bind("layers.0.self_attn.k_proj.weight", {kv, H});
        L.wv = f.bind("layers.0.self_attn.v_proj.weight", {kv, H});
        L.wo = f.bind("layers.0.self_attn.o_proj.weight", {H, q});
        L.w_gate = f.bind("layers.0.mlp.gate_proj.weight", {F, H});
        L.w_up = f.bind("layers.0.mlp.up_proj.weight", {F, H});
        L.w_down = f.bind("layers.0.mlp.down_proj.weight", {H, F});
    }
    for (const std::string & n : f.names()) {
        const bool known = n == "embed_tokens.weight" || n.rfind("fc.", 0) == 0 || n.rfind("input_norm", 0) == 0 ||
                           n.rfind("layers.0.", 0) == 0 || n.find("rotary_emb") != std::string::npos;
        if (!known)
            fail(MINICPM_STATUS_BAD_MODEL, f.listing() + ": unexpected tensor '" + n + "' (an EAGLE head has fc, "
                                                         "input_norm1/2 and layers.0 only)");
    }

    backend_options o;
    o.n_threads = 1;
    h->loader_ = minicpm::make_backend(target.backend_type(), o);
    std::vector<tensor_desc *> all = {&w.fc, &w.norm1, &w.norm2, &L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo,
                                      &L.ffn_norm, &L.w_gate, &L.w_up, &L.w_down};
    size_t n_parts = 0;
    for (const tensor_desc * t : all) n_parts += 1 + (t->scales ? 1 : 0);
    h->placed_.reserve(n_parts);  // descriptors point at these buffers
    auto place = [&](const void * host, size_t bytes) -> const buffer & {
        h->placed_.push_back(h->loader_->import_weights(host, bytes));
        return h->placed_.back();
    };
    for (tensor_desc * t : all) {
        const buffer & b = place(t->data, t->data_bytes());
        t->data = b.data;
        t->buf = &b;
        // Marlin parts are symmetric without a permutation: scales are the only other part
        if (t->scales) t->scales = place(t->scales, size_t(t->rows * t->n_groups()) * dtype_size(t->scale_type)).data;
    }
    std::vector<float> b(static_cast<size_t>(H));
    for (int64_t i = 0; i < H; ++i) {
        const uint8_t * p = (const uint8_t *) bias.data;
        b[size_t(i)] = bias.type == dtype::f32 ? ((const float *) p)[i]
                       : bias.type == dtype::f16 ? f16_to_f32(((const uint16_t *) p)[i])
                                                 : bf16_to_f32(((const uint16_t *) p)[i]);
    }
    h->bias_ = h->loader_->alloc(size_t(H) * sizeof(float), buffer_usage::weights);
    h->loader_->upload(h->bias_, 0, b.data(), b.size() * sizeof(float));
    w.head = target.weights().head;
    h->files_ = files;  // a host backend keeps pointing into the mapping
    return h;
}

eagle_head::~eagle_head() {
    if (!loader_) return;
    for (buffer & b : placed_) loader_->release(b);
    loader_->release(bias_);
    loader_->release(fr_head_);
    loader_->release(fr_prepared_);
}

void eagle_head::restrict_vocab(const std::vector<int32_t> & ids, int32_t n) {
    const tensor_desc & full = target_.weights().head;
    const int32_t       V = cfg_.n_vocab;
    if (n <= 0 || n > int32_t(ids.size())) n = int32_t(ids.size());
    loader_->release(fr_head_);
    loader_->release(fr_prepared_);
    remap_.clear();
    w_.head = full;
    if (n == 0) return;
    std::vector<char> seen(size_t(V), 0);
    for (int32_t j = 0; j < n; ++j) {
        const int32_t id = ids[size_t(j)];
        if (id < 0 || id >= V)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "draft vocabulary: entry " + std::to_string(j) + " = " +
                                                      std::to_string(id) + " is outside [0, " + std::to_string(V) + ")");
        if (seen[size_t(id)])
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "draft vocabulary: id " + std::to_string(id) + " is listed twice");
        seen[size_t(id)] = 1;
    }
    // One compact [n, H] matrix in the head's own format: data rows, then scales and zero points per row.
    const int64_t G = full.n_groups();
    if (full.type == dtype::q4 && full.cols % 2 != 0)
        fail(MINICPM_STATUS_UNSUPPORTED, "draft vocabulary: a q4 LM head with an odd row length cannot be gathered");
    const size_t data_row = full.data_bytes() / size_t(full.rows);  // whole bytes: q4 rows are even
    const size_t scale_row = full.scales ? size_t(G) * dtype_size(full.scale_type) : 0;
    const size_t zero_row = full.zeros ? size_t(G) : 0;
    const size_t at_scales = round_up(size_t(n) * data_row) * 4, at_zeros = at_scales + round_up(size_t(n) * scale_row) * 4;
    std::vector<uint8_t> host(at_zeros + size_t(n) * zero_row);
    auto offset_in = [&](const void * p) { return size_t((const uint8_t *) p - (const uint8_t *) full.buf->data); };
    for (int32_t j = 0; j < n; ++j) {
        const size_t r = size_t(ids[size_t(j)]);
        if (full.buf != nullptr) {
            loader_->download(host.data() + size_t(j) * data_row, *full.buf, offset_in(full.data) + r * data_row, data_row);
        } else {
            std::memcpy(host.data() + size_t(j) * data_row, (const uint8_t *) full.data + r * data_row, data_row);
        }
    }
    // Quantization parts are host memory on the CPU backend; the gathered head is only built there for them.
    if (full.scales) {
        if (!loader_->host_memory())
            fail(MINICPM_STATUS_UNSUPPORTED, "draft vocabulary: gathering a quantized LM head needs the CPU backend");
        for (int32_t j = 0; j < n; ++j) {
            const size_t r = size_t(ids[size_t(j)]);
            std::memcpy(host.data() + at_scales + size_t(j) * scale_row, (const uint8_t *) full.scales + r * scale_row, scale_row);
            if (full.zeros) std::memcpy(host.data() + at_zeros + size_t(j) * zero_row, full.zeros + r * zero_row, zero_row);
        }
    }
    fr_head_ = loader_->alloc(host.size(), buffer_usage::weights);
    loader_->upload(fr_head_, 0, host.data(), host.size());
    tensor_desc d = full;
    d.rows = n;
    d.buf = &fr_head_;
    d.data = fr_head_.data;
    if (full.scales) d.scales = (const uint8_t *) fr_head_.data + at_scales;
    if (full.zeros) d.zeros = (const uint8_t *) fr_head_.data + at_zeros;
    // The full head's prepared copy holds the full head's rows: the compact one gets its own.
    d.packed = nullptr;
    if (d.quantized()) {
        fr_prepared_ = loader_->prepare_weights(d);
        d.packed = fr_prepared_.data;
    }
    w_.head = d;
    remap_.assign(ids.begin(), ids.begin() + n);
}

void eagle_head::forward(backend & be, eagle_workspace & ws, kv_pool & kv, const kv_segment & sg,
                         const int32_t * tokens, const float * hidden, const int32_t * pos, int32_t T, float * feat,
                         const int32_t * logit_rows, int32_t R, float * logits) const {
    const model_config &  tc = target_.config();
    const model_weights & tw = target_.weights();
    const layer_weights & L = w_.layer;
    const int32_t H = cfg_.n_embd, nh = cfg_.n_head, nkv = cfg_.n_head_kv, hd = cfg_.n_head_dim, F = cfg_.n_ff;
    const int32_t NV = vocab_size();
    if (T <= 0 || sg.row_begin != 0 || sg.n_rows != T || (sg.mask != nullptr && T > k_max_tree_rows))
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "eagle forward: the segment must cover the T rows");
    for (int32_t t = 0; t < T; ++t)
        if (pos[t] < 0 || pos[t] >= tc.n_ctx_train)
            fail(MINICPM_STATUS_TOO_LARGE, "eagle forward: position " + std::to_string(pos[t]) + " out of range");
    for (int32_t r = 0; r < R; ++r)
        if (logit_rows[r] < 0 || logit_rows[r] >= T || (r > 0 && logit_rows[r] <= logit_rows[r - 1]))
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "eagle forward: logit rows must be ascending rows");

    size_t off = 0;
    auto   take = [&](size_t n) {
        const size_t at = off;
        off += round_up(n);
        return at;
    };
    const bool   direct = be.host_memory();
    const size_t o_x = take(size_t(T) * H), o_a = take(size_t(T) * H), o_s = take(size_t(2 * T) * H);
    const size_t o_cat = take(size_t(2 * T) * H), o_q = take(size_t(T) * nh * hd), o_k = take(size_t(T) * nkv * hd);
    const size_t o_v = take(size_t(T) * nkv * hd), o_att = take(size_t(T) * nh * hd), o_o = take(size_t(T) * H);
    const size_t o_gate = take(size_t(T) * F), o_up = take(size_t(T) * F);
    const size_t o_tok = take(size_t(T)), o_pos = take(size_t(T)), o_idx = take(size_t(2 * T));
    const size_t o_rid = take(size_t(R > 0 ? R : 1)), o_rows = take(size_t(R > 0 ? R : 1) * H);
    const size_t o_logits = take(direct ? 0 : size_t(R) * size_t(NV));
    if (ws.buf.size < off * sizeof(float)) {
        be.release(ws.buf);
        ws.buf = be.alloc(off * sizeof(float), buffer_usage::compute);
    }
    float * base = (float *) ws.buf.data;
    float *x = base + o_x, *a = base + o_a, *s = base + o_s, *cat = base + o_cat, *q = base + o_q, *k = base + o_k;
    float *v = base + o_v, *att = base + o_att, *o = base + o_o, *gate = base + o_gate, *up = base + o_up;
    float * rows = base + o_rows;
    const int32_t * tok = (const int32_t *) (base + o_tok);
    const int32_t * ps = (const int32_t *) (base + o_pos);
    const int32_t * idx = (const int32_t *) (base + o_idx);
    const int32_t * rid = (const int32_t *) (base + o_rid);
    // [T, 2H] input of fc = rows (t, T + t) of s: the normed embedding half first, as the checkpoint's fc.
    ws.idx.resize(size_t(2 * T));
    for (int32_t t = 0; t < T; ++t) ws.idx[size_t(2 * t)] = t, ws.idx[size_t(2 * t + 1)] = T + t;
    be.upload(ws.buf, o_tok * 4, tokens, size_t(T) * 4);
    be.upload(ws.buf, o_pos * 4, pos, size_t(T) * 4);
    be.upload(ws.buf, o_idx * 4, ws.idx.data(), size_t(2 * T) * 4);
    be.upload(ws.buf, (o_s + size_t(T) * H) * 4, hidden, size_t(T) * H * 4);
    if (R > 0) be.upload(ws.buf, o_rid * 4, logit_rows, size_t(R) * 4);

    be.embed(s, tok, tw.embed, T, tc.scale_emb);
    be.rms_norm(s, s, w_.norm1, T, cfg_.rms_norm_eps);
    be.rms_norm(s + size_t(T) * H, s + size_t(T) * H, w_.norm2, T, cfg_.rms_norm_eps);
    be.get_rows(cat, s, idx, 2 * T, H);
    be.matmul(x, cat, w_.fc, T);
    for (int32_t t = 0; t < T; ++t) be.add_scaled(x + size_t(t) * H, (const float *) bias_.data, 1.0f, H);

    const kv_layer kvl = kv.layer(0);
    be.rms_norm(a, x, L.attn_norm, T, cfg_.rms_norm_eps);
    be.matmul(q, a, L.wq, T);
    be.matmul(k, a, L.wk, T);
    be.matmul(v, a, L.wv, T);
    be.rope(q, ps, target_.rope_table(), T, nh, hd);
    be.rope(k, ps, target_.rope_table(), T, nkv, hd);
    be.kv_store(kvl, k, v, &sg, 1);
    be.attention(att, q, kvl, &sg, 1, nh, 1.0f / std::sqrt(float(hd)));
    be.matmul(o, att, L.wo, T);
    be.add_scaled(x, o, rscale_, int64_t(T) * H);
    be.rms_norm(a, x, L.ffn_norm, T, cfg_.rms_norm_eps);
    be.matmul(gate, a, L.w_gate, T);
    be.matmul(up, a, L.w_up, T);
    be.silu_mul(gate, gate, up, int64_t(T) * F);
    be.matmul(o, gate, L.w_down, T);
    be.add_scaled(x, o, rscale_, int64_t(T) * H);
    be.download(feat, ws.buf, o_x * 4, size_t(T) * H * 4);
    if (R > 0) {
        be.get_rows(rows, x, rid, R, H);
        if (direct) {
            be.matmul(logits, rows, w_.head, R);
        } else {
            be.matmul(base + o_logits, rows, w_.head, R);
            be.download(logits, ws.buf, o_logits * 4, size_t(R) * size_t(NV) * 4);
        }
    }
    be.synchronize();
}

}  // namespace minicpm
