// The KV pool: fixed-size 64-token blocks for every layer, handed out to sequences by block index.
// A sequence's block table maps position p to block blocks[p / 64], slot p % 64 (same index in every
// layer). Owned by one thread (a context's caller or the engine's scheduler thread).
#pragma once

#include "core/backend.h"
#include "model/config.h"

#include <cstdint>
#include <vector>

namespace minicpm {

class kv_pool {
  public:
    // n_blocks blocks of MINICPM_KV_BLOCK_SIZE tokens; throws MINICPM_STATUS_OUT_OF_MEMORY when it cannot
    // allocate.
    kv_pool(const model_config & cfg, dtype type, int32_t n_blocks);
    ~kv_pool();
    kv_pool(const kv_pool &) = delete;
    kv_pool & operator=(const kv_pool &) = delete;

    // Bytes of K plus V of one block (MINICPM_KV_BLOCK_SIZE tokens, all layers) for cfg at this dtype.
    static uint64_t bytes_per_block(const model_config & cfg, dtype type);

    kv_layer layer(int32_t il) const;
    dtype    type() const { return type_; }
    int32_t  n_blocks() const { return n_blocks_; }
    int32_t  n_free() const { return int32_t(free_.size()); }

    int32_t alloc();          // a free block index, or -1 when none is left
    void    release(int32_t block);  // throws MINICPM_STATUS_INTERNAL for a block that is not allocated

  private:
    dtype                type_;
    int32_t              n_blocks_;
    int32_t              n_layer_;
    size_t               layer_stride_;  // bytes of k (or v) of one layer
    int32_t              n_head_kv_, head_dim_;
    void *               k_ = nullptr;
    void *               v_ = nullptr;
    std::vector<int32_t> free_;
    std::vector<uint8_t> used_;  // 1 while a block is handed out: catches double release
};

}  // namespace minicpm
