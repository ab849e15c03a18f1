#include "model/quantize.h"

#include "core/status.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace minicpm {

tensor_desc quantized_tensor::desc() const {
    tensor_desc d;
    d.type = type;
    d.rows = rows;
    d.cols = cols;
    d.data = data.data();
    d.group_size = group_size;
    d.scale_type = dtype::f16;
    d.scales = scales.data();
    d.zeros = zeros.empty() ? nullptr : zeros.data();
    d.perm = perm.empty() ? nullptr : perm.data();
    return d;
}

namespace {

float load_plain(const tensor_desc & t, int64_t i) {
    switch (t.type) {
        case dtype::f32: return ((const float *) t.data)[i];
        case dtype::f16: return f16_to_f32(((const uint16_t *) t.data)[i]);
        case dtype::bf16: return bf16_to_f32(((const uint16_t *) t.data)[i]);
        default: return 0.0f;
    }
}

}  // namespace

quantized_tensor quantize_rtn(const tensor_desc & src, dtype type, int32_t group, const std::string & name) {
    if (src.quantized()) fail(MINICPM_STATUS_INTERNAL, name + ": already quantized");
    if (type != dtype::q8 && type != dtype::q4) fail(MINICPM_STATUS_INTERNAL, name + ": not a quantized format");
    quantized_tensor q;
    q.type = type;
    q.rows = src.rows;
    q.cols = src.cols;
    q.group_size = int32_t(std::min<int64_t>(group, src.cols));
    const int64_t K = src.cols, G = q.n_groups();
    q.data.assign(type == dtype::q8 ? size_t(src.rows * K) : size_t(src.rows * K + 1) / 2, 0);
    q.scales.assign(size_t(src.rows * G), 0);
    if (type == dtype::q4) q.zeros.assign(size_t(src.rows * G), 0);
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t n = 0; n < src.rows; ++n) {
        for (int64_t k = 0; k < K; ++k) {
            row[size_t(k)] = load_plain(src, n * K + k);
            if (!std::isfinite(row[size_t(k)]))
                fail(MINICPM_STATUS_BAD_MODEL, name + ": weight [" + std::to_string(n) + ", " + std::to_string(k) +
                                                   "] is not finite; cannot quantize");
        }
        for (int64_t g = 0; g < G; ++g) {
            const int64_t k0 = g * q.group_size, k1 = std::min(K, k0 + q.group_size);
            if (type == dtype::q8) {
                float amax = 0.0f;
                for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(row[size_t(k)]));
                const uint16_t s16 = f32_to_f16(amax / 127.0f);
                const float    s = f16_to_f32(s16);
                q.scales[size_t(n * G + g)] = s16;
                for (int64_t k = k0; k < k1; ++k) {
                    const float v = s > 0.0f ? std::nearbyint(row[size_t(k)] / s) : 0.0f;
                    q.data[size_t(n * K + k)] = uint8_t(int8_t(std::clamp(v, -127.0f, 127.0f)));
                }
            } else {
                float mn = 0.0f, mx = 0.0f;
                for (int64_t k = k0; k < k1; ++k) {
                    mn = std::min(mn, row[size_t(k)]);
                    mx = std::max(mx, row[size_t(k)]);
                }
                const uint16_t s16 = f32_to_f16((mx - mn) / 15.0f);
                const float    s = f16_to_f32(s16);
                const float    z = s > 0.0f ? std::clamp(std::nearbyint(-mn / s), 0.0f, 15.0f) : 0.0f;
                q.scales[size_t(n * G + g)] = s16;
                q.zeros[size_t(n * G + g)] = uint8_t(z);
                for (int64_t k = k0; k < k1; ++k) {
                    const float   v = s > 0.0f ? std::clamp(std::nearbyint(row[size_t(k)] / s) + z, 0.0f, 15.0f) : 0.0f;
                    const int64_t i = n * K + k;
                    q.data[size_t(i / 2)] |= uint8_t(uint8_t(v) << ((i % 2) * 4));
                }
            }
        }
    }
    return q;
}

quantized_tensor gptq_to_q4(const int32_t * qweight, const int32_t * qzeros, const uint16_t * scales,
                            const int32_t * g_idx, int64_t N, int64_t K, int32_t group, const std::string & name,
                            bool v2) {
    quantized_tensor q;
    q.type = dtype::q4;
    q.rows = N;
    q.cols = K;
    q.group_size = group;
    const int64_t G = q.n_groups();
    q.data.assign(size_t(N * K + 1) / 2, 0);
    // qweight [K/8][N] -> nibble k of row n. A GPTQ word holds k = 8 k8 .. 8 k8 + 7 lowest nibble first, which is
    // byte for byte (little-endian) the engine's row n at k8: the unpacking is a transpose of 32-bit words, done
    // in 32 x 32 blocks (K % 8 == 0 is checked by the loader).
    if (K % 8 == 0) {
        uint32_t *    dst = (uint32_t *) q.data.data();  // q.data is from std::vector<uint8_t>: operator new aligns
        const int64_t K8 = K / 8;
        for (int64_t k0 = 0; k0 < K8; k0 += 32)
            for (int64_t n0 = 0; n0 < N; n0 += 32)
                for (int64_t k8 = k0; k8 < std::min(K8, k0 + 32); ++k8)
                    for (int64_t n = n0; n < std::min(N, n0 + 32); ++n)
                        std::memcpy(&dst[n * K8 + k8], &qweight[k8 * N + n], 4);
    } else
        for (int64_t k8 = 0; k8 < K / 8; ++k8)
            for (int64_t n = 0; n < N; ++n) {
                const uint32_t word = uint32_t(qweight[k8 * N + n]);
                for (int64_t j = 0; j < 8; ++j) {
                    const int64_t i = n * K + k8 * 8 + j;
                    q.data[size_t(i / 2)] |= uint8_t(((word >> (4 * j)) & 0xfu) << ((i % 2) * 4));
                }
            }
    q.scales.resize(size_t(N * G));
    for (int64_t g = 0; g < G; ++g)
        for (int64_t n = 0; n < N; ++n) {
            const uint16_t s = scales[g * N + n];
            if (!std::isfinite(f16_to_f32(s)))
                fail(MINICPM_STATUS_BAD_MODEL, name + ".scales[" + std::to_string(g) + ", " + std::to_string(n) +
                                                   "] is not finite");
            q.scales[size_t(n * G + g)] = s;
        }
    // qzeros [G][N/8]; AutoGPTQ v1 stores zero - 1.
    std::vector<uint8_t> z(size_t(N * G));
    bool all_eight = true;
    for (int64_t g = 0; g < G; ++g)
        for (int64_t n = 0; n < N; ++n) {
            const uint32_t word = uint32_t(qzeros[g * (N / 8) + n / 8]);
            const uint32_t v = ((word >> (4 * (n % 8))) & 0xfu) + (v2 ? 0u : 1u);
            if (v > 15)
                fail(MINICPM_STATUS_UNSUPPORTED, name + ".qzeros: zero point 16 (stored 15) of output " +
                                                     std::to_string(n) + ", group " + std::to_string(g) +
                                                     " does not fit the engine's 4-bit zero points");
            z[size_t(n * G + g)] = uint8_t(v);
            all_eight = all_eight && v == 8;
        }
    if (!all_eight) q.zeros = std::move(z);
    if (g_idx != nullptr) {
        bool trivial = true;
        for (int64_t k = 0; k < K; ++k) {
            if (g_idx[k] < 0 || g_idx[k] >= G)
                fail(MINICPM_STATUS_BAD_MODEL, name + ".g_idx[" + std::to_string(k) + "] = " +
                                                   std::to_string(g_idx[k]) + " is outside [0, " + std::to_string(G) +
                                                   ")");
            trivial = trivial && g_idx[k] == k / group;
        }
        if (!trivial) q.perm.assign(g_idx, g_idx + K);
    }
    return q;
}

}  // namespace minicpm
