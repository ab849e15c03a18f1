// The CUDA device arena's sub-allocator (core/range-alloc.h), on the host: random takes and gives against an
// occupancy map of the range (no overlap, alignment, free count), merging (everything given back leaves one
// free range of the whole size), first fit, and a clear error for a bad give.
#include "core/range-alloc.h"
#include "core/status.h"
#include "tests/tiny-model.h"

#include <random>
#include <vector>

using namespace minicpm;

int main() {
    const size_t size = 1 << 20, align = 256;
    range_allocator ra(size, align);
    std::vector<uint8_t> used(size, 0);
    std::vector<std::pair<size_t, size_t>> live;  // offset, bytes asked
    std::mt19937 rng(5);
    int32_t n_take = 0, n_full = 0, overlaps = 0, misaligned = 0, miscounted = 0;
    for (int step = 0; step < 20000; ++step) {
        if (live.empty() || rng() % 3 != 0) {
            const size_t bytes = 1 + rng() % (rng() % 8 == 0 ? 200000 : 5000);
            size_t at = 0;
            if (!ra.take(bytes, &at)) {
                ++n_full;
                continue;
            }
            ++n_take;
            misaligned += at % align != 0;
            for (size_t i = at; i < at + bytes; ++i) overlaps += used[i]++ != 0;
            live.emplace_back(at, bytes);
        } else {
            const size_t k = rng() % live.size();
            ra.give(live[k].first);
            for (size_t i = live[k].first; i < live[k].first + live[k].second; ++i) used[i] = 0;
            live[k] = live.back();
            live.pop_back();
        }
        size_t rounded = 0;
        for (const auto & l : live) rounded += (l.second + align - 1) / align * align;
        miscounted += ra.free_bytes() != size - rounded;
    }
    CHECK(overlaps == 0 && misaligned == 0 && miscounted == 0 && n_full > 0,
          "20000 random steps: %d takes, %d refused when full; %d overlapping bytes, %d misaligned, %d steps with a "
          "wrong free count", n_take, n_full, overlaps, misaligned, miscounted);
    for (const auto & l : live) ra.give(l.first);
    CHECK(ra.free_bytes() == size && ra.largest_free() == size,
          "all given back: %zu free, largest free range %zu (want %zu: merged)", ra.free_bytes(), ra.largest_free(),
          size);
    size_t a = 0, b = 0, c = 0, d = 0;
    const bool fit = ra.take(1000, &a) && ra.take(1000, &b) && ra.take(1000, &c);
    ra.give(b);
    const bool refit = ra.take(700, &d);
    CHECK(fit && refit && d == b && a == 0 && c == 2048, "first fit: a %zu b %zu c %zu, 700 bytes after giving b at %zu",
          a, b, c, d);
    size_t e = 0;
    CHECK(!ra.take(size, &e) && ra.largest_free() == size - 3 * 1024, "too large refused; largest free %zu",
          ra.largest_free());
    minicpm_test::expect_error("give of an offset not taken", MINICPM_STATUS_INTERNAL, {"not taken"},
                               [&] { ra.give(12345); });
    return minicpm_test::finish();
}
