// f16 conversions done on the bits, so they are exact and do not depend on the FPU's rounding or flush modes.
#include "core/dtype.h"

namespace minicpm {

const char * dtype_name(dtype t) {
    switch (t) {
        case dtype::f32: return "f32";
        case dtype::f16: return "f16";
        case dtype::bf16: return "bf16";
        case dtype::q8: return "q8";
        case dtype::q4: return "q4";
    }
    return "unknown";
}

float f16_to_f32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t       exp = (h >> 10) & 0x1fu;
    uint32_t       man = h & 0x3ffu;
    uint32_t       u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);  // inf, or NaN with its payload
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else {
        // subnormal: shift the leading one up to the implicit bit, lowering the exponent each step
        exp = 113;
        while ((man & 0x400u) == 0) {
            man <<= 1;
            exp--;
        }
        u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN stays a (quiet) NaN
    if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf (65504 is the largest half)
    if (a >= 0x38800000u) {
        // normal half: rebias the exponent by 127 - 15 and round the 13 dropped bits to nearest even
        const uint32_t r = a - 0x38000000u + 0xfffu + ((a >> 13) & 1u);
        return uint16_t(sign | (r >> 13));
    }
    // subnormal half (or zero): value / 2^-24 rounded to nearest even
    const uint32_t e = a >> 23;
    if (e < 102) return uint16_t(sign);  // below 2^-25, including f32 subnormals
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t       q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return uint16_t(sign | q);
}

}  // namespace minicpm
