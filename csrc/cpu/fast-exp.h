// exp(x) in plain float arithmetic that auto-vectorizes (no libm call): Cody-Waite reduction x = n ln2 + r
// and a degree-6 polynomial, about 2 ulp on [-87, 88]; inputs are clamped to that range (exp(-inf) -> ~1e-38;
// NaN is not handled).
// Include inside an anonymous namespace, after <cstdint> and <cstring>.

inline float fast_exp(float x) {
    // Clamp on the bit patterns: integer compares cannot trap, so the loops around this still vectorize
    // (float compares block if-conversion under the default -ftrapping-math). As uint32, the patterns of
    // negative floats exceed all positive ones and grow with magnitude: x < -87 exactly when u > bits(-87).
    // As int32, x > 88 exactly when i > bits(88).
    uint32_t u;
    std::memcpy(&u, &x, 4);
    u = u > 0xc2ae0000u ? 0xc2ae0000u : u;                            // -87.0f
    u = int32_t(u) > int32_t(0x42b00000) ? 0x42b00000u : u;            // 88.0f
    std::memcpy(&x, &u, 4);
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without needing SSE4.1's roundps.
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.38888894e-3f;
    p = p * r + 8.33333377e-3f;
    p = p * r + 4.16666679e-2f;
    p = p * r + 1.66666672e-1f;
    p = p * r + 5.00000000e-1f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = (int32_t(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, 4);
    return p * scale;
}
