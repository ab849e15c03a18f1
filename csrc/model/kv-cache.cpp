#include "model/kv-cache.h"

#include "core/status.h"

#include <cstdlib>
#include <string>

namespace minicpm {

// Elements of K (or V) of one block in one layer: [nkv][64][hd].
static uint64_t block_elems(const model_config & cfg) {
    return uint64_t(cfg.n_head_kv) * MINICPM_KV_BLOCK_SIZE * uint64_t(cfg.n_head_dim);
}

uint64_t kv_pool::bytes_per_block(const model_config & cfg, dtype type) {
    return 2 * uint64_t(cfg.n_layer) * block_elems(cfg) * dtype_size(type);
}

kv_pool::kv_pool(const model_config & cfg, dtype type, int32_t n_blocks)
    : type_(type), n_blocks_(n_blocks), n_layer_(cfg.n_layer), n_head_kv_(cfg.n_head_kv), head_dim_(cfg.n_head_dim) {
    if (n_blocks <= 0 || cfg.n_layer <= 0 || cfg.n_head_kv <= 0 || cfg.n_head_dim <= 0)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "KV pool: " + std::to_string(n_blocks) +
                                                  " blocks requested for a model with " +
                                                  std::to_string(cfg.n_layer) + " layers");
    const uint64_t layer_bytes = uint64_t(n_blocks) * block_elems(cfg) * dtype_size(type);
    const uint64_t total = layer_bytes * uint64_t(cfg.n_layer);
    if (total / uint64_t(cfg.n_layer) != layer_bytes || total > uint64_t(SIZE_MAX))
        fail(MINICPM_STATUS_OUT_OF_MEMORY, "KV pool: size overflows (" + std::to_string(n_blocks) + " blocks)");
    layer_stride_ = size_t(layer_bytes);
    // calloc: the OS hands out zero pages lazily, so a pool sized for the worst case costs only what is used.
    k_ = std::calloc(size_t(total), 1);
    v_ = k_ ? std::calloc(size_t(total), 1) : nullptr;
    if (!k_ || !v_) {
        std::free(k_);
        k_ = nullptr;
        fail(MINICPM_STATUS_OUT_OF_MEMORY, "KV pool: cannot allocate 2 x " + std::to_string(total) + " bytes (" +
                                               std::to_string(n_blocks) + " blocks of " +
                                               std::to_string(MINICPM_KV_BLOCK_SIZE) + " tokens, " + dtype_name(type) +
                                               "); lower n_ctx, n_seq_max or the KV memory limit");
    }
    // Lowest index first, so a fresh pool fills from the start of the allocation.
    free_.reserve(size_t(n_blocks));
    for (int32_t b = n_blocks - 1; b >= 0; --b) free_.push_back(b);
    used_.assign(size_t(n_blocks), 0);
}

kv_pool::~kv_pool() {
    std::free(k_);
    std::free(v_);
}

kv_layer kv_pool::layer(int32_t il) const {
    if (il < 0 || il >= n_layer_)
        fail(MINICPM_STATUS_INTERNAL, "KV pool: layer " + std::to_string(il) + " out of range");
    kv_layer l;
    l.type = type_;
    l.k = (uint8_t *) k_ + size_t(il) * layer_stride_;
    l.v = (uint8_t *) v_ + size_t(il) * layer_stride_;
    l.n_head_kv = n_head_kv_;
    l.head_dim = head_dim_;
    return l;
}

int32_t kv_pool::alloc() {
    if (free_.empty()) return -1;
    const int32_t b = free_.back();
    free_.pop_back();
    used_[size_t(b)] = 1;
    return b;
}

void kv_pool::release(int32_t block) {
    if (block < 0 || block >= n_blocks_ || !used_[size_t(block)])
        fail(MINICPM_STATUS_INTERNAL, "KV pool: release of block " + std::to_string(block) + " that is not allocated");
    used_[size_t(block)] = 0;
    free_.push_back(block);
}

}  // namespace minicpm
