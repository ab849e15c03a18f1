// Non-owning view of a 2-D (or 1-D, rows == 1) row-major tensor as stored in the checkpoint.
#pragma once

#include "core/dtype.h"

#include <cstdint>

namespace minicpm {

struct tensor_view {
    dtype        type = dtype::f32;
    int64_t      rows = 0;  // HF shape[0] (out features) for a matrix; 1 for a vector
    int64_t      cols = 0;  // HF shape[1] (in features); the length for a vector
    const void * data = nullptr;

    size_t bytes() const { return size_t(rows * cols) * dtype_size(type); }
    const uint8_t * row(int64_t r) const { return (const uint8_t *) data + size_t(r * cols) * dtype_size(type); }
};

}  // namespace minicpm
