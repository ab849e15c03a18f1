// First-fit sub-allocation of one fixed range [0, size) (the CUDA backend's device memory arena): offsets
// aligned to `align`, freed ranges merged with their free neighbours so the arena does not fragment into
// pieces smaller than what a grown workspace asks for. Not thread-safe: the owner locks.
#pragma once

#include <cstddef>
#include <map>

namespace minicpm {

class range_allocator {
  public:
    range_allocator(size_t size, size_t align);

    // The offset of `bytes` (rounded up to align) in the first free range that holds them; false when none does.
    bool take(size_t bytes, size_t * offset);
    // Frees what take() returned at offset. Throws _INTERNAL for an offset that is not taken.
    void give(size_t offset);

    size_t size() const { return size_; }
    size_t free_bytes() const { return free_bytes_; }
    size_t largest_free() const;

  private:
    size_t                   size_, align_, free_bytes_;
    std::map<size_t, size_t> free_;   // offset -> bytes, no two adjacent
    std::map<size_t, size_t> taken_;  // offset -> bytes
};

}  // namespace minicpm
