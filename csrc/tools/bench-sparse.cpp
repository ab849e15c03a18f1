// bench-sparse [max_ctx_k] [n_threads] [--prefill]: InfLLM v2 sparse vs dense attention on the CPU backend, at the
// attention shapes of MiniCPM4-8B (32 heads, 2 KV heads, head_dim 128) and MiniCPM4-0.5B (16, 2, 64), with the
// model card's sparse_config (kernel 32/16, 1 init block, window 2048, topk 64, dense_len 8192), bf16 KV.
//
// Per context length (8K, 32K, 64K, 128K; random K/V filled straight into one layer's KV pool):
//   decode attention of one token per layer, dense vs sparse (sparse includes the compressed-key update);
//   the rest of one decoder layer at T = 1 (the q/k/v/o and FFN matmuls on bf16 weights of the real shape);
//   the whole decode step of the full model (32 / 24 layers + LM head) composed from those measured op times;
//   KV and compressed-key bytes.
// --prefill: attention time of a 32K prompt (chunks of 1024 rows), dense vs sparse, one layer, sampled at
// eight chunk positions and integrated (the machine is small). Each figure is the median of several runs.
#include "core/backend.h"
#include "core/status.h"
#include "model/kv-cache.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace minicpm;

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

template <typename F> double median_ms(int reps, F fn) {
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) {
        const double t0 = now_s();
        fn();
        t.push_back((now_s() - t0) * 1e3);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

struct model_shape {
    const char * name;
    int32_t      nh, nkv, hd, n_embd, n_ff, n_layer, n_vocab;
};

model_config make_cfg(const model_shape & s, bool sparse) {
    model_config c;
    c.n_layer = 1;
    c.n_head = s.nh;
    c.n_head_kv = s.nkv;
    c.n_head_dim = s.hd;
    c.n_embd = s.n_embd;
    c.sparse.present = c.sparse.enabled = sparse;
    return c;
}

// Random bf16 matrix [rows, cols] (host memory owned by the caller's vector).
tensor_desc bf16_matrix(std::vector<uint16_t> & store, int64_t rows, int64_t cols, std::mt19937 & rng) {
    store.resize(size_t(rows * cols));
    std::uniform_int_distribution<int> d(-127, 127);
    for (size_t i = 0; i < store.size(); i += 97) store[i] = f32_to_bf16(float(d(rng)) / 1024.0f);
    tensor_desc t;
    t.type = dtype::bf16;
    t.rows = rows;
    t.cols = cols;
    t.data = store.data();
    return t;
}

// Fills n tokens of random K/V into a fresh sequence and compresses them (as forward() does when they arrive).
void fill(backend & be, kv_pool & pool, kv_seq & s, const model_shape & sh, int32_t n, bool sparse, std::mt19937 & rng) {
    const int32_t chunk = 4096, w = sh.nkv * sh.hd;
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> k(size_t(chunk) * w), v(size_t(chunk) * w);
    for (auto & x : k) x = nd(rng);
    for (auto & x : v) x = nd(rng);
    for (int32_t t0 = 0; t0 < n; t0 += chunk) {
        const int32_t m = std::min(chunk, n - t0);
        if (!kv_seq_prepare(pool, s, t0, t0 + m)) fail(MINICPM_STATUS_OUT_OF_MEMORY, "pool");
        kv_segment sg;
        sg.n_rows = m;
        sg.n_past = t0;
        sg.blocks = s.blocks.data();
        // Shift the data a little per chunk so blocks differ.
        for (size_t i = 0; i < k.size(); i += 61) k[i] = nd(rng);
        be.kv_store(pool.layer(0), k.data(), v.data(), &sg, 1);
        if (sparse) {
            const int32_t from = t0;
            be.kv_compress(pool.compressed(0), pool.layer(0), &sg, &from, 1);
        }
        s.n_tokens = t0 + m;
    }
}

}  // namespace

int main(int argc, char ** argv) {
    int32_t max_k = argc > 1 ? std::atoi(argv[1]) : 128;
    const int n_threads = argc > 2 ? std::atoi(argv[2]) : 0;
    bool prefill = false;
    for (int i = 1; i < argc; ++i) prefill = prefill || std::strcmp(argv[i], "--prefill") == 0;
    backend_options o;
    o.n_threads = n_threads;
    std::unique_ptr<backend> be = make_backend(backend_kind::cpu, o);
    std::printf("bench-sparse: %s, %d threads; sparse_config kernel 32/16, init 1, window 2048, topk 64, dense_len "
                "8192 (hf, lse c1), bf16 KV\n",
                be->name(), be->n_threads());
    const model_shape shapes[] = {{"8B", 32, 2, 128, 4096, 16384, 32, 73448}, {"0.5B", 16, 2, 64, 1024, 4096, 24, 73448}};
    std::mt19937 rng(1);
    for (const model_shape & sh : shapes) {
        // The non-attention part of one layer at T = 1: q, k, v, o projections and the FFN on bf16 weights.
        std::vector<uint16_t> sq, sk, sv, so, sg_, su, sd, shd;
        const tensor_desc wq = bf16_matrix(sq, sh.nh * sh.hd, sh.n_embd, rng);
        const tensor_desc wk = bf16_matrix(sk, sh.nkv * sh.hd, sh.n_embd, rng);
        const tensor_desc wv = bf16_matrix(sv, sh.nkv * sh.hd, sh.n_embd, rng);
        const tensor_desc wo = bf16_matrix(so, sh.n_embd, sh.nh * sh.hd, rng);
        const tensor_desc wg = bf16_matrix(sg_, sh.n_ff, sh.n_embd, rng);
        const tensor_desc wu = bf16_matrix(su, sh.n_ff, sh.n_embd, rng);
        const tensor_desc wd = bf16_matrix(sd, sh.n_embd, sh.n_ff, rng);
        const tensor_desc wh = bf16_matrix(shd, sh.n_vocab, sh.n_embd, rng);
        std::vector<float> x(size_t(std::max(sh.n_embd, sh.n_ff)), 0.01f), y(size_t(sh.n_ff) + sh.n_vocab);
        const double layer_mm = median_ms(5, [&] {
            for (const tensor_desc * w : {&wq, &wk, &wv, &wo, &wg, &wu, &wd}) be->matmul(y.data(), x.data(), *w, 1);
        });
        const double head_mm = median_ms(3, [&] { be->matmul(y.data(), x.data(), wh, 1); });
        sq.clear(); sk.clear(); sv.clear(); so.clear(); sg_.clear(); su.clear(); sd.clear(); shd.clear();
        sq.shrink_to_fit(); sg_.shrink_to_fit(); su.shrink_to_fit(); sd.shrink_to_fit(); shd.shrink_to_fit();
        std::printf("\n== %s attention shape (%d heads, %d KV heads, head_dim %d): other ops of one layer at T=1 %.2f ms, "
                    "LM head %.2f ms ==\n",
                    sh.name, sh.nh, sh.nkv, sh.hd, layer_mm, head_mm);
        std::printf("%6s | %10s %10s %6s | %22s %22s %6s | %9s %11s %8s\n", "ctx", "dense attn", "sparse att", "x",
                    "step dense (attn %)", "step sparse (attn %)", "x", "KV MiB", "C1+C2 MiB", "B/token");
        const float scale = 1.0f / std::sqrt(float(sh.hd));
        for (int32_t ck : {8, 32, 64, 128}) {
            if (ck > max_k) break;
            const int32_t N = ck * 1024;
            const model_config cs = make_cfg(sh, true);
            kv_pool pool(*be, cs, dtype::bf16, kv_blocks_for(N + 64) + 1);
            kv_seq s;
            fill(*be, pool, s, sh, N, true, rng);
            // One decode row at slot N - 1 (its K/V are in place; its compressed keys too).
            std::normal_distribution<float> nd(0.0f, 1.0f);
            std::vector<float> q(size_t(sh.nh) * sh.hd), out(q.size());
            for (auto & v : q) v = nd(rng);
            kv_segment sg;
            sg.n_rows = 1;
            sg.n_past = N - 1;
            sg.blocks = s.blocks.data();
            sparse_attn_params sp = cs.sparse.params();
            const int32_t from = N - 1;
            const double dense = median_ms(7, [&] { be->attention(out.data(), q.data(), pool.layer(0), &sg, 1, sh.nh, scale); });
            const double sparse = median_ms(7, [&] {
                be->kv_compress(pool.compressed(0), pool.layer(0), &sg, &from, 1);
                be->sparse_attention(out.data(), q.data(), pool.layer(0), pool.compressed(0), &sg, 1, sh.nh, scale, sp,
                                     nullptr, 0);
            });
            const double step_d = sh.n_layer * (layer_mm + dense) + head_mm;
            const double step_s = sh.n_layer * (layer_mm + sparse) + head_mm;
            const model_config full = [&] {
                model_config c = cs;
                c.n_layer = sh.n_layer;
                return c;
            }();
            const uint64_t per_block = kv_pool::bytes_per_block(full, dtype::bf16);
            const uint64_t side = kv_pool::sparse_bytes_per_block(full);
            const double blocks = double(kv_blocks_for(N));
            char sd_[32], ss_[32];
            std::snprintf(sd_, sizeof(sd_), "%.1f ms (%.0f%%)", step_d, 100.0 * sh.n_layer * dense / step_d);
            std::snprintf(ss_, sizeof(ss_), "%.1f ms (%.0f%%)", step_s, 100.0 * sh.n_layer * sparse / step_s);
            std::printf("%5dK | %7.2f ms %7.2f ms %5.1fx | %22s %22s %5.2fx | %9.0f %11.0f %8.0f\n", ck, dense, sparse,
                        dense / sparse, sd_, ss_, step_d / step_s, blocks * double(per_block - side) / 1048576.0,
                        blocks * double(side) / 1048576.0, double(per_block) / 64.0);
        }
        if (prefill) {
            const int32_t N = 32 * 1024, chunk = 1024;
            double total[2] = {0, 0};
            for (int pass = 0; pass < 2; ++pass) {
                const bool sparse = pass == 1;
                const model_config cs = make_cfg(sh, true);
                kv_pool pool(*be, cs, dtype::bf16, kv_blocks_for(N) + 1);
                kv_seq s;
                fill(*be, pool, s, sh, N, true, rng);
                std::normal_distribution<float> nd(0.0f, 1.0f);
                std::vector<float> q(size_t(chunk) * sh.nh * sh.hd), out(q.size());
                for (auto & v : q) v = nd(rng);
                const sparse_attn_params sp = cs.sparse.params();
                // Chunk c covers rows [c*1024, c*1024+1024); sample c = 3, 7, 11, ..., 31 and integrate (each
                // sample stands for four chunks).
                for (int32_t c = 3; c < N / chunk; c += 4) {
                    kv_segment sg;
                    sg.n_rows = chunk;
                    sg.n_past = c * chunk;
                    sg.blocks = s.blocks.data();
                    const int32_t from = sg.n_past;
                    const double t = median_ms(1, [&] {
                        if (sparse && sg.n_past + 1 >= sp.dense_len) {
                            be->kv_compress(pool.compressed(0), pool.layer(0), &sg, &from, 1);
                            be->sparse_attention(out.data(), q.data(), pool.layer(0), pool.compressed(0), &sg, 1, sh.nh,
                                                 scale, sp, nullptr, 0);
                        } else {
                            be->attention(out.data(), q.data(), pool.layer(0), &sg, 1, sh.nh, scale);
                        }
                    });
                    total[pass] += 4 * t;
                }
            }
            std::printf("prefill 32K prompt, attention of one layer (sampled, chunks of 1024): dense %.2f s, sparse %.2f s "
                        "(%.2fx); x %d layers: dense %.1f s, sparse %.1f s\n",
                        total[0] / 1e3, total[1] / 1e3, total[0] / total[1], sh.n_layer, sh.n_layer * total[0] / 1e3,
                        sh.n_layer * total[1] / 1e3);
        }
    }
    return 0;
}
