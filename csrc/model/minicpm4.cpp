// MiniCPM4 forward pass (MINICPM4.md sections 3-4). Every constant comes from the config.
#include "model/minicpm4.h"

#include "core/status.h"
#include "model/save.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <atomic>
#include <mutex>
#include <new>
#include <thread>
#include <string>

namespace minicpm {

// Steps of at most this many rows (decode batches, small verify trees) may run as step graphs.
constexpr int64_t k_graph_max_rows = 64;

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

int32_t sparse_stale_from(const kv_pool & kv, const kv_segment & sg) {
    const int64_t n_end = int64_t(sg.n_past) + sg.n_rows;
    for (int32_t b = 0; int64_t(b) * MINICPM_KV_BLOCK_SIZE < n_end; ++b) {
        const int32_t filled = int32_t(std::min<int64_t>(MINICPM_KV_BLOCK_SIZE, n_end - int64_t(b) * MINICPM_KV_BLOCK_SIZE));
        const int32_t valid = kv.side_valid(sg.blocks[b]);
        if (valid < filled) return b * MINICPM_KV_BLOCK_SIZE + valid;
    }
    return int32_t(n_end);
}

void sparse_mark_valid(kv_pool & kv, const kv_segment & sg, int32_t from) {
    const int64_t n_end = int64_t(sg.n_past) + sg.n_rows;
    for (int32_t b = from / MINICPM_KV_BLOCK_SIZE; int64_t(b) * MINICPM_KV_BLOCK_SIZE < n_end; ++b)
        kv.set_side_valid(sg.blocks[b], int32_t(std::min<int64_t>(MINICPM_KV_BLOCK_SIZE,
                                                                   n_end - int64_t(b) * MINICPM_KV_BLOCK_SIZE)));
}

std::unique_ptr<model> model::load(const std::string & dir, const model_load_options & opts) {
    const backend_kind kind = resolve_backend(opts.backend);
    std::unique_ptr<model> m(new model());
    m->files_ = load_model_files(dir, opts.use_mmap);
    apply_sparse_mode(m->files_->config, opts.sparse, dir + "/config.json");
    m->dir_ = dir;
    const model_config & c = m->files_->config;
    if (c.n_ctx_train <= 0 || c.n_head_dim <= 0 || c.n_head_dim % 2 != 0)
        fail(MINICPM_STATUS_BAD_MODEL, dir + "/config.json: max_position_embeddings " + std::to_string(c.n_ctx_train) +
                                           " and head_dim " + std::to_string(c.n_head_dim) +
                                           " must be positive (head_dim even)");
    m->warnings_ = c.warnings;
    m->kind_ = kind;
    m->step_graphs_ = opts.cuda_graphs;
    backend_options o;
    o.n_threads = 1;
    o.memory_limit = opts.device_memory;
    m->loader_ = minicpm::make_backend(kind, o);
    if (opts.quantize != 0) m->quantize_weights(opts);
    m->place_weights();
    const std::vector<float> table = build_rope_table(c);
    m->rope_ = m->loader_->alloc(table.size() * sizeof(float), buffer_usage::weights);
    m->loader_->upload(m->rope_, 0, table.data(), table.size() * sizeof(float));
    return m;
}

void model::save(const std::string & out_dir) const {
    if (kind_ != backend_kind::cpu)
        fail(MINICPM_STATUS_UNSUPPORTED, "save: the weights live on the " + std::string(backend_kind_name(kind_)) +
                                             " backend; load the model on the CPU backend to save it");
    save_quantized(files_->weights, files_->config, dir_, out_dir);
}

model::~model() {
    if (!loader_) return;
    loader_->release(rope_);
    for (buffer & b : imported_) loader_->release(b);
}

// On-the-fly round-to-nearest quantization of the plain projections (and the head when asked), one task per
// tensor over the hardware threads; the host copies live in files_->converted until the model is freed.
void model::quantize_weights(const model_load_options & opts) {
    model_weights & w = files_->weights;
    const dtype     fmt = dtype(opts.quantize);
    struct job {
        tensor_desc * t;
        std::string   name;
        quantized_tensor * out = nullptr;
    };
    std::vector<job> jobs;
    for (size_t l = 0; l < w.layers.size(); ++l) {
        layer_weights &   L = w.layers[l];
        const std::string p = "model.layers." + std::to_string(l) + ".";
        const std::pair<tensor_desc *, const char *> mats[] = {
            {&L.wq, "self_attn.q_proj"}, {&L.wk, "self_attn.k_proj"}, {&L.wv, "self_attn.v_proj"},
            {&L.wo, "self_attn.o_proj"}, {&L.w_gate, "mlp.gate_proj"}, {&L.w_up, "mlp.up_proj"},
            {&L.w_down, "mlp.down_proj"}};
        for (const auto & m : mats)
            if (!m.first->quantized()) jobs.push_back({m.first, p + m.second});
    }
    const bool tied = w.head.data == w.embed.data;
    if (opts.quantize_head && !w.head.quantized())
        jobs.push_back({tied ? &w.embed : &w.head, tied ? "model.embed_tokens" : "lm_head"});
    for (job & j : jobs) {
        files_->converted.emplace_back();
        j.out = &files_->converted.back();
    }
    std::atomic<size_t> next{0};
    std::vector<std::thread> threads;
    std::mutex  err_mu;
    std::string err;
    int32_t     err_status = 0;
    const unsigned n_threads = std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(), 16));
    for (unsigned i = 0; i < n_threads; ++i)
        threads.emplace_back([&]() {
            for (size_t k; (k = next.fetch_add(1)) < jobs.size();) {
                try {
                    *jobs[k].out = quantize_rtn(*jobs[k].t, fmt, opts.quant_group_size, jobs[k].name);
                } catch (const error & e) {
                    std::lock_guard<std::mutex> lk(err_mu);
                    if (err.empty()) err = e.what(), err_status = e.status();
                }
            }
        });
    for (std::thread & t : threads) t.join();
    if (!err.empty()) fail(err_status, err);
    for (job & j : jobs) *j.t = j.out->desc();
    if (tied && opts.quantize_head) w.head = w.embed;
}

// Every weight tensor (and its quantization parts) goes into a buffer of the model's backend; the descriptors
// then point into those buffers. On the CPU this wraps the mapped files in place.
void model::place_weights() {
    model_weights & w = files_->weights;
    std::vector<tensor_desc *> all = {&w.embed, &w.norm};
    if (w.head.data != w.embed.data) all.push_back(&w.head);
    for (layer_weights & L : w.layers)
        for (tensor_desc * t : {&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo, &L.ffn_norm, &L.w_gate, &L.w_up, &L.w_down})
            all.push_back(t);
    size_t n_parts = 0;
    for (const tensor_desc * t : all)  // data, its quantization parts and a prepared copy
        n_parts += 1 + (t->scales ? 1 : 0) + (t->zeros ? 1 : 0) + (t->perm ? 1 : 0) + (t->quantized() ? 1 : 0);
    imported_.reserve(n_parts);  // descriptors keep pointers to these buffers: no reallocation
    auto place = [&](const void * host, size_t bytes) -> const buffer & {
        imported_.push_back(loader_->import_weights(host, bytes));
        return imported_.back();
    };
    for (tensor_desc * t : all) {
        const int64_t g = t->rows * t->n_groups();
        const buffer & b = place(t->data, t->data_bytes());
        t->data = b.data;
        t->buf = &b;
        if (t->scales) t->scales = place(t->scales, size_t(g) * dtype_size(t->scale_type)).data;
        if (t->zeros) t->zeros = (const uint8_t *) place(t->zeros, size_t(g)).data;
        if (t->perm) t->perm = (const int32_t *) place(t->perm, size_t(t->cols) * 4).data;
        if (t->quantized()) {
            buffer p = loader_->prepare_weights(*t);
            if (p.data) {
                imported_.push_back(p);
                t->packed = p.data;
            }
        }
    }
    if (w.head.data == nullptr || files_->config.tie_word_embeddings) w.head = w.embed;
    // A projection with a prepared copy is read from it alone: its stored rows go (heap freed, mapped pages
    // dropped; a device backend's copy of them released) and saving reads them back from the copy (CPU). The
    // embedding keeps them for its row lookups, and with it a tied or quantized head, which FR-Spec gathers
    // rows from.
    for (layer_weights & L : w.layers)
        for (tensor_desc * t : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
            if (t->packed != nullptr && t->data != w.embed.data && t->data != w.head.data) {
                if (loader_->host_memory()) {
                    files_->release_data(t->data, t->data_bytes());
                } else {
                    for (buffer & b : imported_)
                        if (b.data == t->data) loader_->release(b);
                    t->buf = nullptr;
                }
                t->data = nullptr;
            }
    // Sizes as placed (after any conversion): what a decode step reads.
    w.n_bytes = 0;
    for (const tensor_desc * t : all) w.n_bytes += t->bytes();
    w.weight_type = w.layers.empty() ? w.embed.type : w.layers[0].wq.type;
}

std::unique_ptr<backend> model::make_backend(const backend_options & opts) const {
    backend_options o = opts;
    o.step_graphs = step_graphs_;
    return minicpm::make_backend(kind_, o);
}

void model::release_workspace(backend & be, forward_workspace & ws) const { be.release(ws.buf); }

// Activations start 64 bytes apart inside the workspace.
static size_t round_up(size_t n) { return (n + 15) & ~size_t(15); }

// The forward workspace for T rows and R logit rows, in floats (int32 inputs take float-sized slots).
struct workspace_layout {
    size_t x, a, q, k, v, att, o, gate, up, tok, pos, rid, rows, logits, total;
};

static workspace_layout layout_workspace(const model_config & c, int64_t T, int32_t R, bool logits) {
    const size_t H = size_t(c.n_embd), F = size_t(c.n_ff), hd = size_t(c.n_head_dim);
    const size_t Rn = size_t(R > 0 ? R : 1);
    workspace_layout L{};
    size_t off = 0;
    auto take = [&](size_t n) {
        const size_t at = off;
        off += round_up(n);
        return at;
    };
    L.x = take(size_t(T) * H);
    L.a = take(size_t(T) * H);
    L.q = take(size_t(T) * size_t(c.n_head) * hd);
    L.k = take(size_t(T) * size_t(c.n_head_kv) * hd);
    L.v = take(size_t(T) * size_t(c.n_head_kv) * hd);
    L.att = take(size_t(T) * size_t(c.n_head) * hd);
    L.o = take(size_t(T) * H);
    L.gate = take(size_t(T) * F);
    L.up = take(size_t(T) * F);
    L.tok = take(size_t(T));
    L.pos = take(size_t(T));
    L.rid = take(Rn);
    L.rows = take(Rn * H);
    L.logits = take(logits ? size_t(R) * size_t(c.n_vocab) : 0);
    L.total = off;
    return L;
}

size_t model::workspace_bytes(int64_t T, int32_t R) const {
    return layout_workspace(config(), T, R, true).total * sizeof(float);
}

void model::forward(backend & be, forward_workspace & ws, kv_pool & kv, const batch_view & batch,
                    float * logits) const {
    const model_config &  c = config();
    const model_weights & w = weights();
    const int64_t         T = batch.n_tokens;
    const int32_t         H = c.n_embd, nh = c.n_head, nkv = c.n_head_kv, hd = c.n_head_dim, F = c.n_ff;
    const int32_t         R = batch.n_logit_rows;

    // Checks that guard memory safety (the caller validated ids and capacity; a slip here must not read
    // outside the rope table, the batch or the pool).
    if (T <= 0 || batch.n_segs <= 0 || !batch.tokens || !batch.segs)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "forward: empty batch");
    const bool   direct = be.host_memory();  // the head writes straight into the caller's logits
    const bool   keep = batch.logits_on_device && !direct;
    ws.logits = nullptr;
    if (R < 0 || (R > 0 && (!batch.logit_rows || (!logits && !keep))))
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "forward: logit rows without a destination");
    ws.pos.resize(size_t(T));
    int64_t covered = 0;
    for (int32_t s = 0; s < batch.n_segs; ++s) {
        const kv_segment & sg = batch.segs[s];
        if (sg.n_rows <= 0 || sg.row_begin < 0 || sg.row_begin + int64_t(sg.n_rows) > T || sg.n_past < 0 || !sg.blocks)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "forward: segment " + std::to_string(s) + " is malformed");
        if (sg.mask != nullptr) {
            if (sg.n_rows > k_max_tree_rows)
                fail(MINICPM_STATUS_INVALID_ARGUMENT, "forward: segment " + std::to_string(s) + " has " +
                                                          std::to_string(sg.n_rows) + " masked rows; at most " +
                                                          std::to_string(k_max_tree_rows));
            for (int32_t j = 0; j < sg.n_rows; ++j)
                if (j < 64 && (sg.mask[j] >> j) != 0)
                    fail(MINICPM_STATUS_INVALID_ARGUMENT, "forward: mask of row " + std::to_string(j) +
                                                              " of segment " + std::to_string(s) +
                                                              " names itself or a later row");
        }
        for (int32_t j = 0; j < sg.n_rows; ++j) {
            const int64_t p = batch.pos ? batch.pos[sg.row_begin + j] : int64_t(sg.n_past) + j;
            if (p < 0 || p >= c.n_ctx_train)
                fail(MINICPM_STATUS_TOO_LARGE, "forward: position " + std::to_string(p) +
                                                   " is outside the model's " + std::to_string(c.n_ctx_train) +
                                                   " positions");
            ws.pos[size_t(sg.row_begin + j)] = int32_t(p);
        }
        covered += sg.n_rows;
    }
    if (covered != T) fail(MINICPM_STATUS_INVALID_ARGUMENT, "forward: segments do not cover the batch");

    // InfLLM v2 (INFLLM_V2.md): rows whose slot p has p + 1 < dense_len run the dense op, the others the sparse
    // op (the per-query switch, so the logits do not depend on how a prompt is chunked). The compressed keys of
    // every unmasked segment are kept current for all layers, from the first stale slot on; those of a token
    // tree's sequence up to its committed slots only (tree rows may be rejected).
    const bool sparse = c.sparse.enabled;
    const sparse_attn_params sp = c.sparse.params();
    ws.dense_segs.clear();
    ws.sparse_segs.clear();
    ws.comp_segs.clear();
    ws.comp_from.clear();
    if (sparse) {
        for (int32_t s = 0; s < batch.n_segs; ++s) {
            const kv_segment & sg = batch.segs[s];
            const int32_t n_dense = std::clamp(sp.dense_len - 1 - sg.n_past, 0, sg.n_rows);  // rows with p+1 < dense_len
            if (sg.mask != nullptr) {
                // A tree row's p is n_past + its ancestors (the slot plain decoding gives it). Rows below
                // dense_len there take the dense op; the sparse op runs the others after it (core/backend.h),
                // over compressed caches of the committed slots only.
                bool any_dense = false, any_sparse = false;
                for (int32_t j = 0; j < sg.n_rows; ++j) {  // masks name earlier rows only (checked above)
                    const bool dense = int64_t(sg.n_past) + __builtin_popcountll(sg.mask[j]) + 1 < sp.dense_len;
                    any_dense |= dense;
                    any_sparse |= !dense;
                }
                if (any_dense) ws.dense_segs.push_back(sg);
                if (any_sparse) {
                    kv_segment committed = sg;
                    committed.n_rows = 0;
                    committed.mask = nullptr;
                    ws.comp_segs.push_back(committed);
                    ws.comp_from.push_back(sparse_stale_from(kv, committed));
                    ws.sparse_segs.push_back(sg);
                }
                continue;
            }
            ws.comp_segs.push_back(sg);
            ws.comp_from.push_back(sparse_stale_from(kv, sg));
            if (n_dense > 0) {
                kv_segment d = sg;
                d.n_rows = n_dense;
                ws.dense_segs.push_back(d);
            }
            if (n_dense < sg.n_rows) {
                kv_segment x = sg;
                x.row_begin += n_dense;
                x.n_past += n_dense;
                x.n_rows -= n_dense;
                ws.sparse_segs.push_back(x);
            }
        }
    }
    for (int32_t r = 0; r < R; ++r)
        if (batch.logit_rows[r] < 0 || batch.logit_rows[r] >= T ||
            (r > 0 && batch.logit_rows[r] <= batch.logit_rows[r - 1]))
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "forward: logit rows must be ascending batch rows");

    const workspace_layout L = layout_workspace(c, T, R, !direct);
    const size_t o_x = L.x, o_a = L.a, o_q = L.q, o_k = L.k, o_v = L.v, o_att = L.att, o_o = L.o;
    const size_t o_gate = L.gate, o_up = L.up, o_tok = L.tok, o_pos = L.pos, o_rid = L.rid, o_rows = L.rows;
    const size_t o_logits = L.logits;
    if (ws.buf.size < L.total * sizeof(float)) {
        be.release(ws.buf);
        ws.buf = be.alloc(L.total * sizeof(float), buffer_usage::compute);
    }

    float * base = (float *) ws.buf.data;
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
    const int32_t * tok = (const int32_t *) (base + o_tok);
    const int32_t * pos = (const int32_t *) (base + o_pos);
    const int32_t * rid = (const int32_t *) (base + o_rid);
    const float rscale = c.residual_scale();
    const float attn_scale = 1.0f / std::sqrt(float(hd));
    float *     out = base + o_logits;

    auto cb = [&](const char * name, int32_t il, const float * data, int64_t n_rows, int64_t n_cols) {
        if (!batch.hook) return;
        ws.hook_copy.resize(size_t(n_rows * n_cols));
        be.download(ws.hook_copy.data(), ws.buf, size_t((const uint8_t *) data - (const uint8_t *) ws.buf.data),
                    ws.hook_copy.size() * sizeof(float));
        batch.hook(batch.hook_user, name, il, ws.hook_copy.data(), n_rows, n_cols);
    };

    // The step's ops up to the logits. timed: attention time is measured (a synchronize per layer), which a
    // step graph cannot hold.
    auto issue = [&](bool timed) {
        be.upload(ws.buf, o_tok * 4, batch.tokens, size_t(T) * 4);
        be.upload(ws.buf, o_pos * 4, ws.pos.data(), size_t(T) * 4);
        if (R > 0) be.upload(ws.buf, o_rid * 4, batch.logit_rows, size_t(R) * 4);
        be.embed(x, tok, w.embed, T, c.scale_emb);
        cb("inp_scaled", -1, x, T, H);
        for (int32_t il = 0; il < c.n_layer; ++il) {
            const layer_weights & lw = w.layers[size_t(il)];
            const kv_layer        kvl = kv.layer(il);

            be.rms_norm(a, x, lw.attn_norm, T, c.rms_norm_eps);
            cb("attn_norm", il, a, T, H);
            be.matmul(q, a, lw.wq, T);
            be.matmul(k, a, lw.wk, T);
            be.matmul(v, a, lw.wv, T);
            be.rope(q, pos, rope_table(), T, nh, hd);
            be.rope(k, pos, rope_table(), T, nkv, hd);
            cb("q_rope", il, q, T, int64_t(nh) * hd);
            cb("k_rope", il, k, T, int64_t(nkv) * hd);
            cb("v", il, v, T, int64_t(nkv) * hd);
            be.kv_store(kvl, k, v, batch.segs, batch.n_segs);  // keys are cached after RoPE
            const auto t_attn = std::chrono::steady_clock::now();
            if (ws.sparse_segs.empty() && ws.comp_segs.empty()) {
                be.attention(att, q, kvl, batch.segs, batch.n_segs, nh, attn_scale);
            } else {
                const kv_compressed cc = kv.compressed(il);
                if (!ws.comp_segs.empty())
                    be.kv_compress(cc, kvl, ws.comp_segs.data(), ws.comp_from.data(), int32_t(ws.comp_segs.size()));
                if (!ws.dense_segs.empty())
                    be.attention(att, q, kvl, ws.dense_segs.data(), int32_t(ws.dense_segs.size()), nh, attn_scale);
                if (!ws.sparse_segs.empty())
                    be.sparse_attention(att, q, kvl, cc, ws.sparse_segs.data(), int32_t(ws.sparse_segs.size()), nh,
                                        attn_scale, sp, nullptr, 0);
            }
            if (timed) {
                be.synchronize();
                ws.attn_us +=
                    std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t_attn)
                        .count();
            }
            cb("attn_out", il, att, T, int64_t(nh) * hd);
            be.matmul(o, att, lw.wo, T);
            cb("attn_proj", il, o, T, H);
            be.add_scaled(x, o, rscale, int64_t(T) * H);
            cb("ffn_inp", il, x, T, H);

            be.rms_norm(a, x, lw.ffn_norm, T, c.rms_norm_eps);
            cb("ffn_norm", il, a, T, H);
            be.matmul(gate, a, lw.w_gate, T);
            be.matmul(up, a, lw.w_up, T);
            be.silu_mul(gate, gate, up, int64_t(T) * F);
            cb("ffn_act", il, gate, T, F);
            be.matmul(o, gate, lw.w_down, T);
            cb("ffn_out", il, o, T, H);
            be.add_scaled(x, o, rscale, int64_t(T) * H);
            cb("l_out", il, x, T, H);
        }
        for (size_t i = 0; i < ws.comp_segs.size(); ++i) sparse_mark_valid(kv, ws.comp_segs[i], ws.comp_from[i]);
        if (batch.hidden != nullptr) {
            be.rms_norm(a, x, w.norm, T, c.rms_norm_eps);
            be.download(batch.hidden, ws.buf, o_a * sizeof(float), size_t(T) * H * sizeof(float));
        }
        if (R == 0) return;
        // Only the requested rows pay for the final norm and the vocabulary-sized head.
        be.get_rows(rows, x, rid, R, H);
        be.rms_norm(rows, rows, w.norm, R, c.rms_norm_eps);
        cb("result_norm", -1, rows, R, H);
        // HF divides the hidden state by hidden_size / dim_model_base before the head.
        be.div_scalar(rows, c.logit_divisor(), int64_t(R) * H);
        if (direct) return;
        be.matmul(out, rows, w.head, R);
        cb("result_output", -1, out, R, c.n_vocab);
    };

    // A small step without host read-backs (hook, hidden states) or sparse ops may run as a step graph of
    // the backend, keyed by its workspace (a drafter's forward shares the engine's backend) and its row and
    // logit-row counts (which place the activations in the workspace); when the backend does not take it, or
    // the graph cannot run, the same ops are issued directly.
    const bool graphable = !direct && T <= k_graph_max_rows && !batch.hook && !batch.hidden &&
                           ws.sparse_segs.empty() && ws.comp_segs.empty();
    const int64_t graph_key = int64_t((uint64_t(uintptr_t(&ws)) * 0x9E3779B97F4A7C15ull) ^ uint64_t(T << 20 | R));
    bool ran = false;
    if (graphable && be.begin_graph_step(graph_key)) {
        try {
            issue(false);
            ran = be.end_graph_step();
        } catch (...) {
            be.end_graph_step();  // discards the attempt; the direct issue below reports the error if it recurs
        }
    }
    if (!ran) issue(true);
    if (R == 0) {
        be.synchronize();
        return;
    }

    if (direct) {
        be.matmul(logits, rows, w.head, R);
        be.synchronize();
        if (batch.hook) batch.hook(batch.hook_user, "result_output", -1, logits, R, c.n_vocab);
        return;
    }
    if (keep) {
        ws.logits = out;
        ws.logits_offset = o_logits * sizeof(float);
        return;
    }
    be.download(logits, ws.buf, o_logits * sizeof(float), size_t(R) * size_t(c.n_vocab) * sizeof(float));
    be.synchronize();
}

}  // namespace minicpm
