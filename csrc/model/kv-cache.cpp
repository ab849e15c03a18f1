#include "model/kv-cache.h"

#include "core/status.h"

#include <algorithm>
#include <string>

namespace minicpm {

static constexpr int32_t kBlock = MINICPM_KV_BLOCK_SIZE;

// Elements of K (or V) of one block in one layer: [nkv][64][hd].
static uint64_t block_elems(const model_config & cfg) {
    return uint64_t(cfg.n_head_kv) * kBlock * uint64_t(cfg.n_head_dim);
}

uint64_t kv_pool::sparse_bytes_per_block(const model_config & cfg) {
    if (!cfg.sparse.enabled) return 0;
    const kv_compressed cc = make_kv_compressed(cfg.sparse.params(), cfg.n_head_kv, cfg.n_head_dim, nullptr);
    return uint64_t(cfg.n_layer) * uint64_t(cc.block_floats) * sizeof(float);
}

uint64_t kv_pool::bytes_per_block(const model_config & cfg, dtype type) {
    return 2 * uint64_t(cfg.n_layer) * block_elems(cfg) * dtype_size(type) + sparse_bytes_per_block(cfg);
}

kv_compressed kv_pool::compressed(int32_t il) const {
    if (sparse_side_ < 0) return kv_compressed{};
    return make_kv_compressed(sparse_, n_head_kv_, head_dim_, (float *) side(sparse_side_, il, 0));
}

int32_t kv_blocks_for(int64_t n_slots) { return int32_t((n_slots + kBlock - 1) / kBlock); }

kv_pool::kv_pool(backend & be, const model_config & cfg, dtype type, int32_t n_blocks)
    : be_(be), type_(type), n_blocks_(n_blocks), n_layer_(cfg.n_layer), n_head_kv_(cfg.n_head_kv),
      head_dim_(cfg.n_head_dim) {
    if (n_blocks <= 0 || cfg.n_layer <= 0 || cfg.n_head_kv <= 0 || cfg.n_head_dim <= 0)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "KV pool: " + std::to_string(n_blocks) +
                                                  " blocks requested for a model with " +
                                                  std::to_string(cfg.n_layer) + " layers");
    if (dtype_is_quantized(type)) fail(MINICPM_STATUS_UNSUPPORTED, "KV pool: KV dtype must be f32, f16 or bf16");
    const uint64_t layer_bytes = uint64_t(n_blocks) * block_elems(cfg) * dtype_size(type);
    const uint64_t total = layer_bytes * uint64_t(cfg.n_layer);
    if (total / uint64_t(cfg.n_layer) != layer_bytes || total > uint64_t(SIZE_MAX))
        fail(MINICPM_STATUS_OUT_OF_MEMORY, "KV pool: size overflows (" + std::to_string(n_blocks) + " blocks)");
    layer_stride_ = size_t(layer_bytes);
    block_stride_ = size_t(block_elems(cfg) * dtype_size(type));
    slot_stride_ = size_t(cfg.n_head_dim) * dtype_size(type);
    try {
        k_ = be_.alloc(size_t(total), buffer_usage::kv);
        v_ = be_.alloc(size_t(total), buffer_usage::kv);
    } catch (const error &) {
        be_.release(k_);
        fail(MINICPM_STATUS_OUT_OF_MEMORY, "KV pool: cannot allocate 2 x " + std::to_string(total) + " bytes (" +
                                               std::to_string(n_blocks) + " blocks of " + std::to_string(kBlock) +
                                               " tokens, " + dtype_name(type) +
                                               "); lower n_ctx, n_seq_max or the KV memory limit");
    }
    // Lowest index first, so a fresh pool fills from the start of the allocation.
    free_.reserve(size_t(n_blocks));
    for (int32_t b = n_blocks - 1; b >= 0; --b) free_.push_back(b);
    refs_.assign(size_t(n_blocks), 0);
    side_valid_.assign(size_t(n_blocks), 0);
    cached_.assign(size_t(n_blocks), 0);
    lru_prev_.assign(size_t(n_blocks), -1);
    lru_next_.assign(size_t(n_blocks), -1);
    if (cfg.sparse.enabled) {
        sparse_ = cfg.sparse.params();
        try {
            sparse_side_ = add_side(size_t(sparse_bytes_per_block(cfg) / uint64_t(cfg.n_layer)));
        } catch (const error &) {
            be_.release(k_);
            be_.release(v_);
            throw;
        }
    }
}

kv_pool::~kv_pool() {
    be_.release(k_);
    be_.release(v_);
    for (side_area & s : sides_) be_.release(s.buf);
}

kv_layer kv_pool::layer(int32_t il) const {
    if (il < 0 || il >= n_layer_)
        fail(MINICPM_STATUS_INTERNAL, "KV pool: layer " + std::to_string(il) + " out of range");
    kv_layer l;
    l.type = type_;
    l.k = (uint8_t *) k_.data + size_t(il) * layer_stride_;
    l.v = (uint8_t *) v_.data + size_t(il) * layer_stride_;
    l.n_head_kv = n_head_kv_;
    l.head_dim = head_dim_;
    return l;
}

void kv_pool::check_block(int32_t block, const char * what) const {
    if (block < 0 || block >= n_blocks_ || refs_[size_t(block)] <= 0)
        fail(MINICPM_STATUS_INTERNAL, std::string("KV pool: ") + what + " of block " + std::to_string(block) +
                                          " that is not allocated");
}

int32_t kv_pool::alloc() {
    int32_t b = -1;
    if (!free_.empty()) {
        b = free_.back();
        free_.pop_back();
    } else if (lru_head_ >= 0) {
        b = lru_head_;  // the least recently idled cached block: forgotten, then reused
        lru_remove(b);
        cached_[size_t(b)] = 0;
        ++n_evicted_;
        if (evict_hook_) evict_hook_(b);
    } else {
        return -1;
    }
    refs_[size_t(b)] = 1;
    side_valid_[size_t(b)] = 0;
    return b;
}

void kv_pool::retain(int32_t block) {
    if (block >= 0 && block < n_blocks_ && refs_[size_t(block)] == 0 && cached_[size_t(block)] != 0) {
        lru_remove(block);  // an idle cached block is revived with its contents
        refs_[size_t(block)] = 1;
        return;
    }
    check_block(block, "retain");
    ++refs_[size_t(block)];
}

void kv_pool::release(int32_t block) {
    check_block(block, "release");
    if (--refs_[size_t(block)] == 0) {
        if (cached_[size_t(block)] != 0) {
            lru_push(block);
        } else {
            side_valid_[size_t(block)] = 0;
            free_.push_back(block);
        }
    }
}

void kv_pool::set_cached(int32_t block, bool cached) {
    if (block < 0 || block >= n_blocks_) fail(MINICPM_STATUS_INTERNAL, "KV pool: set_cached of a bad block");
    const bool was = cached_[size_t(block)] != 0;
    if (was == cached) return;
    if (cached) {
        check_block(block, "set_cached");  // only a held block (with its rows written) can enter the cache
        cached_[size_t(block)] = 1;
        return;
    }
    cached_[size_t(block)] = 0;
    if (refs_[size_t(block)] == 0) {  // idle: nobody holds it, so it is free now
        lru_remove(block);
        side_valid_[size_t(block)] = 0;
        free_.push_back(block);
    }
}

void kv_pool::lru_push(int32_t block) {
    lru_prev_[size_t(block)] = lru_tail_;
    lru_next_[size_t(block)] = -1;
    if (lru_tail_ >= 0) lru_next_[size_t(lru_tail_)] = block;
    else lru_head_ = block;
    lru_tail_ = block;
    ++n_idle_;
}

void kv_pool::lru_remove(int32_t block) {
    const int32_t p = lru_prev_[size_t(block)], n = lru_next_[size_t(block)];
    if (p >= 0) lru_next_[size_t(p)] = n;
    else lru_head_ = n;
    if (n >= 0) lru_prev_[size_t(n)] = p;
    else lru_tail_ = p;
    lru_prev_[size_t(block)] = lru_next_[size_t(block)] = -1;
    --n_idle_;
}

int32_t kv_pool::refs(int32_t block) const {
    if (block < 0 || block >= n_blocks_) return 0;
    return refs_[size_t(block)];
}

void kv_pool::copy_slots(int32_t dst, int32_t dst_slot, int32_t src, int32_t src_slot, int32_t n) {
    check_block(dst, "copy into");
    check_block(src, "copy from");
    if (n <= 0) return;
    if (dst_slot < 0 || src_slot < 0 || dst_slot + n > kBlock || src_slot + n > kBlock)
        fail(MINICPM_STATUS_INTERNAL, "KV pool: slot range out of a block");
    // One (layer, head) tile holds the block's 64 slots contiguously: copy n slots per tile.
    for (int32_t il = 0; il < n_layer_; ++il) {
        for (int32_t h = 0; h < n_head_kv_; ++h) {
            const size_t tile = size_t(h) * kBlock * slot_stride_;
            const size_t d = size_t(il) * layer_stride_ + size_t(dst) * block_stride_ + tile + dst_slot * slot_stride_;
            const size_t s = size_t(il) * layer_stride_ + size_t(src) * block_stride_ + tile + src_slot * slot_stride_;
            be_.copy(k_, d, k_, s, size_t(n) * slot_stride_);
            be_.copy(v_, d, v_, s, size_t(n) * slot_stride_);
        }
    }
    lower_side_valid(dst, dst_slot);
}

void kv_pool::copy_block(int32_t dst, int32_t src) {
    copy_slots(dst, 0, src, 0, kBlock);
    for (size_t id = 0; id < sides_.size(); ++id)
        for (int32_t il = 0; il < n_layer_; ++il) {
            const side_area & a = sides_[id];
            const size_t      d = (size_t(il) * size_t(n_blocks_) + size_t(dst)) * a.per_layer_block;
            const size_t      s = (size_t(il) * size_t(n_blocks_) + size_t(src)) * a.per_layer_block;
            be_.copy(a.buf, d, a.buf, s, a.per_layer_block);
        }
    side_valid_[size_t(dst)] = side_valid_[size_t(src)];
}

int32_t kv_pool::add_side(size_t bytes_per_layer_block) {
    side_area a;
    a.per_layer_block = bytes_per_layer_block;
    a.buf = be_.alloc(bytes_per_layer_block * size_t(n_layer_) * size_t(n_blocks_), buffer_usage::kv);
    sides_.push_back(a);
    return int32_t(sides_.size()) - 1;
}

void * kv_pool::side(int32_t id, int32_t il, int32_t block) const {
    if (id < 0 || id >= int32_t(sides_.size()) || il < 0 || il >= n_layer_ || block < 0 || block >= n_blocks_)
        fail(MINICPM_STATUS_INTERNAL, "KV pool: side storage index out of range");
    const side_area & a = sides_[size_t(id)];
    return (uint8_t *) a.buf.data + (size_t(il) * size_t(n_blocks_) + size_t(block)) * a.per_layer_block;
}

int32_t kv_pool::side_valid(int32_t block) const {
    check_block(block, "side_valid");
    return side_valid_[size_t(block)];
}

void kv_pool::set_side_valid(int32_t block, int32_t n_slots) {
    check_block(block, "set_side_valid");
    side_valid_[size_t(block)] = std::clamp(n_slots, 0, kBlock);
}

void kv_pool::lower_side_valid(int32_t block, int32_t slot) {
    check_block(block, "lower_side_valid");
    side_valid_[size_t(block)] = std::min(side_valid_[size_t(block)], std::max(slot, 0));
}

bool kv_seq_prepare(kv_pool & pool, kv_seq & s, int32_t from, int32_t to) {
    if (from < 0 || to < from) fail(MINICPM_STATUS_INTERNAL, "kv_seq_prepare: bad slot range");
    if (to == from) return true;
    const size_t n_before = s.blocks.size();
    const size_t need = size_t(kv_blocks_for(to));
    std::vector<std::pair<size_t, int32_t>> replaced;  // (index, old block) of copied shared blocks
    auto undo = [&]() {
        for (size_t i = n_before; i < s.blocks.size(); ++i) pool.release(s.blocks[i]);
        s.blocks.resize(n_before);
        for (const auto & r : replaced) {
            pool.release(s.blocks[r.first]);
            s.blocks[r.first] = r.second;  // the reference moved to the copy comes back
        }
        return false;
    };
    while (s.blocks.size() < need) {
        const int32_t b = pool.alloc();
        if (b < 0) return undo();
        s.blocks.push_back(b);
    }
    for (size_t i = size_t(from / kBlock); i < std::min(need, n_before); ++i) {
        const int32_t old = s.blocks[i];
        if (pool.refs(old) > 1 || pool.cached(old)) {
            const int32_t b = pool.alloc();
            if (b < 0) return undo();
            pool.copy_block(b, old);
            s.blocks[i] = b;
            replaced.emplace_back(i, old);
        }
    }
    // Only now that nothing can fail: drop the references the copies replaced, and mark the rows written.
    for (const auto & r : replaced) pool.release(r.second);
    for (size_t i = size_t(from / kBlock); i < need; ++i)
        pool.lower_side_valid(s.blocks[i], int32_t(i) * kBlock > from ? 0 : from % kBlock);
    return true;
}

void kv_seq_truncate(kv_pool & pool, kv_seq & s, int32_t n) {
    if (n < 0) fail(MINICPM_STATUS_INTERNAL, "kv_seq_truncate: n < 0");
    s.n_tokens = std::min(s.n_tokens, n);
    const size_t keep = size_t(kv_blocks_for(s.n_tokens));
    while (s.blocks.size() > keep) {
        pool.release(s.blocks.back());
        s.blocks.pop_back();
    }
    // The dropped rows of a block held alone are gone for good: its side data stops at the kept ones. A shared
    // block still holds them for the other sequences.
    if (s.n_tokens % kBlock != 0 && pool.refs(s.blocks.back()) == 1 && !pool.cached(s.blocks.back()))
        pool.lower_side_valid(s.blocks.back(), s.n_tokens % kBlock);
}

void kv_seq_fork(kv_pool & pool, const kv_seq & src, int32_t n, kv_seq & dst) {
    if (!dst.blocks.empty()) fail(MINICPM_STATUS_INTERNAL, "kv_seq_fork: destination is not empty");
    if (n < 0 || n > src.n_tokens) fail(MINICPM_STATUS_INTERNAL, "kv_seq_fork: prefix longer than the source");
    const size_t k = size_t(kv_blocks_for(n));
    for (size_t i = 0; i < k; ++i) {
        pool.retain(src.blocks[i]);
        dst.blocks.push_back(src.blocks[i]);
    }
    dst.n_tokens = n;
}

void kv_seq_copy_rows(kv_pool & pool, kv_seq & s, const int32_t * src_slots, const int32_t * dst_slots, int32_t n) {
    const int64_t held = int64_t(s.blocks.size()) * kBlock;
    for (int32_t i = 0; i < n; ++i) {
        const int32_t a = src_slots[i], b = dst_slots[i];
        if (a < 0 || b < 0 || a >= held || b >= held)
            fail(MINICPM_STATUS_INTERNAL, "kv_seq_copy_rows: slot outside the sequence's blocks");
        if (a == b) continue;
        const int32_t db = s.blocks[size_t(b / kBlock)];
        if (pool.refs(db) > 1) fail(MINICPM_STATUS_INTERNAL, "kv_seq_copy_rows: destination block is shared");
        pool.copy_slots(db, b % kBlock, s.blocks[size_t(a / kBlock)], a % kBlock, 1);
    }
}

void kv_seq_free(kv_pool & pool, kv_seq & s) {
    for (auto it = s.blocks.rbegin(); it != s.blocks.rend(); ++it) pool.release(*it);
    s.blocks.clear();
    s.n_tokens = 0;
}

}  // namespace minicpm
