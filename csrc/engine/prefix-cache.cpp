#include "engine/prefix-cache.h"

#include "core/status.h"

#include <algorithm>

namespace minicpm {

static constexpr int32_t kBlock = MINICPM_KV_BLOCK_SIZE;

static inline uint64_t mix(uint64_t x) {  // splitmix64 finalizer
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

prefix_cache::prefix_cache(kv_pool & pool, uint64_t seed)
    : pool_(pool), seed_(mix(seed ^ 0x6d696e6963706d34ULL)), by_block_(size_t(pool.n_blocks())) {
    pool_.set_evict_hook([this](int32_t b) { forget(b); });
}

prefix_cache::~prefix_cache() {
    pool_.set_evict_hook(nullptr);
    for (size_t b = 0; b < by_block_.size(); ++b)
        if (by_block_[b].used) pool_.set_cached(int32_t(b), false);
}

uint64_t prefix_cache::chain(uint64_t parent, const int32_t * tokens) {
    uint64_t h = mix(parent + 0x9e3779b97f4a7c15ULL);
    for (int32_t i = 0; i < kBlock; ++i) h = mix(h ^ (uint64_t(uint32_t(tokens[i])) + 0x9e3779b97f4a7c15ULL * uint64_t(i + 1)));
    return h;
}

void prefix_cache::match(const int32_t * tokens, int32_t n, int32_t max_blocks, std::vector<int32_t> & out,
                         uint64_t * last_key) const {
    out.clear();
    uint64_t key = seed_;
    const int32_t n_full = std::min(n / kBlock, max_blocks);
    for (int32_t i = 0; i < n_full; ++i) {
        const int32_t * t = tokens + size_t(i) * kBlock;
        const uint64_t  k = chain(key, t);
        auto            it = by_key_.find(k);
        if (it == by_key_.end()) break;
        // The key decides, the stored ids confirm: a 64-bit collision never serves another prefix's rows.
        const entry & e = by_block_[size_t(it->second)];
        if (e.parent != key || !std::equal(t, t + kBlock, e.tokens.begin())) break;
        out.push_back(it->second);
        key = k;
    }
    if (last_key) *last_key = key;
}

bool prefix_cache::insert(uint64_t key, uint64_t parent, const int32_t * tokens, int32_t block) {
    if (block < 0 || block >= int32_t(by_block_.size()))
        fail(MINICPM_STATUS_INTERNAL, "prefix cache: block out of range");
    if (by_key_.count(key) != 0 || by_block_[size_t(block)].used) return false;
    pool_.set_cached(block, true);
    entry & e = by_block_[size_t(block)];
    e.key = key;
    e.parent = parent;
    std::copy(tokens, tokens + kBlock, e.tokens.begin());
    e.used = true;
    by_key_.emplace(key, block);
    return true;
}

void prefix_cache::forget(int32_t block) {
    entry & e = by_block_[size_t(block)];
    if (!e.used) return;
    by_key_.erase(e.key);
    e.used = false;
}

}  // namespace minicpm
