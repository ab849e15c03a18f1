// Repacking a stored q8 / q4 tensor into the panels of qpack.h (once per weight, at load).
#include "cpu/qpack.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace minicpm {

namespace {

constexpr int64_t k_panel = 16;  // rows per panel: the 16 int32 lanes of a 512-bit vpdpbusd
constexpr int64_t k_block = 32;  // columns per activation block

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// Round to nearest, ties to even, for |v| < 2^22 without a libm call: adding and removing 1.5 * 2^23 leaves v
// rounded to an integer (IEEE arithmetic; no -ffast-math).
inline float round_even(float v) {
    constexpr float m = 12582912.0f;
    return (v + m) - m;
}

// Column k of stored q4 row r: its nibble.
inline uint8_t u8_at(const uint8_t * w, int64_t K, int64_t r, int64_t k) {
    return uint8_t((w[r * (K / 2) + k / 2] >> (4 * (k & 1))) & 0xfu);
}

}  // namespace

int32_t quantize_block32(const float * x, int8_t * q, float * scale) {
    float amax = 0.0f;
    for (int64_t i = 0; i < k_block; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int32_t     tot = 0;
    for (int64_t i = 0; i < k_block; ++i) {
        const int32_t v = int32_t(round_even(std::clamp(x[i] * inv, -127.0f, 127.0f)));
        q[i] = int8_t(v);
        tot += v;
    }
    *scale = amax / 127.0f;
    return tot;
}

void qpack_quantize(const float * x, int64_t K, int64_t group, int8_t * q, float * xs, float * xg) {
    const int64_t G = (K + group - 1) / group;
    for (int64_t g = 0; g < G; ++g) xg[g] = 0.0f;
    for (int64_t b = 0; b < K / k_block; ++b) {
        const int32_t tot = quantize_block32(x + b * k_block, q + b * k_block, &xs[b]);
        // The product is exact in double and rounded once to float, so no compiler can fuse it into the sum:
        // every kernel's quantizer gets the same bits whether its target has FMA or not.
        xg[b * k_block / group] += float(double(xs[b]) * double(tot));
    }
}

qpack_layout qpack_layout_of(const tensor_desc & w) {
    qpack_layout L;
    L.N = w.rows;
    L.K = w.cols;
    L.G = w.n_groups();
    L.group = std::min<int64_t>(w.group_size > 0 ? w.group_size : w.cols, w.cols);
    L.q4 = w.type == dtype::q4;
    L.f16_scales = w.scale_type == dtype::f16;
    L.zeros = w.zeros != nullptr;
    L.weight_bytes = k_panel * (L.q4 ? L.K / 2 : L.K);
    const int64_t extra = L.G * k_panel * (L.f16_scales ? 2 : 4) + (L.zeros ? L.G * k_panel : 0);
    L.panel_bytes = round_up(L.weight_bytes + extra, 64);
    L.n_panels = (L.N + k_panel - 1) / k_panel;
    return L;
}

size_t qpack_bytes(const tensor_desc & w) {
    const qpack_layout L = qpack_layout_of(w);
    return size_t(L.n_panels * L.panel_bytes);
}

void qpack(const tensor_desc & w, uint8_t * out) {
    const qpack_layout L = qpack_layout_of(w);
    const uint8_t *    src = (const uint8_t *) w.data;
    const int64_t      ss = L.f16_scales ? 2 : 4, quads = L.q4 ? 4 : 8;
    std::memset(out, 0, size_t(L.n_panels * L.panel_bytes));
    for (int64_t p = 0; p < L.n_panels; ++p) {
        uint8_t *     panel = out + p * L.panel_bytes;
        const int64_t nr = std::min(k_panel, L.N - p * k_panel);
        for (int64_t b = 0; b < L.K / k_block; ++b)
            for (int64_t i = 0; i < quads; ++i) {
                uint8_t * v = panel + (b * quads + i) * 64;
                for (int64_t r = 0; r < nr; ++r) {
                    const int64_t row = p * k_panel + r, k = b * k_block + 4 * i;
                    if (!L.q4) {  // 4 columns at once: + 128 is a flip of each byte's top bit
                        uint32_t q;
                        std::memcpy(&q, src + row * L.K + k, 4);
                        q ^= 0x80808080u;
                        std::memcpy(v + 4 * r, &q, 4);
                        continue;
                    }
                    for (int64_t j = 0; j < 4; ++j)
                        v[4 * r + j] = uint8_t(u8_at(src, L.K, row, k + j) | u8_at(src, L.K, row, k + 16 + j) << 4);
                }
            }
        uint8_t * sc = panel + L.weight_bytes;
        uint8_t * zp = sc + L.G * k_panel * ss;
        for (int64_t g = 0; g < L.G; ++g)
            for (int64_t r = 0; r < nr; ++r) {
                const int64_t i = (p * k_panel + r) * L.G + g;
                std::memcpy(sc + (g * k_panel + r) * ss, (const uint8_t *) w.scales + i * ss, size_t(ss));
                if (L.zeros) zp[g * k_panel + r] = w.zeros[i];
            }
    }
}

void qpack_tile_x(const int8_t * xq, int64_t T, int64_t K, int64_t i, int8_t * xa) {
    const int64_t nb = K / k_block, n = std::min<int64_t>(16, T - 16 * i);
    int8_t *      tile = xa + i * 16 * K;
    if (n < 16) std::memset(tile, 0, size_t(16 * K));
    for (int64_t t = 0; t < n; ++t)
        for (int64_t b = 0; b < nb; ++b)
            std::memcpy(tile + b * 512 + t * k_block, xq + (16 * i + t) * K + k_block * b, k_block);
}

void qunpack_rows(const tensor_desc & w, int64_t r0, int64_t nr, uint8_t * out) {
    const qpack_layout L = qpack_layout_of(w);
    const int64_t      quads = L.q4 ? 4 : 8, row_bytes = L.q4 ? L.K / 2 : L.K;
    for (int64_t r = 0; r < nr; ++r) {
        const int64_t   row = r0 + r;
        const uint8_t * panel = (const uint8_t *) w.packed + (row / k_panel) * L.panel_bytes;
        uint8_t *       dst = out + r * row_bytes;
        for (int64_t b = 0; b < L.K / k_block; ++b)
            for (int64_t i = 0; i < quads; ++i) {
                const uint8_t * v = panel + (b * quads + i) * 64 + 4 * (row % k_panel);
                const int64_t   k = b * k_block + 4 * i;
                for (int64_t j = 0; j < 4; ++j) {
                    if (!L.q4) {
                        dst[k + j] = uint8_t(v[j] ^ 0x80u);
                        continue;
                    }
                    // columns k + j and k + 16 + j; a byte holds columns 2c (low nibble) and 2c + 1
                    for (const int64_t c : {k + j, k + 16 + j}) {
                        const uint8_t u = c == k + j ? uint8_t(v[j] & 0xfu) : uint8_t(v[j] >> 4);
                        uint8_t &     d = dst[c / 2];
                        d = c % 2 == 0 ? uint8_t((d & 0xf0u) | u) : uint8_t((d & 0x0fu) | u << 4);
                    }
                }
            }
    }
}

}  // namespace minicpm
