// y[T,N] = x[T,K] . W[N,K]^T for bf16 / f16 weights on tensor cores (mma.sync m16n8k16, 16-bit in, f32
// accumulate): prefill, batched decode and the LM head. The activations arrive rounded once to the weight's
// type (matmul.cu). Both operands are K-contiguous rows, which is what mma's row.col form reads: A (x) and B (W)
// tiles go to shared memory by 16-byte cp.async in a 3-stage pipeline of 64-column steps, and come out by
// ldmatrix.x4. A shared row is 64 values (128 bytes, eight 16-byte chunks); chunk c of row r is stored at
// c ^ (r & 7), so the eight rows one ldmatrix phase reads sit in eight different bank groups.
//
// Tiles: 128 x 256 or 128 x 128 outputs a block (8 warps of 64 x 64 or 64 x 32) for prefill; 16 / 32 / 64 rows
// of T by 128 weight rows for batched decode, where the GEMM is bound by the weight stream. Blocks walk the
// output in groups of 8 row tiles (all the tiles of a group share a weight tile), so a wave of blocks reads each
// weight tile from HBM once and the activations from L2. When the tiles are fewer than the SMs, grid.z splits K
// into spans whose f32 partials are added in split order by a second kernel (no atomics: the same bits every run).
//
// Expected share of the dense bf16 peak (not yet measured): mma.sync with this pipeline reaches roughly 70-80% on
// sm_80 (A100); on sm_90 (H100 / H200) mma.sync itself tops out near 60-70% of the peak, so there GEMMs of 128
// rows or more go to the wgmma kernel (sm90/gemm-wgmma.cu) once the start-up probe at the end of this file passed.
#include "cuda/mma.cuh"
#include "cuda/ops.cuh"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

namespace minicpm {
namespace cuda {

namespace {

constexpr int k_gk = 64;                    // K columns per pipeline stage
constexpr int k_gstages = 3;                // cp.async pipeline depth
constexpr int k_group_m = 8;                // row tiles of a raster group
constexpr int k_gsplit_max = 16;            // K spans of one split GEMM
constexpr int k_gsplit_min_tiles = 4;       // 64-column steps a span streams at least (the pipeline stays full)
constexpr int k_gsplit_blocks_per_sm = 2;   // the blocks a split grid aims at per SM
constexpr int k_wgmma_min_rows = 128;       // T from which sm_90 takes the wgmma GEMM (its row tile)

// The sm_90 wgmma GEMM: on after gemm16_sm90_start's probe passed; the test switch (gemm16_allow_wgmma).
std::atomic<bool> g_wgmma_on{false}, g_wgmma_allowed{true};
wgmma_state       g_wgmma_state;  // written once, by the probe, before any GEMM

bool use_wgmma(int64_t T) {
    return T >= k_wgmma_min_rows && g_wgmma_on.load(std::memory_order_acquire) &&
           g_wgmma_allowed.load(std::memory_order_relaxed);
}

// Shared-memory offset (in 16-bit values) of chunk c of row r: rows of 64 values, chunks swizzled.
__device__ __forceinline__ int swz(int r, int c) { return r * k_gk + ((c ^ (r & 7)) << 3); }

// WM x WN warps; each warp computes MF m16 tiles (rows of T) by NF n8 tiles (weight rows), NF even (ldmatrix.x4
// reads two n8 tiles at once). Grid: x the output tiles in raster groups, z the K spans. Two blocks an SM (at most
// 128 registers a thread) but for the 64 x 64 warp tiles, whose 128 accumulators need more.
template <typename H, int WM, int WN, int MF, int NF, int MIN_BLOCKS = (MF * NF > 16 ? 1 : 2)>
__global__ void __launch_bounds__(WM * WN * k_warp, MIN_BLOCKS)
gemm16_kernel(float * y, const H * a, const H * b, const float * row_scale, int64_t T, int64_t N, int64_t K,
              int tiles_m, int tiles_n, int span_tiles) {
    constexpr int BM = WM * MF * 16, BN = WN * NF * 8, NT = WM * WN * k_warp, ROWS = BM + BN;
    static_assert(NF % 2 == 0, "B fragments are loaded two n8 tiles at a time");
    extern __shared__ __align__(128) uint8_t gsmem[];
    H * sm = (H *) gsmem;  // [k_gstages][ROWS][k_gk]: A rows, then B rows

    // Raster: blocks of a group (k_group_m row tiles) take every row tile for one weight tile, then the next.
    const int64_t per_group = int64_t(k_group_m) * tiles_n;
    const int64_t bid = blockIdx.x, group = bid / per_group, first_m = group * k_group_m;
    const int64_t gm = tiles_m - first_m < k_group_m ? tiles_m - first_m : k_group_m, in_group = bid % per_group;
    const int64_t t0 = (first_m + in_group % gm) * BM, n0 = (in_group / gm) * BN;

    const int tid = threadIdx.x, warp = tid / k_warp, lane = tid % k_warp;
    const int wm = warp / WN, wn = warp % WN, g = lane / 4, t = lane % 4;
    const int kt0 = int(blockIdx.z) * span_tiles, n_tiles = min(int((K + k_gk - 1) / k_gk) - kt0, span_tiles);

    // Chunks past K (K a multiple of 8, not of 64) and rows past T or N are zero-filled.
    auto load_tile = [&](int s, int kt) {
        load_swizzled_step<H, BM, ROWS, NT>((uint8_t *) (sm + s * ROWS * k_gk), a, b, t0, n0, T, N, K,
                                            int64_t(kt0 + kt) * k_gk);
    };

    float acc[MF][NF][4];  // registers: every index below is a constant after unrolling
#pragma unroll
    for (int i = 0; i < MF; ++i)
#pragma unroll
        for (int j = 0; j < NF; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    for (int s = 0; s < k_gstages - 1; ++s) {
        if (s < n_tiles) load_tile(s, s);
        cp_async_commit();
    }
    // ldmatrix rows of this lane: A, lanes 0-15 rows 0-15 of an m16 tile at the k16 step's first chunk, lanes
    // 16-31 the same rows at its second (registers a0..a3 of mma); B, matrix l / 8 = rows 8 (l / 16) + l % 8 of
    // an n8 pair at chunk (l / 8) % 2 (b0, b1 of the first n8 tile, then of the second).
    const int a_row = wm * MF * 16 + lane % 16, a_half = lane / 16;
    const int b_row = BM + wn * NF * 8 + (lane / 16) * 8 + lane % 8, b_half = (lane / 8) % 2;
    for (int kt = 0; kt < n_tiles; ++kt) {
        cp_async_wait<k_gstages - 2>();
        __syncthreads();  // tile kt is in; every warp is done with the stage about to be refilled
        if (kt + k_gstages - 1 < n_tiles) load_tile((kt + k_gstages - 1) % k_gstages, kt + k_gstages - 1);
        cp_async_commit();
        const H * st = sm + (kt % k_gstages) * ROWS * k_gk;
#pragma unroll
        for (int kk = 0; kk < k_gk / 16; ++kk) {
            uint32_t af[MF][4], bf[NF / 2][4];
#pragma unroll
            for (int i = 0; i < MF; ++i) ldmatrix_x4(af[i], st + swz(a_row + i * 16, 2 * kk + a_half));
#pragma unroll
            for (int j = 0; j < NF / 2; ++j) ldmatrix_x4(bf[j], st + swz(b_row + j * 16, 2 * kk + b_half));
#pragma unroll
            for (int i = 0; i < MF; ++i)
#pragma unroll
                for (int j = 0; j < NF; ++j)
                    mma_16816<std::is_same<H, __nv_bfloat16>::value>(acc[i][j], af[i][0], af[i][1], af[i][2],
                                                                      af[i][3], bf[j / 2][2 * (j % 2)],
                                                                      bf[j / 2][2 * (j % 2) + 1]);
        }
    }
    cp_async_wait<0>();  // no copy may still target shared memory when the block exits

    // Accumulator e: row g + 8 (e / 2), column 2t + e % 2 of its tile. Rows of y are N floats apart; split
    // spans write their partials to the z-th T x N slab. row_scale (f16: a power of two per row, or nullptr)
    // undoes the scaling of an activation row that did not fit f16; exact, so partials may take it one by one.
    float * out = y + int64_t(blockIdx.z) * T * N;
    const bool pairs = N % 2 == 0 && uintptr_t(y) % 8 == 0;  // two adjacent columns as one aligned 8-byte store
#pragma unroll
    for (int i = 0; i < MF; ++i)
#pragma unroll
        for (int j = 0; j < NF; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int64_t row = t0 + wm * MF * 16 + i * 16 + g + 8 * h;
                const int64_t col = n0 + wn * NF * 8 + j * 8 + 2 * t;
                if (row >= T || col >= N) continue;
                const float rs = row_scale ? row_scale[row] : 1.0f;
                const float v0 = acc[i][j][2 * h] * rs, v1 = acc[i][j][2 * h + 1] * rs;
                float *     p = out + row * N + col;
                if (pairs) {
                    *(float2 *) p = make_float2(v0, v1);
                } else {
                    p[0] = v0;
                    if (col + 1 < N) p[1] = v1;
                }
            }
}

template <int WM, int WN, int MF, int NF> constexpr size_t shared_bytes() {
    return size_t(k_gstages) * (WM * MF * 16 + WN * NF * 8) * k_gk * 2;
}

// Device 0's (the backend's) SM count and the shared memory a block may opt into, read once; zeros if unknown.
struct gemm_caps {
    int n_sms = 0, smem_optin = 0;
};
const gemm_caps & device_caps() {
    static const gemm_caps caps = [] {
        gemm_caps c;
        int       dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&c.n_sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&c.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
            cudaGetLastError();  // not sticky: only the wide tile is given up
            return gemm_caps{};
        }
        return c;
    }();
    return caps;
}

// The output tile of a shape: BM rows of T by BN weight rows.
struct gtile {
    int bm, bn;
};

gtile tile_for_rows(int64_t T) {
    if (T <= 16) return {16, 128};
    if (T <= 32) return {32, 128};
    if (T <= 64) return {64, 128};
    return {128, 128};
}

template <typename H, int WM, int WN, int MF, int NF>
void launch_shape(cudaStream_t s, float * y, const H * xb, const float * row_scale, const wdesc & w, int64_t T,
                  int32_t splits) {
    constexpr int BM = WM * MF * 16, BN = WN * NF * 8;
    const size_t  smem = shared_bytes<WM, WN, MF, NF>();
    auto *        kernel = gemm16_kernel<H, WM, WN, MF, NF>;
    static std::atomic<bool> opted{false};
    opt_in_shared(kernel, smem, opted);
    const int64_t tiles_m = ceil_div(T, BM), tiles_n = ceil_div(w.rows, BN), blocks = tiles_m * tiles_n;
    const int64_t steps = ceil_div(w.cols, k_gk);
    if (blocks > int64_t(INT32_MAX))
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "matmul: " + std::to_string(T) + " x " + std::to_string(w.rows) +
                                                  " outputs exceed the tensor-core gemm's grid");
    const dim3 grid(unsigned(blocks), 1, unsigned(splits));
    kernel<<<grid, WM * WN * k_warp, smem, s>>>(y, xb, (const H *) w.data, row_scale, T, w.rows, w.cols,
                                                int(tiles_m), int(tiles_n), int(ceil_div(steps, splits)));
    MINICPM_CUDA_LAUNCHED("matmul: tensor-core gemm");
}

template <typename H>
void launch_for_rows(cudaStream_t s, float * y, const H * xb, const float * row_scale, const wdesc & w, int64_t T,
                     int32_t splits) {
    // Few rows (batched decode): one or two m16 tiles a warp, so that a block streams no weights for empty rows.
    if (T <= 16) {
        launch_shape<H, 1, 4, 1, 4>(s, y, xb, row_scale, w, T, splits);
    } else if (T <= 32) {
        launch_shape<H, 2, 4, 1, 4>(s, y, xb, row_scale, w, T, splits);
    } else if (T <= 64) {
        launch_shape<H, 2, 4, 2, 4>(s, y, xb, row_scale, w, T, splits);
    } else {
        // 128 x 256 tiles (64 x 64 a warp: a third less shared-memory traffic per mma than 64 x 32, which on sm_90
        // is the bound) where they fill the SMs on their own (so no split either) and their 144 KiB of
        // pipeline fit (not on sm_86 / sm_89); 128 x 128 otherwise.
        const gemm_caps & c = device_caps();
        if (splits == 1 && c.n_sms > 0 && size_t(c.smem_optin) >= shared_bytes<2, 4, 4, 8>() &&
            ceil_div(T, 128) * ceil_div(w.rows, 256) >= c.n_sms) {
            launch_shape<H, 2, 4, 4, 8>(s, y, xb, row_scale, w, T, splits);
        } else {
            launch_shape<H, 2, 4, 4, 4>(s, y, xb, row_scale, w, T, splits);
        }
    }
}

}  // namespace

bool gemm16_supported(const wdesc & w) {
    return (w.type == MINICPM_DTYPE_BF16 || w.type == MINICPM_DTYPE_F16) && w.cols % 8 == 0 &&
           uintptr_t(w.data) % 16 == 0;  // rows are read in 16-byte copies
}

int32_t plan_gemm16_splits(const wdesc & w, int64_t T, int32_t n_sms) {
    // The wgmma GEMM runs one 128 x 256 block an SM: its splits fill one wave (64 tiles on 132 SMs: 2 spans).
    const bool    wg = use_wgmma(T);
    const gtile   g = wg ? gtile{128, 256} : tile_for_rows(T);
    const int64_t blocks = ceil_div(w.rows, g.bn) * ceil_div(T, g.bm), steps = ceil_div(w.cols, k_gk);
    if (T <= 0 || blocks >= n_sms) return 1;
    int64_t n = wg ? n_sms / blocks : ceil_div(int64_t(k_gsplit_blocks_per_sm) * n_sms, blocks);
    n = std::min<int64_t>({n, k_gsplit_max, steps / k_gsplit_min_tiles, k_qsplit_floats / (T * w.rows)});
    if (n < 2) return 1;
    return int32_t(ceil_div(steps, ceil_div(steps, n)));  // every span holds at least one step
}

void launch_gemm16(cudaStream_t s, float * y, const void * xb, const float * row_scale, const wdesc & w, int64_t T,
                   int32_t splits, float * partials) {
    if (T <= 0) return;
    if (!gemm16_supported(w) || uintptr_t(xb) % 16 != 0)
        fail(MINICPM_STATUS_INTERNAL, "matmul: a weight or scratch the tensor-core gemm cannot read");
    if (splits < 1 || splits > k_gsplit_max ||
        (splits > 1 && (partials == nullptr || splits * T * w.rows > k_qsplit_floats)))
        fail(MINICPM_STATUS_INTERNAL,
             "matmul: tensor-core gemm split " + std::to_string(splits) + " without its scratch");
    float * out = splits > 1 ? partials : y;
    if (use_wgmma(T)) {
        launch_gemm16_wgmma(s, out, xb, row_scale, w, T, splits);
    } else if (w.type == MINICPM_DTYPE_BF16) {
        launch_for_rows(s, out, (const __nv_bfloat16 *) xb, row_scale, w, T, splits);
    } else {
        launch_for_rows(s, out, (const __half *) xb, row_scale, w, T, splits);
    }
    if (splits > 1) launch_split_reduce(s, y, partials, T * w.rows, splits);
}

// ---- sm_90: the wgmma GEMM's start-up probe. It first runs blind on a new device, so one wrong descriptor or
// pipeline step must cost only the fast path: both GEMMs run on small problems over every edge of the wgmma
// tiles (a partial row tile, a partial weight tile, odd N, a zero-filled K tail); the inputs are halves of small
// integers, whose products and sums are exact in f32 in any order, so the outputs must agree bit for bit. All
// buffers are sized to the problem and the kernel reads and writes only inside T x K, N x K and T x N, so a
// wrong result stays a wrong result, not an illegal address (which would end the context).

#if !MINICPM_CUDA_SM90
// Without nvcc's sm_90a the probe never turns the path on: unreachable.
void launch_gemm16_wgmma(cudaStream_t, float *, const void *, const float *, const wdesc &, int64_t, int32_t) {
    fail(MINICPM_STATUS_INTERNAL, "matmul: the wgmma gemm is not in this build");
}
#endif

namespace {

template <typename H> __global__ void probe_fill_kernel(H * p, int64_t n, int mul, int mod) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const float v = float(int((i * mul + 1) % mod) - mod / 2) * 0.5f;
        if constexpr (std::is_same<H, __nv_bfloat16>::value) {
            p[i] = __float2bfloat16_rn(v);
        } else {
            p[i] = __float2half_rn(v);
        }
    }
}

struct probe_case {
    int32_t type;
    int64_t T, N, K;
};

// "" when both GEMMs agree on c, else why not. Throws (a CUDA error) out of the launches.
template <typename H> std::string probe_one(const probe_case & c, uint8_t * buf) {
    H *     x = (H *) buf;
    H *     wd = x + c.T * c.K;
    float * y1 = (float *) (wd + c.N * c.K);  // 16-bit parts hold even counts of 8 values: 16-byte aligned
    float * y2 = y1 + c.T * c.N;
    probe_fill_kernel<H><<<64, 256>>>(x, c.T * c.K, 7, 9);
    probe_fill_kernel<H><<<64, 256>>>(wd, c.N * c.K, 5, 7);
    MINICPM_CUDA_LAUNCHED("wgmma probe: fill");
    MINICPM_CUDA_CHECK(cudaMemset(y2, 0xff, size_t(c.T * c.N) * sizeof(float)));  // NaN: an output not written
    const wdesc w = {c.type, 0, 0, c.N, c.K, 0, wd, nullptr, nullptr, nullptr, nullptr};
    launch_for_rows(nullptr, y1, (const H *) x, nullptr, w, c.T, 1);
    launch_gemm16_wgmma(nullptr, y2, x, nullptr, w, c.T, 1);
    MINICPM_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> a(size_t(c.T * c.N)), b(a.size());
    MINICPM_CUDA_CHECK(cudaMemcpy(a.data(), y1, a.size() * sizeof(float), cudaMemcpyDeviceToHost));
    MINICPM_CUDA_CHECK(cudaMemcpy(b.data(), y2, b.size() * sizeof(float), cudaMemcpyDeviceToHost));
    size_t bad = 0, first = 0;
    for (size_t i = a.size(); i-- > 0;)
        if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) ++bad, first = i;
    if (bad == 0) return "";
    return std::to_string(bad) + " of " + std::to_string(a.size()) + " outputs differ at T=" + std::to_string(c.T) +
           " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) + " (first: row " +
           std::to_string(first / c.N) + " column " + std::to_string(first % c.N) + ", " + std::to_string(b[first]) +
           " vs " + std::to_string(a[first]) + ")";
}

// The probe's verdict: "" (passed) or why the path stays off.
std::string run_probe() {
    const probe_case cases[] = {{MINICPM_DTYPE_BF16, 192, 384, 256}, {MINICPM_DTYPE_F16, 200, 327, 264}};
    size_t           bytes = 0;
    for (const probe_case & c : cases)
        bytes = std::max(bytes, size_t(c.T * c.K + c.N * c.K) * 2 + size_t(c.T * c.N) * 2 * sizeof(float));
    void * buf = nullptr;
    if (cudaMalloc(&buf, bytes) != cudaSuccess) {
        cudaGetLastError();
        return "no memory for the probe";
    }
    std::string why;
    try {
        for (const probe_case & c : cases) {
            why = c.type == MINICPM_DTYPE_BF16 ? probe_one<__nv_bfloat16>(c, (uint8_t *) buf)
                                               : probe_one<__half>(c, (uint8_t *) buf);
            if (!why.empty()) break;
        }
    } catch (const std::exception & e) {
        why = e.what();
        cudaGetLastError();  // clears an error that is not sticky; a sticky one shows again below
        if (cudaDeviceSynchronize() != cudaSuccess) why += "; the CUDA context is lost (sticky error)";
    }
    cudaFree(buf);
    cudaGetLastError();
    return why;
}

}  // namespace

std::string gemm16_sm90_start() {
    static const std::string report = [] {
        int dev = 0, major = 0, minor = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
            cudaGetLastError();
            return std::string();
        }
        g_wgmma_state.sm90 = major == 9 && minor == 0;
        g_wgmma_state.built = MINICPM_CUDA_SM90 != 0;
        if (!g_wgmma_state.sm90) return std::string();
        if (!g_wgmma_state.built) return std::string(" (wgmma gemm off: not built, nvcc without sm_90a)");
        const std::string why = run_probe();
        g_wgmma_state.enabled = why.empty();
        g_wgmma_on.store(why.empty(), std::memory_order_release);
        if (why.empty()) return std::string(" wgmma-gemm (sm_90a, probe passed)");
        return " (wgmma gemm off: probe: " + why + ")";
    }();
    g_wgmma_state.report = report;
    return report;
}

wgmma_state gemm16_wgmma_state() { return g_wgmma_state; }

void gemm16_allow_wgmma(bool allow) { g_wgmma_allowed.store(allow, std::memory_order_relaxed); }

}  // namespace cuda
}  // namespace minicpm
