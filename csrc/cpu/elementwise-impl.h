// Elementwise fast ops in plain C++, compiled once per instruction set like attention-impl.h: elementwise.cpp
// (baseline; NEON on ARM64), elementwise-avx2.cpp and elementwise-avx512.cpp. Include inside an anonymous
// namespace after <cmath>, <cstdint>, <cstring> and cpu/fast-exp.h. Precision: rms_norm and add_scaled exact f32
// (lane-wise partial sums), silu_mul with fast_exp (~2 ulp).

// y[H] = x * (1 / sqrt(mean(x^2) + eps)) * g; y may alias x.
inline void ew_rms_norm_row_impl(float * y, const float * x, const float * g, int64_t H, float eps) {
    float part[16] = {};  // lane-wise partial sums: vectorizes without reassociating a float reduction
    int64_t i = 0;
    for (; i + 16 <= H; i += 16)
        for (int j = 0; j < 16; ++j) part[j] += x[i + j] * x[i + j];
    float ss = 0.0f;
    for (int j = 0; j < 16; ++j) ss += part[j];
    for (; i < H; ++i) ss += x[i] * x[i];
    const float r = 1.0f / std::sqrt(ss / float(H) + eps);
    for (i = 0; i < H; ++i) y[i] = x[i] * r * g[i];
}

inline void ew_silu_mul_impl(float * out, const float * gate, const float * up, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + fast_exp(-gate[i])) * up[i];
}

inline void ew_add_scaled_impl(float * x, const float * a, float scale, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += a[i] * scale;
}
