// AVX-VNNI (256-bit) kernel over packed weights (qpack.h): each 64-byte panel vector as two halves, rows 0-7
// and 8-15, so lane r of the first half is row r; otherwise as qpacked-avx512vnni.cpp, with passes of up to 2
// tokens (16 vector registers).
#include "cpu/qpack.h"

#include <immintrin.h>

#include <cstring>

namespace minicpm {

namespace {

inline __m256i bcast4(const int8_t * x) {
    int32_t v;
    std::memcpy(&v, x, 4);
    return _mm256_set1_epi32(v);
}

template <bool Q4, int TT>
inline void panel(float * y, int64_t ldy, const int8_t * xq, const float * xs, const float * xg, int64_t t0,
                  const uint8_t * pw, const qpack_layout & L, int64_t p) {
    const int64_t   K = L.K, G = L.G, nb = K / 32, bpg = L.group / 32;
    const uint8_t * sc = pw + L.weight_bytes;
    const uint8_t * zp = sc + G * 16 * (L.f16_scales ? 2 : 4);
    const __m256i   m4 = _mm256_set1_epi8(0x0f);
    const __m256    c0 = _mm256_set1_ps(Q4 ? 8.0f : 128.0f);
    __m256          tot[TT][2];
    for (int t = 0; t < TT; ++t) tot[t][0] = tot[t][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
        __m256 z[2] = {c0, c0};
        for (int h = 0; h < 2 && L.zeros; ++h)
            z[h] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) (zp + g * 16 + 8 * h))));
        __m256 grp[TT][2];
        for (int t = 0; t < TT; ++t)
            for (int h = 0; h < 2; ++h) grp[t][h] = _mm256_mul_ps(_mm256_set1_ps(-xg[(t0 + t) * G + g]), z[h]);
        const int64_t b1 = g + 1 == G ? nb : (g + 1) * bpg;
        for (int64_t b = g * bpg; b < b1; ++b) {
            __m256i acc[TT][2];
            for (int t = 0; t < TT; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
            for (int i = 0; i < (Q4 ? 4 : 8); ++i)
                for (int h = 0; h < 2; ++h) {
                    const __m256i v = _mm256_load_si256((const __m256i *) (pw + b * (Q4 ? 256 : 512) + 64 * i + 32 * h));
                    if (Q4) {
                        const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                        for (int t = 0; t < TT; ++t) {
                            const int8_t * x = xq + (t0 + t) * K + b * 32 + 4 * i;
                            acc[t][h] = _mm256_dpbusd_avx_epi32(acc[t][h], lo, bcast4(x));
                            acc[t][h] = _mm256_dpbusd_avx_epi32(acc[t][h], hi, bcast4(x + 16));
                        }
                    } else {
                        for (int t = 0; t < TT; ++t)
                            acc[t][h] = _mm256_dpbusd_avx_epi32(acc[t][h], v, bcast4(xq + (t0 + t) * K + b * 32 + 4 * i));
                    }
                }
            for (int t = 0; t < TT; ++t) {
                const __m256 s = _mm256_set1_ps(xs[(t0 + t) * nb + b]);
                for (int h = 0; h < 2; ++h) grp[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[t][h]), s, grp[t][h]);
            }
        }
        for (int h = 0; h < 2; ++h) {
            const __m256 s = L.f16_scales
                                 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (sc + g * 32 + 16 * h)))
                                 : _mm256_loadu_ps((const float *) sc + g * 16 + 8 * h);
            for (int t = 0; t < TT; ++t) tot[t][h] = _mm256_fmadd_ps(grp[t][h], s, tot[t][h]);
        }
    }
    const int64_t nr = L.N - p * 16;
    for (int t = 0; t < TT; ++t) {
        float * yr = y + (t0 + t) * ldy + p * 16;
        if (nr >= 16) {
            _mm256_storeu_ps(yr, tot[t][0]);
            _mm256_storeu_ps(yr + 8, tot[t][1]);
        } else {
            alignas(32) float tmp[16];
            _mm256_store_ps(tmp, tot[t][0]);
            _mm256_store_ps(tmp + 8, tot[t][1]);
            std::memcpy(yr, tmp, size_t(nr) * 4);
        }
    }
}

template <bool Q4>
void run(float * y, int64_t ldy, const int8_t * xq, const float * xs, const float * xg, int64_t T,
         const uint8_t * packed, const qpack_layout & L, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
        const uint8_t * pw = packed + p * L.panel_bytes;
        int64_t         t = 0;
        for (; t + 2 <= T; t += 2) panel<Q4, 2>(y, ldy, xq, xs, xg, t, pw, L, p);
        if (t < T) panel<Q4, 1>(y, ldy, xq, xs, xg, t, pw, L, p);
    }
}

}  // namespace

// qpack_quantize 32 columns at a time with AVX2: the same products, clamp and rounding, so the same bits.
void qpack_quantize_avx2(const float * x, int64_t K, int64_t group, int8_t * q, float * xs, float * xg) {
    const int64_t G = (K + group - 1) / group;
    for (int64_t g = 0; g < G; ++g) xg[g] = 0.0f;
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < K / 32; ++b) {
        __m256 v[4];
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < 4; ++j) {
            v[j] = _mm256_loadu_ps(x + 32 * b + 8 * j);
            m = _mm256_max_ps(_mm256_and_ps(v[j], absm), m);
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float  amax = _mm_cvtss_f32(m4);
        const float  s = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        const __m256 vi = _mm256_set1_ps(inv);
        __m256i      qi[4];
        for (int j = 0; j < 4; ++j)
            qi[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[j], vi), lo), hi),
                                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        // int32 -> int8 (saturating packs keep order within 128-bit lanes; the permute restores it)
        const __m256i w01 = _mm256_packs_epi32(qi[0], qi[1]), w23 = _mm256_packs_epi32(qi[2], qi[3]);
        const __m256i b8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23),
                                                       _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *) (q + 32 * b), b8);
        const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        xs[b] = s;
        xg[32 * b / group] += float(double(s) * double(_mm_cvtsi128_si32(s4)));
    }
}

void qpacked_avxvnni(float * y, int64_t ldy, const int8_t * xq, const float * xs, const float * xg, int64_t T,
                     const uint8_t * packed, const qpack_layout & L, int64_t p0, int64_t p1) {
    if (L.q4) {
        run<true>(y, ldy, xq, xs, xg, T, packed, L, p0, p1);
    } else {
        run<false>(y, ldy, xq, xs, xg, T, packed, L, p0, p1);
    }
}

}  // namespace minicpm
