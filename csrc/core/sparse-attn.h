// InfLLM v2 sparse attention: parameters and the layout of the compressed key caches (C1, C2) in the KV
// pool's side storage. The algorithm is /work/shared/docs/INFLLM_V2.md, steps 1-9; the plain reference ops
// (csrc/cpu/ops-ref-sparse.cpp) are its specification in code.
//
// Token index, not position: a row's "p" is its KV slot (n_past + j of its segment); blocks are 64-slot KV
// blocks (block_size must equal MINICPM_KV_BLOCK_SIZE).
//
// Compressed caches, per KV head, append-only (INFLLM_V2.md step 2):
//   C1[j] = mean(K[st*j .. st*j+ks-1])          (ks = kernel_size, st = kernel_stride)
//   C2[j] = mean(K[4st*j .. 4st*j+4ks-1])
// Kernel j is stored with the KV block that holds its LAST token (st*j + ks - 1), so it becomes computable
// exactly when that block's slot is written and it is never rewritten while the rows before it stand. One
// (layer, block) side part holds [nkv][c1_cap + c2_cap][hd] f32: the C1 kernels whose last token lies in the
// block (at most c1_cap of them, the first one first), then the C2 kernels likewise. The pool's side_valid(b)
// counts the leading slots of block b whose kernels are stored; every row change lowers it (kv-cache.h).
#pragma once

#include <cstdint>

namespace minicpm {

enum class sparse_variant : int32_t { hf = 0, v2 = 1 };  // INFLLM_V2.md "Two selection variants"
enum class sparse_lse : int32_t { c1 = 0, c2 = 1 };     // step 4: exact LSE over C1, or approximate over C2

struct sparse_attn_params {
    int32_t        kernel_size = 32;
    int32_t        kernel_stride = 16;
    int32_t        init_blocks = 1;
    int32_t        window_blocks = 32;  // L = window_size / block_size
    int32_t        topk = 64;
    int32_t        dense_len = 8192;    // query p is dense iff p + 1 < dense_len (the per-query switch)
    sparse_variant variant = sparse_variant::hf;
    sparse_lse     lse = sparse_lse::c1;
};

constexpr int32_t k_sparse_block = 64;  // == MINICPM_KV_BLOCK_SIZE (checked where the config is parsed)

// Geometry of one compression level (C1: ks, st; C2: 4 ks, 4 st).
struct sparse_kernel_geom {
    int32_t ks = 0, st = 0, cap = 0, off = 0;  // cap kernels per block, stored at kernel rows [off, off + cap)

    // Kernels complete within the first n slots.
    int32_t count(int64_t n) const { return n >= ks ? int32_t((n - ks) / st + 1) : 0; }
    // The block that stores kernel j, and the first kernel stored in block b.
    int32_t block_of(int32_t j) const { return int32_t((int64_t(st) * j + ks - 1) / k_sparse_block); }
    int32_t first_in(int32_t b) const {
        const int64_t t = int64_t(k_sparse_block) * b - ks + 1;  // first j with st*j + ks - 1 >= 64 b
        return t <= 0 ? 0 : int32_t((t + st - 1) / st);
    }
};

// The compressed caches of one layer: the layer's side area (block b's part at base + b * block_floats).
struct kv_compressed {
    float *            base = nullptr;
    int64_t            block_floats = 0;  // nkv * (c1.cap + c2.cap) * hd
    sparse_kernel_geom c1, c2;

    // Kernel j of level g (c1 or c2) for KV head h of a sequence with block table `blocks`.
    float * at(const sparse_kernel_geom & g, const int32_t * blocks, int32_t h, int32_t j, int32_t hd) const {
        const int32_t b = g.block_of(j);
        const int32_t rows = c1.cap + c2.cap;
        return base + int64_t(blocks[b]) * block_floats + (int64_t(h) * rows + g.off + (j - g.first_in(b))) * hd;
    }
};

inline kv_compressed make_kv_compressed(const sparse_attn_params & sp, int32_t n_head_kv, int32_t head_dim,
                                        float * layer_base) {
    kv_compressed c;
    c.c1.ks = sp.kernel_size;
    c.c1.st = sp.kernel_stride;
    c.c1.cap = (k_sparse_block - 1) / c.c1.st + 1;
    c.c2.ks = 4 * sp.kernel_size;
    c.c2.st = 4 * sp.kernel_stride;
    c.c2.cap = (k_sparse_block - 1) / c.c2.st + 1;
    c.c2.off = c.c1.cap;
    c.block_floats = int64_t(n_head_kv) * (c.c1.cap + c.c2.cap) * head_dim;
    c.base = layer_base;
    return c;
}

}  // namespace minicpm
