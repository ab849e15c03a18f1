// Prefix caching across requests: an index from the content of full 64-token KV blocks to the pool blocks that
// hold them. A block's key is a 64-bit hash chained over its token ids and its parent's key, seeded with what
// else changes KV contents (KV dtype, attention mode), so equal keys mean equal prefixes. The pool keeps
// indexed blocks after their last reference (idle, LRU) and evicts them only when it needs room; a hit is
// shared by reference (kv_pool::retain), and kv_seq_prepare never writes into an indexed block.
//
// Owned by the scheduler thread (like the pool it indexes).
#pragma once

#include "model/kv-cache.h"

#include <array>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace minicpm {

class prefix_cache {
  public:
    prefix_cache(kv_pool & pool, uint64_t seed);  // installs the pool's evict hook
    ~prefix_cache();                               // uncaches every block (idle ones become free)
    prefix_cache(const prefix_cache &) = delete;
    prefix_cache & operator=(const prefix_cache &) = delete;

    uint64_t seed() const { return seed_; }
    // The key of a block of MINICPM_KV_BLOCK_SIZE tokens after the prefix whose key is parent.
    static uint64_t chain(uint64_t parent, const int32_t * tokens);

    // The blocks holding the longest cached prefix of tokens[0, n) in whole blocks (at most max_blocks),
    // in order; *last_key = the key of the last one (seed() when none).
    void match(const int32_t * tokens, int32_t n, int32_t max_blocks, std::vector<int32_t> & out,
               uint64_t * last_key) const;
    // Indexes a held block whose rows hold tokens (one block) after the prefix keyed parent, under
    // key = chain(parent, tokens). False (nothing changes) when the key is indexed already.
    bool insert(uint64_t key, uint64_t parent, const int32_t * tokens, int32_t block);

    int32_t size() const { return int32_t(by_key_.size()); }

  private:
    void forget(int32_t block);  // the evict hook

    struct entry {
        uint64_t key = 0, parent = 0;
        std::array<int32_t, MINICPM_KV_BLOCK_SIZE> tokens{};
        bool used = false;
    };
    kv_pool &                             pool_;
    uint64_t                              seed_;
    std::unordered_map<uint64_t, int32_t> by_key_;
    std::vector<entry>                    by_block_;
};

}  // namespace minicpm
