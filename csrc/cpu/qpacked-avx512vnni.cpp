// AVX512-VNNI kernel over packed weights (qpack.h): lane r of every vector is row r of a 16-row panel, so one
// 64-byte weight load feeds vpdpbusd for up to 8 tokens (each token's 4 activations broadcast), the integer dot
// of a 32-column block stays in int32, and each block costs one convert and one FMA per token; no horizontal
// sums. Batches read each panel once per 8 tokens; decode reads 4 panels side by side with software prefetch.
#include "cpu/qpack.h"

#include "cpu/x86-intrin.h"


namespace minicpm {

namespace {

// acc + vpdpbusd(w, the 4 int8 at x broadcast to every lane), the broadcast embedded in the instruction's memory
// operand: one fused uop where a separate broadcast load costs another (GCC does not fold it), which matters when
// a weight vector feeds 8 tokens.
inline __m512i dot4(__m512i acc, __m512i w, const int8_t * x) {
    asm("vpdpbusd %[x]%{1to16%}, %[w], %[acc]" : [acc] "+v"(acc) : [w] "v"(w), [x] "m"(*(const int32_t *) x));
    return acc;
}

// Software prefetch distance in each panel stream: the hardware prefetcher stops at every 4 KiB page and ramps up
// again; a prefetch this far ahead keeps the next page's lines in flight.
constexpr int64_t k_prefetch = 4096;

// Tokens t0 .. t0 + TT - 1 against panels p .. p + P - 1 (P streams read side by side, as the bandwidth probe
// of bench-engine does: one stream per core draws noticeably less). A single token and panel gets two
// accumulator chains so that vpdpbusd latency does not bound it.
template <bool Q4, int TT, int P>
inline void panels(float * y, int64_t ldy, const int8_t * xq, const float * xs, const float * xg, int64_t t0,
                   const uint8_t * packed, const qpack_layout & L, int64_t p) {
    constexpr int   C = TT * P == 1 ? 2 : 1;
    const int64_t   K = L.K, G = L.G, nb = K / 32, bpg = L.group / 32;
    const int64_t   ss = L.f16_scales ? 2 : 4;
    const uint8_t * pw[P];
    for (int j = 0; j < P; ++j) pw[j] = packed + (p + j) * L.panel_bytes;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512  c0 = _mm512_set1_ps(Q4 ? 8.0f : 128.0f);
    __m512        tot[P][TT];
    for (int j = 0; j < P; ++j)
        for (int t = 0; t < TT; ++t) tot[j][t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
        __m512 grp[P][TT];
        // Offset correction first: the group's dot of (u - c) is sum_b s_b * dot(u, x_b) - c * sum_b s_b * sum(x_b).
        for (int j = 0; j < P; ++j) {
            const uint8_t * zp = pw[j] + L.weight_bytes + G * 16 * ss + g * 16;
            const __m512    z = L.zeros ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) zp)))
                                        : c0;
            for (int t = 0; t < TT; ++t) grp[j][t] = _mm512_mul_ps(_mm512_set1_ps(-xg[(t0 + t) * G + g]), z);
        }
        const int64_t b1 = g + 1 == G ? nb : (g + 1) * bpg;
        for (int64_t b = g * bpg; b < b1; ++b) {
            __m512i acc[P][TT][C];
            for (int j = 0; j < P; ++j)
                for (int t = 0; t < TT; ++t)
                    for (int c = 0; c < C; ++c) acc[j][t][c] = _mm512_setzero_si512();
            for (int i = 0; i < (Q4 ? 4 : 8); ++i)
                for (int j = 0; j < P; ++j) {
                    const uint8_t * wv = pw[j] + b * (Q4 ? 256 : 512) + 64 * i;
                    if (k_prefetch) _mm_prefetch((const char *) (wv + k_prefetch), _MM_HINT_T0);
                    const __m512i v = _mm512_load_si512(wv);
                    if (Q4) {
                        const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                        for (int t = 0; t < TT; ++t) {
                            const int8_t * x = xq + (t0 + t) * K + b * 32 + 4 * i;
                            acc[j][t][0] = dot4(acc[j][t][0], lo, x);
                            acc[j][t][C - 1] = dot4(acc[j][t][C - 1], hi, x + 16);
                        }
                    } else {
                        for (int t = 0; t < TT; ++t)
                            acc[j][t][i % C] = dot4(acc[j][t][i % C], v, xq + (t0 + t) * K + b * 32 + 4 * i);
                    }
                }
            for (int t = 0; t < TT; ++t) {
                const __m512 sx = _mm512_set1_ps(xs[(t0 + t) * nb + b]);
                for (int j = 0; j < P; ++j) {
                    __m512i a = acc[j][t][0];
                    if (C == 2) a = _mm512_add_epi32(a, acc[j][t][C - 1]);
                    grp[j][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), sx, grp[j][t]);
                }
            }
        }
        for (int j = 0; j < P; ++j) {
            const uint8_t * sc = pw[j] + L.weight_bytes + g * 16 * ss;
            const __m512    s = L.f16_scales ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) sc))
                                             : _mm512_loadu_ps((const float *) sc);
            for (int t = 0; t < TT; ++t) tot[j][t] = _mm512_fmadd_ps(grp[j][t], s, tot[j][t]);
        }
    }
    for (int j = 0; j < P; ++j) {
        const int64_t   nr = L.N - (p + j) * 16;
        const __mmask16 m = nr >= 16 ? __mmask16(0xffff) : __mmask16((1u << nr) - 1);
        for (int t = 0; t < TT; ++t) _mm512_mask_storeu_ps(y + (t0 + t) * ldy + (p + j) * 16, m, tot[j][t]);
    }
}

constexpr int k_decode_panels = 4;

template <bool Q4>
void run(float * y, int64_t ldy, const int8_t * xq, const float * xs, const float * xg, int64_t T,
         const uint8_t * packed, const qpack_layout & L, int64_t p0, int64_t p1) {
    int64_t p = p0;
    if (T == 1)  // decode: panels side by side
        for (; p + k_decode_panels <= p1; p += k_decode_panels)
            panels<Q4, 1, k_decode_panels>(y, ldy, xq, xs, xg, 0, packed, L, p);
    for (; p < p1; ++p) {
        int64_t t = 0;
        for (; t + 8 <= T; t += 8) panels<Q4, 8, 1>(y, ldy, xq, xs, xg, t, packed, L, p);
        if (t + 4 <= T) panels<Q4, 4, 1>(y, ldy, xq, xs, xg, t, packed, L, p), t += 4;
        if (t + 2 <= T) panels<Q4, 2, 1>(y, ldy, xq, xs, xg, t, packed, L, p), t += 2;
        if (t < T) panels<Q4, 1, 1>(y, ldy, xq, xs, xg, t, packed, L, p);
    }
}

}  // namespace

// qpack_quantize 32 columns at a time: the same products, clamp and ties-to-even rounding, so the same bits.
void qpack_quantize_avx512(const float * x, int64_t K, int64_t group, int8_t * q, float * xs, float * xg) {
    const int64_t G = (K + group - 1) / group;
    for (int64_t g = 0; g < G; ++g) xg[g] = 0.0f;
    const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (int64_t b = 0; b < K / 32; ++b) {
        const __m512 a = _mm512_loadu_ps(x + 32 * b), c = _mm512_loadu_ps(x + 32 * b + 16);
        const float  amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(c)));
        const float  s = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        const __m512 vi = _mm512_set1_ps(inv);
        constexpr int rnd = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        const __m512i qa = _mm512_cvtps_epi32(
            _mm512_roundscale_ps(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(a, vi), lo), hi), rnd));
        const __m512i qc = _mm512_cvtps_epi32(
            _mm512_roundscale_ps(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(c, vi), lo), hi), rnd));
        _mm_storeu_si128((__m128i *) (q + 32 * b), _mm512_cvtepi32_epi8(qa));
        _mm_storeu_si128((__m128i *) (q + 32 * b + 16), _mm512_cvtepi32_epi8(qc));
        xs[b] = s;
        xg[32 * b / group] += float(double(s) * double(_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qc))));
    }
}

void qpacked_avx512vnni(float * y, int64_t ldy, const int8_t * xq, const float * xs, const float * xg, int64_t T,
                        const uint8_t * packed, const qpack_layout & L, int64_t p0, int64_t p1) {
    if (L.q4) {
        run<true>(y, ldy, xq, xs, xg, T, packed, L, p0, p1);
    } else {
        run<false>(y, ldy, xq, xs, xg, T, packed, L, p0, p1);
    }
}

}  // namespace minicpm
