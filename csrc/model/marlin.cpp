#include "model/marlin.h"

#include "core/status.h"

#include <cmath>
#include <cstring>

namespace minicpm {

namespace {

// Marlin's permutations (4-bit): perm[j] is the tiled position whose value lands at position j of a chunk.
struct marlin_perms {
    int32_t perm[1024];
    int32_t scale[64];
    int32_t scale_single[32];

    marlin_perms() {
        int32_t base[1024], n = 0;
        for (int32_t i = 0; i < 32; ++i) {
            int32_t perm1[8], m = 0;
            const int32_t col = i / 4;
            for (int32_t block = 0; block < 2; ++block) {
                const int32_t rows[4] = {2 * (i % 4), 2 * (i % 4) + 1, 2 * (i % 4 + 4), 2 * (i % 4 + 4) + 1};
                for (int32_t row : rows) perm1[m++] = 16 * row + col + 8 * block;
            }
            for (int32_t j = 0; j < 4; ++j)
                for (int32_t p : perm1) base[n++] = p + 256 * j;
        }
        const int32_t interleave[8] = {0, 2, 4, 6, 1, 3, 5, 7};
        for (int32_t r = 0; r < 128; ++r)
            for (int32_t i = 0; i < 8; ++i) perm[r * 8 + i] = base[r * 8 + interleave[i]];
        for (int32_t i = 0, k = 0; i < 8; ++i)
            for (int32_t j = 0; j < 8; ++j) scale[k++] = i + 8 * j;
        const int32_t offs[8] = {0, 1, 8, 9, 16, 17, 24, 25};
        for (int32_t i = 0, k = 0; i < 4; ++i)
            for (int32_t j : offs) scale_single[k++] = 2 * i + j;
    }
};

const marlin_perms & perms() {
    static const marlin_perms p;
    return p;
}

}  // namespace

quantized_tensor marlin_to_q4(const int32_t * qweight, const uint16_t * scales, int64_t N, int64_t K, int64_t G,
                              const std::string & name) {
    if (K % 16 != 0 || N % 64 != 0 || G <= 0 || K % G != 0)
        fail(MINICPM_STATUS_BAD_MODEL, name + ": Marlin needs in features a multiple of 16 and of the group count, "
                                              "out features a multiple of 64; got [" + std::to_string(N) + ", " +
                                              std::to_string(K) + "] with " + std::to_string(G) + " groups");
    const marlin_perms & P = perms();
    quantized_tensor q;
    q.type = dtype::q4;
    q.rows = N;
    q.cols = K;
    q.group_size = int32_t(K / G);
    q.data.assign(size_t(N * K + 1) / 2, 0);
    const int64_t W = N * 16;  // elements per tiled row (16 rows of K)
    for (int64_t r = 0; r < K / 16; ++r)
        for (int64_t e = 0; e < W; ++e) {
            const uint32_t word = uint32_t(qweight[(r * W + e) / 8]);
            const uint32_t v = (word >> (4 * ((r * W + e) % 8))) & 0xfu;
            const int64_t  t = (e / 1024) * 1024 + P.perm[e % 1024];  // position in the tiled row
            const int64_t  k = r * 16 + (t % 256) / 16, n = (t / 256) * 16 + t % 16;
            const int64_t  i = n * K + k;
            q.data[size_t(i / 2)] |= uint8_t(v << ((i % 2) * 4));
        }
    const int32_t * sp = G > 1 ? P.scale : P.scale_single;
    const int64_t   len = G > 1 ? 64 : 32;
    q.scales.resize(size_t(N * G));
    for (int64_t b = 0; b < G * N / len; ++b)
        for (int64_t j = 0; j < len; ++j) {
            const int64_t  src = b * len + sp[j];  // index into the unpermuted [G, N]
            const uint16_t s = scales[b * len + j];
            if (!std::isfinite(f16_to_f32(s)))
                fail(MINICPM_STATUS_BAD_MODEL, name + ".scales holds a non-finite scale");
            q.scales[size_t((src % N) * G + src / N)] = s;
        }
    return q;
}

quantized_tensor q4_rows(const quantized_tensor & q, int64_t n0, int64_t n1) {
    quantized_tensor o;
    o.type = q.type;
    o.rows = n1 - n0;
    o.cols = q.cols;
    o.group_size = q.group_size;
    const int64_t G = q.n_groups();
    if (q.cols % 2 != 0 || !q.perm.empty()) fail(MINICPM_STATUS_INTERNAL, "q4_rows: odd in features or a permutation");
    o.data.assign(q.data.begin() + n0 * q.cols / 2, q.data.begin() + n1 * q.cols / 2);
    o.scales.assign(q.scales.begin() + n0 * G, q.scales.begin() + n1 * G);
    if (!q.zeros.empty()) o.zeros.assign(q.zeros.begin() + n0 * G, q.zeros.begin() + n1 * G);
    return o;
}

quantized_tensor q4_side_by_side(const tensor_desc & a, const tensor_desc & b, const std::string & name) {
    if (a.type != dtype::q4 || b.type != dtype::q4 || a.rows != b.rows || a.group_size != b.group_size ||
        a.cols % 2 != 0 || b.cols % 2 != 0 || a.cols % a.group_size != 0 || a.perm || b.perm || a.zeros || b.zeros ||
        a.scale_type != dtype::f16 || b.scale_type != dtype::f16)
        fail(MINICPM_STATUS_BAD_MODEL, name + ": the two halves differ in rows or group size, or are not symmetric q4 "
                                              "with even in features that are a multiple of the group size");
    quantized_tensor o;
    o.type = dtype::q4;
    o.rows = a.rows;
    o.cols = a.cols + b.cols;
    o.group_size = a.group_size;
    const int64_t Ga = a.n_groups(), Gb = b.n_groups(), ra = a.cols / 2, rb = b.cols / 2;
    o.data.resize(size_t(o.rows * (ra + rb)));
    o.scales.resize(size_t(o.rows * (Ga + Gb)));
    const uint8_t *da = (const uint8_t *) a.data, *db = (const uint8_t *) b.data;
    const uint16_t *sa = (const uint16_t *) a.scales, *sb = (const uint16_t *) b.scales;
    for (int64_t n = 0; n < o.rows; ++n) {
        std::memcpy(&o.data[size_t(n * (ra + rb))], da + n * ra, size_t(ra));
        std::memcpy(&o.data[size_t(n * (ra + rb) + ra)], db + n * rb, size_t(rb));
        std::memcpy(&o.scales[size_t(n * (Ga + Gb))], sa + n * Ga, size_t(Ga) * 2);
        std::memcpy(&o.scales[size_t(n * (Ga + Gb) + Ga)], sb + n * Gb, size_t(Gb) * 2);
    }
    return o;
}

}  // namespace minicpm
