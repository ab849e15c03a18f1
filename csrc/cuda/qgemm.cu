// y[T,N] = x[T,K] . W[N,K]^T for q8 / q4 weights on tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate),
// for batches past the GEMV's sweet spot (prefill, batched decode). The weights stay in the engine's layout
// (core/tensor.h: rows of int8, or of nibbles low first; [N][groups] scales and zero points): tiles of raw bytes
// go to shared memory with cp.async, and each thread turns the bytes of its mma B fragment into bf16 in
// registers. The dequantized values are the integers q (q8) or q - zero (q4), exact in bf16; the group's scale
// multiplies the f32 partial sum of each 32-column span, so only the activations are rounded (to bf16, once).
//
// Why the K order inside a span is permuted: thread t of a quad holds the B fragment rows 2t, 2t+1, 2t+8, 2t+9
// of an mma. Mapping those logical rows to the contiguous columns 8t + 4c .. 8t + 4c + 3 of a 32-column span
// (step c = 0, 1) lets a thread read its weights as 8 (q8) or 4 (q4) contiguous bytes and its activations as
// 16 contiguous bytes, and keeps both mma steps of a span inside one quantization group (groups are multiples
// of 32). The dot product does not depend on the order of K, so A and B only have to agree, which they do by
// using the same map.
//
// Split-K: when the output tiles are fewer than the SMs (batched decode through a projection with a long K, such as
// the 8B MLP down projection), grid.z cuts K into spans of whole 64-column tiles; each span writes an f32 partial
// [T][N] and a second kernel adds the partials in split order. No atomics: a replayed step graph gives the same
// bits every time.
#include "cuda/mma.cuh"
#include "cuda/ops.cuh"

#include <algorithm>

namespace minicpm {
namespace cuda {

namespace {

constexpr int k_qk = 64;       // K columns per pipeline stage (two 32-column spans)
constexpr int k_qstages = 3;   // cp.async pipeline depth
constexpr int k_qwarp_n = 32;  // output columns (weight rows) per warp: four n8 tiles
constexpr int k_qsplit_max = 16;        // K spans of one split GEMM
constexpr int k_qsplit_min_tiles = 4;   // 64-column tiles a span streams at least (the pipeline stays full)
constexpr int k_qsplit_blocks_per_sm = 4;  // the blocks a split grid aims at per SM (bytes in flight)

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(const uint32_t *) &v;
}

// Signed byte as f32 without a conversion instruction: 2^23 + (b + 128) has b + 128 as its low mantissa bits.
__device__ __forceinline__ float s8_to_f32(uint32_t byte_xor_80) {
    return __uint_as_float(0x4B000000u | byte_xor_80) - 8388736.0f;
}

// Two nibbles (bits 0-3 and 4-7 of v) as bf16 (128 + q) pairs: exponent 2^7 with q in the mantissa.
__device__ __forceinline__ uint32_t nibbles_biased(uint32_t v) {
    return (v & 0x0000000Fu) | ((v << 12) & 0x000F0000u) | 0x43004300u;
}

// Shared memory of one pipeline stage. A rows are 64 bf16 (8 chunks of 16 bytes), chunk c of row r stored at
// c ^ ((r & 1) << 2); B rows are 64 (q8) or 32 (q4) bytes, chunk c of row r at c ^ (r & 2) (q8) or
// c ^ ((r >> 2) & 1) (q4). The swizzles keep the fragment reads of a warp free of bank conflicts.
template <int BM, int BN, bool Q4> struct qstage {
    __nv_bfloat16 a[BM][k_qk];
    uint8_t       b[BN][Q4 ? k_qk / 2 : k_qk];
    float         scale[2][BN];  // per 32-column span and weight row
    uint32_t      zero[2][BN];   // q4: bf16 pair (128 + zero, 128 + zero)
};

__device__ __forceinline__ int a_chunk(int r, int c) { return c ^ ((r & 1) << 2); }
template <bool Q4> __device__ __forceinline__ int b_chunk(int r, int c) {
    return Q4 ? c ^ ((r >> 2) & 1) : c ^ (r & 2);
}

// WM x WN warps; each warp computes MF m16 tiles (rows of T) by four n8 tiles (weight rows). The explicit
// minimum of one block per SM: without it ptxas held the 2 x 4 shapes to 128 registers and spilled.
template <int WM, int WN, int MF, bool Q4>
__global__ void __launch_bounds__(WM * WN * k_warp, 1)
qgemm_kernel(float * y, const __nv_bfloat16 * xb, wdesc w, int64_t T, int span_tiles) {
    constexpr int BM = WM * MF * 16, BN = WN * k_qwarp_n, NT = WM * WN * k_warp;
    constexpr int b_row_bytes = Q4 ? k_qk / 2 : k_qk, b_chunks = b_row_bytes / 16;
    using stage_t = qstage<BM, BN, Q4>;
    extern __shared__ __align__(16) uint8_t qsmem[];
    stage_t * st = (stage_t *) qsmem;

    const int64_t N = w.rows, K = w.cols, t0 = int64_t(blockIdx.y) * BM, n0 = int64_t(blockIdx.x) * BN;
    const int     tid = threadIdx.x, warp = tid / k_warp, lane = tid % k_warp;
    const int     wm = warp / WN, wn = warp % WN, g = lane / 4, t = lane % 4;
    const uint8_t * wbytes = (const uint8_t *) w.data;
    const int64_t   row_bytes = Q4 ? K / 2 : K;
    // K span of this block (grid.z; the whole of K without a split); its partial goes to y + z T N.
    const int kt0 = int(blockIdx.z) * span_tiles, n_tiles = min(int(K / k_qk) - kt0, span_tiles);

    auto load_tile = [&](int s, int kt) {
        stage_t &     sg = st[s];
        const int64_t k0 = int64_t(kt0 + kt) * k_qk;
        for (int e = tid; e < BM * 8; e += NT) {
            const int     r = e / 8, c = e % 8;
            const bool    in = t0 + r < T;
            const void *  src = in ? (const void *) (xb + (t0 + r) * K + k0 + c * 8) : (const void *) xb;
            cp_async16(&sg.a[r][a_chunk(r, c) * 8], src, in ? 16 : 0);
        }
        for (int e = tid; e < BN * b_chunks; e += NT) {
            const int    r = e / b_chunks, c = e % b_chunks;
            const bool   in = n0 + r < N;
            const void * src = in ? (const void *) (wbytes + (n0 + r) * row_bytes + (Q4 ? k0 / 2 : k0) + c * 16)
                                  : (const void *) wbytes;
            cp_async16(&sg.b[r][b_chunk<Q4>(r, c) * 16], src, in ? 16 : 0);
        }
        // Scales and zero points: plain loads (2-byte scales are below cp.async's size); the __syncthreads
        // before this stage is read makes them visible.
        for (int e = tid; e < 2 * BN; e += NT) {
            const int     span = e / BN, r = e % BN;
            const int64_t n = n0 + r, grp = (k0 + 32 * span) / w.group_size;
            const bool    in = n < N;
            sg.scale[span][r] = in ? load_plain(w.scales, w.scale_type, n * w.n_groups + grp) : 0.0f;
            if (Q4) {
                const uint32_t z = (in && w.zeros) ? w.zeros[n * w.n_groups + grp] : 8u;
                const uint32_t h = 0x4300u | z;  // bf16 of 128 + z
                sg.zero[span][r] = h | (h << 16);
            }
        }
    };

    float acc[MF][4][4];
    for (int i = 0; i < MF; ++i)
        for (int j = 0; j < 4; ++j)
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    for (int s = 0; s < k_qstages - 1; ++s) {
        if (s < n_tiles) load_tile(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < n_tiles; ++kt) {
        cp_async_wait<k_qstages - 2>();
        __syncthreads();  // tile kt is in; every warp is done with the stage about to be refilled
        if (kt + k_qstages - 1 < n_tiles) load_tile((kt + k_qstages - 1) % k_qstages, kt + k_qstages - 1);
        cp_async_commit();
        const stage_t & sg = st[kt % k_qstages];
        for (int span = 0; span < 2; ++span) {
            uint4 alo[MF], ahi[MF];  // rows g and g + 8 of each m16 tile, columns 8t .. 8t + 7 of the span
            for (int i = 0; i < MF; ++i) {
                const int r = wm * MF * 16 + i * 16 + g, c = span * 4 + t;
                alo[i] = *(const uint4 *) &sg.a[r][a_chunk(r, c) * 8];
                ahi[i] = *(const uint4 *) &sg.a[r + 8][a_chunk(r + 8, c) * 8];
            }
            uint32_t b[4][4];  // per n8 tile: bf16 pairs of columns 8t + (0,1), (2,3), (4,5), (6,7)
            for (int j = 0; j < 4; ++j) {
                const int r = wn * k_qwarp_n + j * 8 + g;
                if (Q4) {
                    const int      byte = span * 16 + 4 * t;
                    const uint32_t v = *(const uint32_t *) &sg.b[r][b_chunk<Q4>(r, byte / 16) * 16 + byte % 16];
                    const __nv_bfloat162 z = *(const __nv_bfloat162 *) &sg.zero[span][r];
                    for (int p = 0; p < 4; ++p) {
                        const uint32_t       biased = nibbles_biased(v >> (8 * p));
                        const __nv_bfloat162 d = __hsub2(*(const __nv_bfloat162 *) &biased, z);
                        b[j][p] = *(const uint32_t *) &d;
                    }
                } else {
                    const int   byte = span * 32 + 8 * t;
                    const uint2 v = *(const uint2 *) &sg.b[r][b_chunk<Q4>(r, byte / 16) * 16 + byte % 16];
                    const uint32_t lo = v.x ^ 0x80808080u, hi = v.y ^ 0x80808080u;
                    b[j][0] = pack_bf16(s8_to_f32(lo & 0xff), s8_to_f32((lo >> 8) & 0xff));
                    b[j][1] = pack_bf16(s8_to_f32((lo >> 16) & 0xff), s8_to_f32(lo >> 24));
                    b[j][2] = pack_bf16(s8_to_f32(hi & 0xff), s8_to_f32((hi >> 8) & 0xff));
                    b[j][3] = pack_bf16(s8_to_f32((hi >> 16) & 0xff), s8_to_f32(hi >> 24));
                }
            }
            float part[MF][4][4];
            for (int i = 0; i < MF; ++i)
                for (int j = 0; j < 4; ++j)
                    for (int e = 0; e < 4; ++e) part[i][j][e] = 0.0f;
            for (int c = 0; c < 2; ++c) {
                for (int i = 0; i < MF; ++i) {
                    const uint32_t * lo = (const uint32_t *) &alo[i];
                    const uint32_t * hi = (const uint32_t *) &ahi[i];
                    for (int j = 0; j < 4; ++j)
                        mma_16816<true>(part[i][j], lo[2 * c], hi[2 * c], lo[2 * c + 1], hi[2 * c + 1],
                                        b[j][2 * c], b[j][2 * c + 1]);
                }
            }
            // Accumulator element e sits in column 2t + (e & 1) of its n8 tile.
            for (int j = 0; j < 4; ++j) {
                const float s0 = sg.scale[span][wn * k_qwarp_n + j * 8 + 2 * t];
                const float s1 = sg.scale[span][wn * k_qwarp_n + j * 8 + 2 * t + 1];
                for (int i = 0; i < MF; ++i) {
                    acc[i][j][0] += part[i][j][0] * s0;
                    acc[i][j][1] += part[i][j][1] * s1;
                    acc[i][j][2] += part[i][j][2] * s0;
                    acc[i][j][3] += part[i][j][3] * s1;
                }
            }
        }
    }
    cp_async_wait<0>();  // no copy may still target shared memory when the block exits

    for (int i = 0; i < MF; ++i)
        for (int j = 0; j < 4; ++j)
            for (int e = 0; e < 4; ++e) {
                const int64_t row = t0 + wm * MF * 16 + i * 16 + g + (e >= 2 ? 8 : 0);
                const int64_t col = n0 + wn * k_qwarp_n + j * 8 + 2 * t + (e & 1);
                if (row < T && col < N) y[(int64_t(blockIdx.z) * T + row) * N + col] = acc[i][j][e];
            }
}

template <int WM, int WN, int MF, bool Q4>
void launch_shape(cudaStream_t s, float * y, const __nv_bfloat16 * xb, const wdesc & w, int64_t T, int32_t splits) {
    constexpr int BM = WM * MF * 16, BN = WN * k_qwarp_n;
    const size_t  smem = sizeof(qstage<BM, BN, Q4>) * k_qstages;
    auto *        kernel = qgemm_kernel<WM, WN, MF, Q4>;
    static std::atomic<bool> opted{false};
    opt_in_shared(kernel, smem, opted);
    const int  tiles = int(w.cols / k_qk);
    const dim3 grid(unsigned(ceil_div(w.rows, BN)), unsigned(ceil_div(T, BM)), unsigned(splits));
    kernel<<<grid, WM * WN * k_warp, smem, s>>>(y, xb, w, T, int(ceil_div(tiles, splits)));
    MINICPM_CUDA_LAUNCHED("matmul: quantized tensor-core gemm");
}

// The output tile of the shape launch_for_rows picks for T rows: BM rows of T by BN weight rows.
struct qtile {
    int bm, bn;
};
qtile tile_for_rows(int64_t T) {
    if (T <= 16) return {16, 2 * k_qwarp_n};
    if (T <= 32) return {32, 2 * k_qwarp_n};
    return {64, 4 * k_qwarp_n};
}

template <bool Q4>
void launch_for_rows(cudaStream_t s, float * y, const __nv_bfloat16 * xb, const wdesc & w, int64_t T,
                     int32_t splits) {
    // Few rows (batched decode): one or two m16 tiles a warp, so a block does not stream weights for empty
    // rows, and 64 weight rows a block, so that an FFN projection still spreads over every SM.
    if (T <= 16) {
        launch_shape<1, 2, 1, Q4>(s, y, xb, w, T, splits);
    } else if (T <= 32) {
        launch_shape<1, 2, 2, Q4>(s, y, xb, w, T, splits);
    } else {
        launch_shape<2, 4, 2, Q4>(s, y, xb, w, T, splits);
    }
}

// y[i] = sum of the splits' partials, in split order (the same bits on every run).
__global__ void split_reduce_kernel(float * y, const float * part, int64_t n, int32_t splits) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        float v = part[i];
        for (int32_t z = 1; z < splits; ++z) v += part[z * n + i];
        y[i] = v;
    }
}

}  // namespace

void launch_split_reduce(cudaStream_t s, float * y, const float * partials, int64_t n, int32_t splits) {
    split_reduce_kernel<<<unsigned(std::min<int64_t>(ceil_div(n, 256), 4096)), 256, 0, s>>>(y, partials, n, splits);
    MINICPM_CUDA_LAUNCHED("matmul: split-K reduction");
}

bool qgemm_supported(const wdesc & w) {
    return (w.type == MINICPM_DTYPE_Q8 || w.type == MINICPM_DTYPE_Q4) && w.perm == nullptr && w.group_size > 0 &&
           w.cols % k_qk == 0 && (w.group_size % 32 == 0 || w.group_size >= w.cols) &&
           uintptr_t(w.data) % 16 == 0;  // rows are read in 16-byte copies
}

int32_t plan_qgemm_splits(const wdesc & w, int64_t T, int32_t n_sms) {
    const qtile   q = tile_for_rows(T);
    const int64_t blocks = ceil_div(w.rows, q.bn) * ceil_div(T, q.bm), tiles = w.cols / k_qk;
    if (T <= 0 || blocks >= n_sms) return 1;
    int64_t n = ceil_div(int64_t(k_qsplit_blocks_per_sm) * n_sms, blocks);
    n = std::min<int64_t>({n, k_qsplit_max, tiles / k_qsplit_min_tiles, k_qsplit_floats / (T * w.rows)});
    if (n < 2) return 1;
    return int32_t(ceil_div(tiles, ceil_div(tiles, n)));  // every span holds at least one tile
}

void launch_qgemm(cudaStream_t s, float * y, const __nv_bfloat16 * xb, const wdesc & w, int64_t T, int32_t splits,
                  float * partials) {
    if (T <= 0) return;
    if (ceil_div(T, 16) > 65535)
        fail(MINICPM_STATUS_INVALID_ARGUMENT,
             "matmul: " + std::to_string(T) + " rows exceed the quantized gemm's grid");
    if (splits < 1 || splits > k_qsplit_max || (splits > 1 && (partials == nullptr || splits * T * w.rows > k_qsplit_floats)))
        fail(MINICPM_STATUS_INTERNAL, "matmul: quantized gemm split " + std::to_string(splits) + " without its scratch");
    float * out = splits > 1 ? partials : y;
    if (w.type == MINICPM_DTYPE_Q4) {
        launch_for_rows<true>(s, out, xb, w, T, splits);
    } else {
        launch_for_rows<false>(s, out, xb, w, T, splits);
    }
    if (splits == 1) return;
    launch_split_reduce(s, y, partials, T * w.rows, splits);
}

}  // namespace cuda
}  // namespace minicpm
