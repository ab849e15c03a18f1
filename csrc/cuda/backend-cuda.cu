// The CUDA backend: device buffers, one stream, the kernels of csrc/cuda/*.cu. Batch metadata (segments, block
// tables, masks) arrives as host memory and is flattened into one row table per batch, uploaded once and
// reused by every layer's kv_store and attention. Inside a step graph (step-graph.cuh) every op adds its
// launch parameters to the step's signature and, when the step replays a graph, only stages its host data.
#include "cuda/arena.cuh"
#include "cpu/ops-sparse.h"  // sparse_check_args, sparse_row_view_of: the CPU ops' checks and tree-row views
#include "cuda/ops.cuh"
#include "cuda/step-graph.cuh"

#include <algorithm>
#include <cstring>
#include <vector>

namespace minicpm {

namespace {

using cuda::check;

constexpr int64_t k_select_scratch_floats = int64_t(16) << 20;  // stage-1 scores held at once (64 MiB)
// Pinned host staging of a step graph's uploads: token ids, positions, logit rows, the row table and the
// block tables (padded to a power of two: 64 rows at 128K-token contexts take 512 KiB). A step whose uploads
// do not fit runs eagerly (a fallback in the stats).
constexpr size_t k_step_staging_bytes = size_t(1) << 20;

uint64_t bits(const void * p) { return uint64_t(uintptr_t(p)); }
uint64_t bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    return u;
}

using step_mode = cuda::step_graphs::mode;

class cuda_backend final : public backend {
  public:
    explicit cuda_backend(const backend_options & o) {
        int n = 0;
        const cudaError_t e = cudaGetDeviceCount(&n);
        if (e != cudaSuccess || n == 0)
            fail(MINICPM_STATUS_UNSUPPORTED, std::string("backend cuda: no usable CUDA device (") +
                                                 (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices") + ")");
        MINICPM_CUDA_CHECK(cudaSetDevice(0));
        cudaDeviceProp prop;
        MINICPM_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
        if (prop.major < 8)
            fail(MINICPM_STATUS_UNSUPPORTED, std::string("backend cuda: ") + prop.name + " is compute capability " +
                                                 std::to_string(prop.major) + "." + std::to_string(prop.minor) +
                                                 "; sm_80 or newer is needed (bf16 tensor cores)");
        // Before the arena takes the memory and before any capture: the probe allocates and synchronizes.
        const std::string wgmma = cuda::gemm16_sm90_start();
        arena_ = cuda::device_arena::acquire(o.memory_limit, prop.integrated != 0);
        MINICPM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
        name_ = std::string("cuda ") + prop.name;
        n_sms_ = prop.multiProcessorCount;
        max_shared_ = int32_t(prop.sharedMemPerBlockOptin);
        graphs_ = std::make_unique<cuda::step_graphs>(o.step_graphs, k_step_staging_bytes, stream_);
        // Reported at load with the backend's name (engine stats, `info`; first, as names are cut to 31
        // characters): whether decode steps replay graphs; the features say why not.
        const step_graph_stats gs = graphs_->stats();
        if (gs.enabled) name_ = "cuda+graphs " + std::string(prop.name);
        features_ = std::string("cuda sm_80+ bf16 tensor cores") +
                    (gs.enabled ? " cuda-graphs" : std::string(" (cuda graphs off: ") + gs.off_reason + ")") + wgmma;
    }
    ~cuda_backend() override {
        graphs_.reset();
        release(rows_dev_);
        release(blocks_dev_);
        release(xb_);
        release(split_);
        release(qsplit_);
        release(sample_keys_);
        release(sample_rows_);
        release(sample_adjust_);
        release(sample_out_);
        for (staged * st : {&comp_segs_, &comp_blocks_, &sparse_rows_, &sparse_blocks_, &sparse_tails_})
            release(st->dev);
        release(select_s_);
        release(select_tail_);
        release(select_bits_);
        if (stream_) cudaStreamDestroy(stream_);
    }

    backend_kind kind() const override { return backend_kind::cuda; }
    const char * name() const override { return name_.c_str(); }
    const char * features() const override { return features_.c_str(); }
    int          n_threads() const override { return 1; }
    bool         host_memory() const override { return false; }

    buffer alloc(size_t bytes, buffer_usage usage) override {
        buffer b;
        b.usage = usage;
        if (bytes == 0) return b;
        static const char * const names[] = {"weights", "KV cache", "activations"};
        b.data = arena_->take(bytes, names[int(usage)]);
        b.size = bytes;
        const cudaError_t e = cudaMemsetAsync(b.data, 0, bytes, stream_);
        if (e != cudaSuccess) {
            arena_->give(b.data);  // a failed alloc holds no range of the arena
            check(e, "cudaMemsetAsync (zero-filling a new buffer)");
        }
        return b;
    }
    void release(buffer & b) override {
        if (b.data && b.owned && graphs_ && graphs_->current() == step_mode::capture) {
            deferred_.push_back(b);  // no synchronize while capturing: given back when the step ends
        } else if (b.data && b.owned) {
            // A kernel in flight may still use the range about to be handed out again. Not checked: release
            // runs in destructors, and a failed stream fails the next op anyway.
            cudaStreamSynchronize(stream_);
            arena_->give(b.data);
        }
        b = buffer{};
    }
    buffer import_weights(const void * host, size_t bytes) override {
        buffer b = alloc(bytes, buffer_usage::weights);
        try {
            upload(b, 0, host, bytes);
            MINICPM_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host mapping may go away after load
        } catch (...) {
            release(b);  // a failed upload holds no range of the arena
            throw;
        }
        return b;
    }
    // GPTQ act-order weights (a g_idx permutation) get a copy with their K columns sorted by group (stable,
    // so in each group the columns keep their order), which the fast kernels read like a group-ordered weight
    // (ops.cuh, reordered_desc). A g_idx whose groups do not hold group_size columns each (the last one: the
    // rest) keeps the dequantizing kernel, which reads any grouping; a group index outside the scales is refused.
    buffer prepare_weights(const tensor_desc & w) override {
        const cuda::wdesc d = cuda::to_wdesc(w);
        if (!cuda::reorder_supported(d)) return {};
        const int64_t        K = w.cols, G = w.n_groups(), gs = w.group_size;
        std::vector<int32_t> g_idx(size_t(K), 0), order(size_t(K), 0);
        MINICPM_CUDA_CHECK(cudaMemcpyAsync(g_idx.data(), w.perm, size_t(K) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
        MINICPM_CUDA_CHECK(cudaStreamSynchronize(stream_));
        std::vector<int64_t> next(size_t(G), 0);  // per group: its columns seen so far, then where the next goes
        for (int64_t k = 0; k < K; ++k) {
            const int32_t g = g_idx[size_t(k)];
            if (g < 0 || g >= G)
                fail(MINICPM_STATUS_INVALID_ARGUMENT, "backend cuda: g_idx[" + std::to_string(k) + "] = " +
                                                          std::to_string(g) + " of a " + std::to_string(w.rows) + " x " +
                                                          std::to_string(K) + " weight is outside its " +
                                                          std::to_string(G) + " groups");
            ++next[size_t(g)];
        }
        for (int64_t g = 0; g < G; ++g) {
            if (next[size_t(g)] != std::min(gs, K - g * gs)) return {};
            next[size_t(g)] = g * gs;
        }
        for (int64_t k = 0; k < K; ++k) order[size_t(next[size_t(g_idx[size_t(k)])]++)] = int32_t(k);
        buffer        b = alloc(cuda::reordered_bytes(d), buffer_usage::weights);
        const size_t  at = size_t((const uint8_t *) cuda::reordered_desc(d, b.data).order - (const uint8_t *) b.data);
        upload(b, at, order.data(), order.size() * sizeof(int32_t));
        cuda::launch_reorder_columns(stream_, b.data, d);
        MINICPM_CUDA_CHECK(cudaStreamSynchronize(stream_));  // order (host) is read by the copy until here
        return b;
    }
    void upload(const buffer & dst, size_t off, const void * src, size_t n) override {
        bounds(dst, off, n, "upload");
        if (n && graphs_->current() != step_mode::eager) {
            // From pinned staging: a graph's copy node reads a fixed host address, refilled before each replay.
            const void * pinned = graphs_->stage(src, n);
            graphs_->note({bits((uint8_t *) dst.data + off), n});
            if (pinned && graphs_->current() == step_mode::capture)
                MINICPM_CUDA_CHECK(
                    cudaMemcpyAsync((uint8_t *) dst.data + off, pinned, n, cudaMemcpyHostToDevice, stream_));
            return;
        }
        if (n) MINICPM_CUDA_CHECK(cudaMemcpyAsync((uint8_t *) dst.data + off, src, n, cudaMemcpyHostToDevice, stream_));
    }
    void download(void * dst, const buffer & src, size_t off, size_t n) override {
        bounds(src, off, n, "download");
        if (graphs_->current() != step_mode::eager) {
            graphs_->refuse("a download inside a step");
            return;
        }
        if (n) MINICPM_CUDA_CHECK(cudaMemcpyAsync(dst, (const uint8_t *) src.data + off, n, cudaMemcpyDeviceToHost, stream_));
        MINICPM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
    void copy(const buffer & dst, size_t doff, const buffer & src, size_t soff, size_t n) override {
        bounds(dst, doff, n, "copy");
        bounds(src, soff, n, "copy");
        if (replay({2, bits((uint8_t *) dst.data + doff), bits((const uint8_t *) src.data + soff), n})) return;
        if (n)
            MINICPM_CUDA_CHECK(cudaMemcpyAsync((uint8_t *) dst.data + doff, (const uint8_t *) src.data + soff, n,
                                               cudaMemcpyDeviceToDevice, stream_));
    }
    void fill_zero(const buffer & dst, size_t off, size_t n) override {
        bounds(dst, off, n, "fill_zero");
        if (replay({3, bits((uint8_t *) dst.data + off), n})) return;
        if (n) MINICPM_CUDA_CHECK(cudaMemsetAsync((uint8_t *) dst.data + off, 0, n, stream_));
    }
    // Nothing to wait for inside a step: its ops are recorded or not issued.
    void synchronize() override {
        if (graphs_->current() == step_mode::eager) MINICPM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
    device_memory_info device_memory() const override { return arena_->info(); }

    // A prepared weight (w.packed: act-order columns reordered) is read from its copy alone.
    void matmul(float * y, const float * x, const tensor_desc & w, int64_t T) override {
        const cuda::wdesc d = w.packed ? cuda::reordered_desc(cuda::to_wdesc(w), w.packed) : cuda::to_wdesc(w);
        const size_t      scratch = cuda::matmul_scratch_bytes(d, T);
        if (scratch > 0) grow(xb_, scratch);
        const int32_t splits = cuda::plan_matmul_splits(d, T, n_sms_);
        if (splits > 1) grow(qsplit_, size_t(cuda::k_qsplit_floats) * sizeof(float));  // one size: never grows again
        if (replay({4, bits(y), bits(x), bits(d.data), bits(w.scales), bits(w.zeros), bits(w.perm), uint64_t(w.type),
                    uint64_t(w.scale_type), uint64_t(w.group_size), uint64_t(w.rows), uint64_t(w.cols), uint64_t(T),
                    bits(xb_.data), uint64_t(splits), bits(qsplit_.data)}))
            return;
        cuda::launch_matmul(stream_, y, x, d, T, xb_.data, splits, (float *) qsplit_.data);
    }
    void rms_norm(float * y, const float * x, const tensor_desc & g, int64_t T, float eps) override {
        if (replay({5, bits(y), bits(x), bits(g.data), uint64_t(g.type), uint64_t(g.cols), uint64_t(T), bits(eps)}))
            return;
        cuda::launch_rms_norm(stream_, y, x, cuda::to_wdesc(g), T, g.cols, eps);
    }
    void embed(float * out, const int32_t * tokens, const tensor_desc & e, int64_t T, float scale) override {
        if (replay({6, bits(out), bits(tokens), bits(e.data), uint64_t(e.type), uint64_t(e.cols), uint64_t(T),
                    bits(scale)}))
            return;
        cuda::launch_embed(stream_, out, tokens, cuda::to_wdesc(e), T, scale);
    }
    void rope(float * x, const int32_t * pos, const float * cs, int64_t T, int32_t nh, int32_t hd) override {
        if (replay({7, bits(x), bits(pos), bits(cs), uint64_t(T), uint64_t(nh), uint64_t(hd)})) return;
        cuda::launch_rope(stream_, x, pos, cs, T, nh, hd);
    }
    void kv_store(const kv_layer & kv, const float * k, const float * v, const kv_segment * segs,
                  int32_t n_segs) override {
        const int64_t T = stage_rows(segs, n_segs);
        if (replay({8, bits(kv.k), bits(kv.v), uint64_t(kv.type), uint64_t(kv.n_head_kv), uint64_t(kv.head_dim),
                    bits(k), bits(v), bits(rows_dev_.data), bits(blocks_dev_.data), uint64_t(T)}))
            return;
        cuda::launch_kv_store(stream_, kv.k, kv.v, int32_t(kv.type), kv.n_head_kv, kv.head_dim, k, v,
                              (const cuda::row_info *) rows_dev_.data, (const int32_t *) blocks_dev_.data, T);
    }
    void attention(float * out, const float * q, const kv_layer & kv, const kv_segment * segs, int32_t n_segs,
                   int32_t n_head, float scale) override {
        const int64_t T = stage_rows(segs, n_segs);
        const cuda::split_plan p =
            cuda::plan_split_attention(n_head, kv.n_head_kv, kv.head_dim, T, max_slots_, n_sms_);
        if (p.n_parts > 0)
            grow(split_, cuda::split_scratch_floats(p, n_head, kv.head_dim, T) * sizeof(float), true);
        if (replay({9, bits(out), bits(q), bits(kv.k), bits(kv.v), uint64_t(kv.type), uint64_t(kv.n_head_kv),
                    uint64_t(kv.head_dim), uint64_t(n_head), bits(scale), uint64_t(T), uint64_t(p.n_parts),
                    uint64_t(p.part_len), bits(rows_dev_.data), bits(blocks_dev_.data), bits(split_.data)}))
            return;
        if (p.n_parts > 0) {
            cuda::launch_attention_split(stream_, out, q, kv.k, kv.v, int32_t(kv.type), n_head, kv.n_head_kv,
                                         kv.head_dim, scale, (const cuda::row_info *) rows_dev_.data,
                                         (const int32_t *) blocks_dev_.data, T, p, (float *) split_.data);
            return;
        }
        cuda::launch_attention(stream_, out, q, kv.k, kv.v, int32_t(kv.type), n_head, kv.n_head_kv, kv.head_dim,
                               scale, (const cuda::row_info *) rows_dev_.data, (const int32_t *) blocks_dev_.data, T);
    }
    void kv_compress(const kv_compressed & cc, const kv_layer & kv, const kv_segment * segs, const int32_t * from,
                     int32_t n_segs) override {
        if (refused_in_step("InfLLM v2 compression inside a step")) return;
        std::vector<cuda::sparse_seg> jobs;
        blocks_.clear();
        int32_t max_jobs = 0;
        for (int32_t s = 0; s < n_segs; ++s) {
            const kv_segment & sg = segs[s];
            const int64_t      n_end = int64_t(sg.n_past) + sg.n_rows;
            cuda::sparse_seg   js{};
            js.blocks_off = append_blocks(sg);
            int32_t l = 0;
            for (const sparse_kernel_geom * g : {&cc.c1, &cc.c2}) {
                const int64_t t = int64_t(from[s]) - g->ks + 1;  // first kernel ending at or after from[s]
                js.j0[l] = t <= 0 ? 0 : int32_t((t + g->st - 1) / g->st);
                js.n[l] = std::max(0, g->count(n_end) - js.j0[l]);
                ++l;
            }
            max_jobs = std::max(max_jobs, js.n[0] + js.n[1]);
            jobs.push_back(js);
        }
        const void * segs_dev = stage(comp_segs_, jobs.data(), jobs.size() * sizeof(jobs[0]));
        const void * blocks_dev = stage(comp_blocks_, blocks_.data(), blocks_.size() * sizeof(int32_t));
        cuda::launch_kv_compress(stream_, cc, kv.k, int32_t(kv.type), kv.n_head_kv, kv.head_dim,
                                 (const cuda::sparse_seg *) segs_dev, n_segs, max_jobs, (const int32_t *) blocks_dev);
    }
    // Selection first (in row chunks, so that the stage-1 scratch stays bounded), then attention over it.
    void sparse_attention(float * out, const float * q, const kv_layer & kv, const kv_compressed & cc,
                          const kv_segment * segs, int32_t n_segs, int32_t n_head, float scale,
                          const sparse_attn_params & sp, uint64_t * selected, int32_t sel_words) override {
        sparse_check_args(kv, segs, n_segs, n_head, sp, selected, sel_words);
        if (refused_in_step("sparse attention inside a step")) return;
        const int32_t nkv = kv.n_head_kv, hd = kv.head_dim;
        // One record per row that runs here (a tree's rows below dense_len are the dense op's: left untouched),
        // with its view of the sequence (sparse_row_view): a tree row's tail slots and tail kernels.
        std::vector<cuda::sparse_row> rows;
        blocks_.clear();
        tails_.clear();
        int32_t         max_p = 0, max_sel = 0;  // max_sel: the most blocks a row may select (steps 1, 7, 8)
        int32_t         n_tail_rows = 0, t1_cap = 0, t2_cap = 0;
        sparse_row_view v;
        for (int32_t s = 0; s < n_segs; ++s) {
            const kv_segment & sg = segs[s];
            const int32_t      off = append_blocks(sg);
            for (int32_t j = 0; j < sg.n_rows; ++j) {
                sparse_row_view_of(v, sg, j);
                const int32_t p = v.p, nb = p / MINICPM_KV_BLOCK_SIZE + 1;
                if (sg.mask != nullptr && p + 1 < sp.dense_len) continue;
                cuda::sparse_row r = {sg.row_begin + j, p, off, v.n_fixed, 0, 0};
                if (!v.tail.empty()) {
                    r.tail_off = int32_t(tails_.size());
                    r.tk_off = n_tail_rows++;
                    tails_.insert(tails_.end(), v.tail.begin(), v.tail.end());
                    t1_cap = std::max(t1_cap, cc.c1.count(int64_t(p) + 1) - cc.c1.count(v.n_fixed));
                    if (sp.lse == sparse_lse::c2)
                        t2_cap = std::max(t2_cap, cc.c2.count(int64_t(p) + 1) - cc.c2.count(v.n_fixed));
                }
                rows.push_back(r);
                max_p = std::max(max_p, p);
                max_sel = std::max(max_sel, p + 1 < sp.dense_len ? nb : std::min(nb, sp.topk + sp.window_blocks));
            }
        }
        const int64_t T = int64_t(rows.size());
        if (T == 0) return;
        const int32_t words = max_p / MINICPM_KV_BLOCK_SIZE / 64 + 1;
        const size_t  shared = cuda::select_shared_bytes(n_head / nkv, hd, words * 64);
        if (shared > size_t(max_shared_))
            fail(MINICPM_STATUS_UNSUPPORTED, "backend cuda: sparse attention at " + std::to_string(max_p + 1) +
                                                 " slots needs " + std::to_string(shared) +
                                                 " bytes of shared memory; the device has " + std::to_string(max_shared_));
        const int32_t n1_cap = std::max(1, cc.c1.count(int64_t(max_p) + 1));
        const int32_t n2_cap = sp.lse == sparse_lse::c2 ? std::max(1, cc.c2.count(int64_t(max_p) + 1)) : 0;
        const int64_t per_row = int64_t(n_head) * (n1_cap + n2_cap + 1);
        // At most 65535 rows a chunk: the score kernel's grid.y.
        const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>({T, k_select_scratch_floats / per_row, 65535}));
        const auto *  rows_dev = (const cuda::sparse_row *) stage(sparse_rows_, rows.data(), rows.size() * sizeof(rows[0]));
        const auto *  blocks_dev = (const int32_t *) stage(sparse_blocks_, blocks_.data(), blocks_.size() * sizeof(int32_t));
        const size_t tail_floats = size_t(n_tail_rows) * size_t(nkv) * size_t(t1_cap + t2_cap) * size_t(hd);
        grow(select_tail_, std::max<size_t>(1, tail_floats * sizeof(float)));
        const auto * tails_dev = (const int32_t *) stage(sparse_tails_, tails_.data(), tails_.size() * sizeof(int32_t));
        const cuda::sparse_tails tl = {tails_dev, (float *) select_tail_.data, t1_cap, t2_cap};
        cuda::launch_sparse_tail_kernels(stream_, tl, cc, kv.k, int32_t(kv.type), nkv, hd, rows_dev, T, blocks_dev);
        grow(select_s_, size_t(chunk * per_row) * sizeof(float));
        grow(select_bits_, size_t(T) * size_t(nkv) * size_t(words) * sizeof(uint64_t));
        auto *                    bits = (uint64_t *) select_bits_.data;
        const cuda::sparse_scratch w = {(float *) select_s_.data, (float *) select_s_.data + chunk * n_head * n1_cap,
                                        (float *) select_s_.data + chunk * n_head * (n1_cap + n2_cap), n1_cap, n2_cap};
        for (int64_t r0 = 0; r0 < T; r0 += chunk)
            cuda::launch_sparse_select(stream_, bits + r0 * nkv * words, words, w, cc, tl, q, n_head, nkv, hd, scale,
                                       sp, rows_dev + r0, std::min(chunk, T - r0), blocks_dev);
        const int32_t parts = cuda::sparse_attention_parts(T, max_sel);
        if (parts > 1) grow(split_, size_t(T) * size_t(n_head) * size_t(parts) * size_t(hd + 2) * sizeof(float));
        cuda::launch_sparse_attention(stream_, out, q, kv.k, kv.v, int32_t(kv.type), n_head, nkv, hd, scale, rows_dev,
                                      T, blocks_dev, tl.slots, bits, words, parts, (float *) split_.data);
        if (selected == nullptr) return;
        std::vector<uint64_t> host(size_t(T) * nkv * words);
        download(host.data(), select_bits_, 0, host.size() * sizeof(uint64_t));
        for (int64_t i = 0; i < T; ++i)
            for (int32_t g = 0; g < nkv; ++g) {
                uint64_t *       dst = selected + (int64_t(rows[size_t(i)].row) * nkv + g) * sel_words;
                const uint64_t * src = host.data() + (i * nkv + g) * words;
                for (int32_t w = 0; w < sel_words; ++w) dst[w] = w < words ? src[w] : 0;
            }
    }
    void silu_mul(float * out, const float * gate, const float * up, int64_t n) override {
        if (replay({10, bits(out), bits(gate), bits(up), uint64_t(n)})) return;
        cuda::launch_silu_mul(stream_, out, gate, up, n);
    }
    void add_scaled(float * x, const float * a, float scale, int64_t n) override {
        if (replay({11, bits(x), bits(a), bits(scale), uint64_t(n)})) return;
        cuda::launch_add_scaled(stream_, x, a, scale, n);
    }
    void div_scalar(float * x, float d, int64_t n) override {
        if (replay({12, bits(x), bits(d), uint64_t(n)})) return;
        cuda::launch_div_scalar(stream_, x, d, n);
    }
    void get_rows(float * dst, const float * src, const int32_t * rows, int64_t R, int64_t H) override {
        if (replay({13, bits(dst), bits(src), bits(rows), uint64_t(R), uint64_t(H)})) return;
        cuda::launch_get_rows(stream_, dst, src, rows, R, H);
    }

    bool sample(const float * logits, int32_t n_vocab, const sample_row * rows, int32_t R,
                const sample_adjust * adjust, int32_t n_adjust, sample_out * out) override {
        if (R <= 0) return true;
        if (refused_in_step("sampling inside a step")) return true;
        // The kernel writes logits[token] for every adjust entry: check the tables before they go down.
        for (int32_t r = 0; r < R; ++r)
            if (rows[r].adjust_begin < 0 || rows[r].n_adjust < 0 || rows[r].adjust_begin > n_adjust - rows[r].n_adjust)
                fail(MINICPM_STATUS_INVALID_ARGUMENT, "backend cuda: sample row " + std::to_string(r) +
                                                          " names adjust entries outside the table");
        for (int32_t e = 0; e < n_adjust; ++e)
            if (adjust[e].token < 0 || adjust[e].token >= n_vocab)
                fail(MINICPM_STATUS_INVALID_ARGUMENT, "backend cuda: sample adjust entry " + std::to_string(e) +
                                                          " has token " + std::to_string(adjust[e].token) +
                                                          " outside the vocabulary");
        grow(sample_keys_, size_t(R) * size_t(n_vocab) * sizeof(uint32_t));
        grow(sample_rows_, size_t(R) * sizeof(sample_row));
        grow(sample_adjust_, size_t(std::max(n_adjust, 1)) * sizeof(sample_adjust));
        grow(sample_out_, size_t(R) * sizeof(sample_out));
        upload(sample_rows_, 0, rows, size_t(R) * sizeof(sample_row));
        upload(sample_adjust_, 0, adjust, size_t(n_adjust) * sizeof(sample_adjust));
        cuda::launch_sample(stream_, (sample_out *) sample_out_.data, (uint32_t *) sample_keys_.data, logits,
                            n_vocab, (const sample_row *) sample_rows_.data, R,
                            (const sample_adjust *) sample_adjust_.data);
        download(out, sample_out_, 0, size_t(R) * sizeof(sample_out));
        return true;
    }

    bool begin_graph_step(int64_t key) override {
        if (!graphs_->begin(key)) return false;
        staged_rows_.clear();  // the step's first table op always stages its tables (the same op every replay)
        staged_blocks_.clear();
        max_slots_ = 0;
        return true;
    }
    bool end_graph_step() override {
        const bool ran = graphs_->end();
        for (buffer & b : deferred_) release(b);
        deferred_.clear();
        if (!ran) {
            staged_rows_.clear();  // the eager retry uploads its tables again
            staged_blocks_.clear();
        }
        return ran;
    }
    step_graph_stats graph_stats() const override { return graphs_->stats(); }

  private:
    static void bounds(const buffer & b, size_t off, size_t n, const char * what) {
        if (off > b.size || n > b.size - off)
            fail(MINICPM_STATUS_INTERNAL, std::string("backend cuda: ") + what + " outside a buffer");
    }
    // Adds an op's launch parameters to the step's signature; true when the op must not launch (the step
    // replays a graph).
    bool replay(std::initializer_list<uint64_t> sig) {
        graphs_->note(sig);
        return graphs_->current() == step_mode::replay;
    }
    bool refused_in_step(const char * why) {
        if (graphs_->current() == step_mode::eager) return false;
        graphs_->refuse(why);
        return true;
    }
    // doubling: for the small tables and scratch of decode steps, so that growing contexts and batches rarely
    // move them (a move changes the pointers a recorded step graph holds: the step is then recorded again).
    void grow(buffer & b, size_t bytes, bool doubling = false) {
        if (b.size >= bytes) return;
        if (doubling) bytes = std::max(bytes, b.size * 2);
        if (graphs_->current() == step_mode::capture) graphs_->refuse("a scratch buffer grew during capture");
        synchronize();  // kernels in flight may still read the old buffer
        release(b);
        b = alloc(bytes, buffer_usage::compute);
    }

    // Appends the block table of segment sg (its blocks up to n_past + n_rows) to blocks_; returns its offset.
    int32_t append_blocks(const kv_segment & sg) {
        const int32_t off = int32_t(blocks_.size());
        const int32_t nb = (sg.n_past + sg.n_rows + MINICPM_KV_BLOCK_SIZE - 1) / MINICPM_KV_BLOCK_SIZE;
        blocks_.insert(blocks_.end(), sg.blocks, sg.blocks + nb);
        return off;
    }
    // A host table in device memory, uploaded again only when it differs from the last one staged there
    // (every layer of a forward passes the same tables).
    struct staged {
        buffer               dev;
        std::vector<uint8_t> last;
    };
    const void * stage(staged & st, const void * data, size_t bytes) {
        if (bytes != st.last.size() || std::memcmp(st.last.data(), data, bytes) != 0) {
            st.last.clear();  // until the upload is issued: a throw below must not leave the table looking staged
            grow(st.dev, std::max<size_t>(bytes, 1));
            std::vector<uint8_t> kept((const uint8_t *) data, (const uint8_t *) data + bytes);
            upload(st.dev, 0, kept.data(), bytes);  // from the kept copy: the caller's table may go first
            st.last = std::move(kept);
        }
        return st.dev.data;
    }

    // Flattens the segments into per-row records and one block table; uploads them only when they differ
    // from the last batch's (every layer of one forward passes the same segments).
    // Rows of the batch that no segment names (attention over a subset, as InfLLM v2's dense rows) get j = -1:
    // the kernels leave them alone, as the CPU ops do.
    int64_t stage_rows(const kv_segment * segs, int32_t n_segs) {
        int32_t n_rows = 0;
        for (int32_t s = 0; s < n_segs; ++s) n_rows = std::max(n_rows, segs[s].row_begin + segs[s].n_rows);
        cuda::row_info gap{};
        gap.j = -1;
        rows_.assign(size_t(n_rows), gap);
        blocks_.clear();
        max_slots_ = 0;
        for (int32_t s = 0; s < n_segs; ++s) {
            const kv_segment & sg = segs[s];
            max_slots_ = std::max(max_slots_, sg.n_past + sg.n_rows);
            const int32_t off = int32_t(blocks_.size());
            const int32_t nb = (sg.n_past + sg.n_rows + MINICPM_KV_BLOCK_SIZE - 1) / MINICPM_KV_BLOCK_SIZE;
            blocks_.insert(blocks_.end(), sg.blocks, sg.blocks + nb);
            for (int32_t j = 0; j < sg.n_rows; ++j) {
                cuda::row_info r;
                r.j = j;
                r.n_past = sg.n_past;
                r.blocks_off = off;
                r.causal = sg.mask == nullptr;
                r.mask = sg.mask ? sg.mask[j] : 0;
                rows_[size_t(sg.row_begin + j)] = r;
            }
        }
        // The block table padded to a power of two (at least 64 entries): its upload, which a step graph
        // records, keeps its size while sequences cross block boundaries. Padding entries are never read.
        size_t n_blocks = 64;
        while (n_blocks < blocks_.size()) n_blocks *= 2;
        blocks_.resize(n_blocks, 0);
        const size_t rb = rows_.size() * sizeof(cuda::row_info), bb = blocks_.size() * sizeof(int32_t);
        const bool same = rb == staged_rows_.size() && bb == staged_blocks_.size() &&
                          std::memcmp(staged_rows_.data(), rows_.data(), rb) == 0 &&
                          std::memcmp(staged_blocks_.data(), blocks_.data(), bb) == 0;
        if (!same) {
            // Forgotten until both uploads are issued: a failure in between (a buffer moved by grow and not
            // refilled) must not let the next batch with the same tables skip its upload.
            staged_rows_.clear();
            staged_blocks_.clear();
            grow(rows_dev_, rb, true);
            grow(blocks_dev_, bb, true);
            upload(rows_dev_, 0, rows_.data(), rb);
            upload(blocks_dev_, 0, blocks_.data(), bb);
            staged_rows_.assign((const uint8_t *) rows_.data(), (const uint8_t *) rows_.data() + rb);
            staged_blocks_.assign((const uint8_t *) blocks_.data(), (const uint8_t *) blocks_.data() + bb);
        }
        return int64_t(rows_.size());
    }

    std::shared_ptr<cuda::device_arena> arena_;  // declared first: buffers go back to it before it may go
    cudaStream_t                stream_ = nullptr;
    std::unique_ptr<cuda::step_graphs> graphs_;
    std::vector<buffer>         deferred_;  // released while capturing: given back when the step ends
    std::string                 name_, features_;
    int32_t                     n_sms_ = 1;
    int32_t                     max_shared_ = 48 * 1024;  // dynamic shared memory a kernel may opt in to
    int32_t                     max_slots_ = 0;  // the longest row context of the staged batch
    buffer                      xb_, rows_dev_, blocks_dev_, split_;
    buffer                      qsplit_;  // split-K partials of the quantized GEMM (k_qsplit_floats)
    buffer                      sample_keys_, sample_rows_, sample_adjust_, sample_out_;
    std::vector<cuda::row_info> rows_;
    std::vector<int32_t>        blocks_;
    std::vector<uint8_t>        staged_rows_, staged_blocks_;
    staged                      comp_segs_, comp_blocks_, sparse_rows_, sparse_blocks_, sparse_tails_;  // InfLLM v2
    std::vector<int32_t>        tails_;  // tree rows' tail slots (cuda::sparse_tails)
    // stage-1 scratch of a row chunk; selected blocks; tree rows' tail kernels
    buffer                      select_s_, select_bits_, select_tail_;
};

}  // namespace

std::unique_ptr<backend> make_cuda_backend(const backend_options & o) { return std::make_unique<cuda_backend>(o); }

bool cuda_device_available() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace minicpm
