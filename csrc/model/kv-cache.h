// The KV pool: 64-token blocks for every layer in backend memory, handed out to sequences by block index
// with reference counts, plus per-block side storage that an attention variant can own. A sequence's block
// table maps slot s to block blocks[s / 64], index s % 64 (same block index in every layer).
//
// Sharing: a block may be referenced by several sequences (a forked prefix). Rows are only ever written into
// a block its sequence holds alone: kv_seq_prepare() copies a shared block before a write (copy on write).
//
// Side storage: each registered side area has a fixed number of bytes per (layer, block). The pool records,
// per block, how many leading slots the side data describes (side_valid). Every change to a block's rows
// lowers it: kv_seq_prepare() for the slots about to be written, kv_seq_copy_rows() for the slots written,
// kv_seq_truncate() for the rows it drops from a block held alone, and a freed block starts again at 0. A copied (copy-on-write) block keeps its source's side data and count.
// The owner of a side area updates the data and raises the count as it fills it in.
//
// Owned by one thread (a context's caller or the engine's scheduler thread).
#pragma once

#include "core/backend.h"
#include "model/config.h"

#include <cstdint>
#include <functional>
#include <vector>

namespace minicpm {

class kv_pool {
  public:
    // n_blocks blocks of MINICPM_KV_BLOCK_SIZE tokens allocated on be; throws _OUT_OF_MEMORY when it cannot.
    kv_pool(backend & be, const model_config & cfg, dtype type, int32_t n_blocks);
    ~kv_pool();
    kv_pool(const kv_pool &) = delete;
    kv_pool & operator=(const kv_pool &) = delete;

    // Bytes of one block (MINICPM_KV_BLOCK_SIZE tokens, all layers) for cfg at this dtype: K plus V, plus the
    // InfLLM v2 compressed keys when cfg runs sparse attention (sparse_bytes_per_block).
    static uint64_t bytes_per_block(const model_config & cfg, dtype type);
    static uint64_t sparse_bytes_per_block(const model_config & cfg);

    // The compressed key caches of layer il (side storage registered by the constructor when cfg runs sparse
    // attention; base == nullptr otherwise).
    kv_compressed compressed(int32_t il) const;

    kv_layer layer(int32_t il) const;
    dtype    type() const { return type_; }
    int32_t  n_blocks() const { return n_blocks_; }
    // Blocks alloc() can hand out: free ones plus idle cached ones (evicted on demand).
    int32_t  n_free() const { return int32_t(free_.size()) + n_idle_; }
    int32_t  n_idle() const { return n_idle_; }  // cached blocks no sequence references
    uint64_t n_evicted() const { return n_evicted_; }

    // A free block with reference count 1, or -1 when none is left. When no block is free it evicts the
    // least recently idled cached block (the evict hook is told first).
    int32_t alloc();
    void    retain(int32_t block);    // one more reference (a held block, or an idle cached one: revived)
    void    release(int32_t block);   // one reference less; at 0 freed, or idle if cached. Throws _INTERNAL for a free block.
    int32_t refs(int32_t block) const;

    // Prefix caching. A cached block is immutable (kv_seq_prepare copies it before a write, however many
    // references it has) and outlives its references: at 0 it becomes idle (kept, contents and side data
    // intact, in LRU order) instead of free. Uncaching an idle block frees it.
    void set_cached(int32_t block, bool cached);
    bool cached(int32_t block) const { return block >= 0 && block < n_blocks_ && cached_[size_t(block)] != 0; }
    void set_evict_hook(std::function<void(int32_t block)> fn) { evict_hook_ = std::move(fn); }
    // Copies n slots of K and V (every layer) from (src, src_slot) to (dst, dst_slot); lowers dst's side_valid.
    void    copy_slots(int32_t dst, int32_t dst_slot, int32_t src, int32_t src_slot, int32_t n);

    // Copies a whole block: every slot, every side area and side_valid.
    void    copy_block(int32_t dst, int32_t src);

    // Registers a side area of bytes_per_layer_block bytes per (layer, block), zero-filled; returns its id.
    int32_t add_side(size_t bytes_per_layer_block);
    void *  side(int32_t id, int32_t il, int32_t block) const;  // backend address of one (layer, block) part
    int32_t side_valid(int32_t block) const;
    void    set_side_valid(int32_t block, int32_t n_slots);
    void    lower_side_valid(int32_t block, int32_t slot);  // side_valid = min(side_valid, slot)

  private:
    void check_block(int32_t block, const char * what) const;
    void lru_push(int32_t block);    // at the most recently idled end
    void lru_remove(int32_t block);

    struct side_area {
        buffer buf;
        size_t per_layer_block = 0;
    };

    backend &              be_;
    sparse_attn_params     sparse_;
    int32_t                sparse_side_ = -1;
    dtype                  type_;
    int32_t                n_blocks_;
    int32_t                n_layer_;
    size_t                 layer_stride_;  // bytes of k (or v) of one layer
    size_t                 block_stride_;  // bytes of k (or v) of one block in one layer
    size_t                 slot_stride_;   // bytes of one slot of one head
    int32_t                n_head_kv_, head_dim_;
    buffer                 k_, v_;
    std::vector<side_area> sides_;
    std::vector<int32_t>   free_;
    std::vector<int32_t>   refs_;
    std::vector<int32_t>   side_valid_;
    std::vector<uint8_t>   cached_;
    std::vector<int32_t>   lru_prev_, lru_next_;  // idle cached blocks, a list from lru_head_ (oldest)
    int32_t                lru_head_ = -1, lru_tail_ = -1, n_idle_ = 0;
    uint64_t               n_evicted_ = 0;
    std::function<void(int32_t)> evict_hook_;
};

// One sequence's slots: n_tokens committed slots, held in blocks (blocks.size() * 64 >= n_tokens; more blocks
// may be held for rows being written).
struct kv_seq {
    std::vector<int32_t> blocks;
    int32_t              n_tokens = 0;
};

int32_t kv_blocks_for(int64_t n_slots);

// Makes slots [from, to) of s writable: allocates missing blocks and copies shared blocks that hold slots in
// the range; lowers side_valid of the touched blocks to the first written slot. Returns false (and leaves s
// holding exactly what it held before, with its old contents) when the pool runs dry.
bool kv_seq_prepare(kv_pool & pool, kv_seq & s, int32_t from, int32_t to);
// Keeps the first n slots (n >= n_tokens changes nothing but dropping spare blocks past n_tokens): releases
// every block past them.
void kv_seq_truncate(kv_pool & pool, kv_seq & s, int32_t n);
// dst (which must be empty) becomes the first n slots of src, sharing src's blocks (reference counted).
void kv_seq_fork(kv_pool & pool, const kv_seq & src, int32_t n, kv_seq & dst);
// Moves slot src_slots[i] to dst_slots[i] in order (compaction of an accepted draft path). The destination
// slots must lie in blocks s holds alone (call kv_seq_prepare first); slots beyond n_tokens are allowed.
void kv_seq_copy_rows(kv_pool & pool, kv_seq & s, const int32_t * src_slots, const int32_t * dst_slots, int32_t n);
// Releases every block, last first (so that cached blocks of a sequence's tail idle, and are evicted, before
// its head); n_tokens = 0.
void kv_seq_free(kv_pool & pool, kv_seq & s);

}  // namespace minicpm
