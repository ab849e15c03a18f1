// CPM.cu's Marlin repack done forward, for tests that need a `*-cpmcu` checkpoint without CPM.cu: symmetric RTN
// int4 of a [N, K] weight, then the tiling and permutations of ENGINE_REFERENCE section 5 in the direction the
// repack script runs (src/checkpoint/marlin.ts is the same for the TypeScript tests; model/marlin.cpp undoes it).
#pragma once

#include "core/dtype.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace minicpm_test {

struct marlin_q4 {
    std::vector<uint8_t>  q;       // [K][N] values 0..15 (value - 8 is the integer weight)
    std::vector<uint16_t> scales;  // [G][N] f16
    int64_t               N = 0, K = 0, G = 0;
    double weight(int64_t n, int64_t k) const {  // what the q4 layout means: (q - 8) * scale
        return double(int32_t(q[size_t(k * N + n)]) - 8) * double(minicpm::f16_to_f32(scales[size_t((k / (K / G)) * N + n)]));
    }
};

// w row-major [N, K]; groups of K / G in features; scale = max|w| / 7 per (row, group), rounded to f16.
inline marlin_q4 quantize_sym_q4(const std::vector<double> & w, int64_t N, int64_t K, int64_t G) {
    marlin_q4 m;
    m.N = N, m.K = K, m.G = G;
    m.q.resize(size_t(N * K));
    m.scales.resize(size_t(G * N));
    const int64_t gs = K / G;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < G; ++g) {
            double amax = 0;
            for (int64_t k = g * gs; k < (g + 1) * gs; ++k) amax = std::max(amax, std::fabs(w[size_t(n * K + k)]));
            const uint16_t s16 = minicpm::f32_to_f16(float(amax > 0 ? amax / 7.0 : 1.0));
            m.scales[size_t(g * N + n)] = s16;
            const double s = minicpm::f16_to_f32(s16);
            for (int64_t k = g * gs; k < (g + 1) * gs; ++k)
                m.q[size_t(k * N + n)] = uint8_t(std::clamp<double>(std::nearbyint(w[size_t(n * K + k)] / s) + 8, 0, 15));
        }
    return m;
}

// qweight int32 [K/16, 2N] and permuted scales [G, N], as the repack script writes them.
inline void marlin_pack(const marlin_q4 & m, std::vector<int32_t> & qweight, std::vector<uint16_t> & scales) {
    int32_t base[1024], n_base = 0;
    for (int32_t i = 0; i < 32; ++i) {
        int32_t perm1[8], p = 0;
        for (int32_t block = 0; block < 2; ++block)
            for (int32_t row : {2 * (i % 4), 2 * (i % 4) + 1, 2 * (i % 4 + 4), 2 * (i % 4 + 4) + 1})
                perm1[p++] = 16 * row + i / 4 + 8 * block;
        for (int32_t j = 0; j < 4; ++j)
            for (int32_t x : perm1) base[n_base++] = x + 256 * j;
    }
    int32_t perm[1024];
    const int32_t interleave[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    for (int32_t r = 0; r < 128; ++r)
        for (int32_t i = 0; i < 8; ++i) perm[r * 8 + i] = base[r * 8 + interleave[i]];
    const int64_t N = m.N, K = m.K, W = N * 16;
    std::vector<uint8_t> tiled(size_t(K * N));
    for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n)
            tiled[size_t((k / 16) * W + (n / 16) * 256 + (k % 16) * 16 + n % 16)] = m.q[size_t(k * N + n)];
    qweight.assign(size_t(K / 16 * W / 8), 0);
    for (int64_t r = 0; r < K / 16; ++r)
        for (int64_t c = 0; c < W; c += 1024)
            for (int64_t j = 0; j < 1024; ++j) {
                const int64_t e = r * W + c + j;
                qweight[size_t(e / 8)] |= int32_t(uint32_t(tiled[size_t(r * W + c + perm[j])]) << (4 * (e % 8)));
            }
    std::vector<int32_t> sp;
    if (m.G > 1) {
        for (int32_t i = 0; i < 8; ++i)
            for (int32_t j = 0; j < 8; ++j) sp.push_back(i + 8 * j);
    } else {
        for (int32_t i = 0; i < 4; ++i)
            for (int32_t j : {0, 1, 8, 9, 16, 17, 24, 25}) sp.push_back(2 * i + j);
    }
    scales.assign(m.scales.size(), 0);
    const size_t len = sp.size();
    for (size_t b = 0; b < m.scales.size() / len; ++b)
        for (size_t j = 0; j < len; ++j) scales[b * len + j] = m.scales[b * len + size_t(sp[j])];
}

}  // namespace minicpm_test
