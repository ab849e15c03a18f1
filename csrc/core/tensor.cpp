#include "core/tensor.h"

namespace minicpm {

int64_t tensor_desc::n_groups() const {
    if (!quantized() || group_size <= 0) return 1;
    return (cols + group_size - 1) / group_size;
}

size_t tensor_desc::data_bytes() const {
    const size_t n = size_t(rows) * size_t(cols);
    switch (type) {
        case dtype::f32: return n * 4;
        case dtype::f16:
        case dtype::bf16: return n * 2;
        case dtype::q8: return n;
        case dtype::q4: return (n + 1) / 2;
    }
    return 0;
}

size_t tensor_desc::bytes() const {
    size_t b = data_bytes();
    if (!quantized()) return b;
    const size_t g = size_t(rows) * size_t(n_groups());
    b += g * dtype_size(scale_type);
    if (zeros) b += g;
    if (perm) b += size_t(cols) * 4;
    return b;
}

}  // namespace minicpm
