#include "core/range-alloc.h"

#include "core/status.h"

#include <iterator>
#include <string>

namespace minicpm {

range_allocator::range_allocator(size_t size, size_t align) : size_(size), align_(align ? align : 1), free_bytes_(size) {
    if (size > 0) free_[0] = size;
}

bool range_allocator::take(size_t bytes, size_t * offset) {
    const size_t need = (bytes + align_ - 1) / align_ * align_;
    if (need == 0 || need < bytes) return false;
    for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->second < need) continue;
        const size_t at = it->first, rest = it->second - need;
        free_.erase(it);
        if (rest > 0) free_[at + need] = rest;
        taken_[at] = need;
        free_bytes_ -= need;
        *offset = at;
        return true;
    }
    return false;
}

void range_allocator::give(size_t offset) {
    const auto t = taken_.find(offset);
    if (t == taken_.end())
        fail(MINICPM_STATUS_INTERNAL, "range_allocator: offset " + std::to_string(offset) + " was not taken");
    size_t at = offset, n = t->second;
    taken_.erase(t);
    free_bytes_ += n;
    auto next = free_.lower_bound(at);
    if (next != free_.end() && next->first == at + n) {  // merge with the free range after
        n += next->second;
        next = free_.erase(next);
    }
    if (next != free_.begin()) {  // and with the one before
        auto prev = std::prev(next);
        if (prev->first + prev->second == at) {
            prev->second += n;
            return;
        }
    }
    free_[at] = n;
}

size_t range_allocator::largest_free() const {
    size_t best = 0;
    for (const auto & f : free_) best = f.second > best ? f.second : best;
    return best;
}

}  // namespace minicpm
