// y[T,N] = x[T,K] . W[N,K]^T for bf16 / f16 weights with Hopper's warpgroup MMA (wgmma.mma_async m64n256k16,
// f32 accumulators): the prefill GEMM (T >= 128) and the LM head on compute capability 9.0 only. Built for
// sm_90a alone (wgmma exists on no other target); gemm.cu dispatches here once its start-up probe has passed.
//
// A block computes 128 x 256 outputs with two warpgroups (64 rows of T each, all 256 weight rows). Both operands
// are K-contiguous rows and wgmma reads them from shared memory through matrix descriptors in the 128-byte
// swizzle layout: a row of 64 values is 128 bytes, 16-byte chunk c of row r sits at chunk c ^ (r & 7), and
// eight rows make a 1024-byte core group (the descriptor's stride). That is gemm.cu's swizzle, so tiles arrive by
// the same 16-byte cp.async (zero-filled past T, N and K), into 1024-byte aligned stages. A k16 step starts
// 32 bytes further along the row: the hardware applies the XOR to the address bits, which is why stage and
// operand bases must sit on 1024 bytes.
//
// Pipeline (4 stages of 48 KiB): at step kt the block waits for tile kt's copies, makes them visible to the
// async proxy (fence.proxy.async), passes a barrier, refills the stage of tile kt - 2 with tile kt + 2, issues
// tile kt's four wgmma as one group and waits for all groups but that one, so one group of MMAs always runs
// under the next step's wait and copies. The barrier of step kt follows every warpgroup's wait on tile kt - 2:
// no copy overwrites a stage an MMA still reads.
#include "cuda/mma.cuh"
#include "cuda/ops.cuh"

namespace minicpm {
namespace cuda {

namespace {

constexpr int k_wbm = 128, k_wbn = 256, k_wbk = 64;   // block tile; K values a stage (one 128-byte row)
constexpr int k_wstages = 4;
constexpr int k_wthreads = 256;                       // two warpgroups
constexpr int k_wgroup_m = 8;                         // row tiles of a raster group (as gemm.cu)
constexpr int k_wa_bytes = k_wbm * k_wbk * 2, k_wstage_bytes = (k_wbm + k_wbn) * k_wbk * 2;
constexpr size_t k_wshared = size_t(k_wstages) * k_wstage_bytes + 1024;  // + room to align the base
static_assert(k_wa_bytes % 1024 == 0 && k_wstage_bytes % 1024 == 0, "stages and operands on 1024-byte groups");

// Matrix descriptor of a K-major operand in the 128-byte swizzle: start address / 16 (bits 0-13), leading
// offset 1 (unused when a k16 step lies inside one 128-byte row), stride 1024 bytes / 16 between 8-row groups
// (bits 32-45), base offset 0 (1024-aligned groups), layout 1 = 128-byte swizzle (bits 62-63).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr) {
    return uint64_t((addr & 0x3ffff) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

#define MINICPM_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                      "+f"(d[i + 6]), "+f"(d[i + 7])
// d (64 x 256 of this warpgroup, f32) += A (64 x 16) . B (256 x 16)^T, both K-major (no transpose), scale 1.
#define MINICPM_WGMMA_256(TYPE)                                                                                  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                                 \
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32." TYPE "." TYPE " {"                              \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"\
                 "}, %128, %129, p, 1, 1, 0, 0;\n}\n"                                                               \
                 : MINICPM_D8(0), MINICPM_D8(8), MINICPM_D8(16), MINICPM_D8(24), MINICPM_D8(32), MINICPM_D8(40),  \
                   MINICPM_D8(48), MINICPM_D8(56), MINICPM_D8(64), MINICPM_D8(72), MINICPM_D8(80), MINICPM_D8(88), \
                   MINICPM_D8(96), MINICPM_D8(104), MINICPM_D8(112), MINICPM_D8(120)                              \
                 : "l"(da), "l"(db), "r"(1))

template <bool BF16> __device__ __forceinline__ void wgmma_256(float (&d)[128], uint64_t da, uint64_t db) {
    if constexpr (BF16) {
        MINICPM_WGMMA_256("bf16");
    } else {
        MINICPM_WGMMA_256("f16");
    }
}
#undef MINICPM_WGMMA_256
#undef MINICPM_D8

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// The compiler takes an MMA's accumulators as written at issue: tying each register to an empty asm after
// wgmma.wait_group keeps the epilogue's reads behind the wait.
__device__ __forceinline__ void fence_acc(float (&d)[128]) {
#pragma unroll
    for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// This thread's completed cp.async writes (generic proxy) made visible to wgmma's reads (async proxy).
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Grid: x the output tiles in raster groups (as gemm.cu), z the K spans (partials to the z-th T x N slab).
template <typename H>
__global__ void __launch_bounds__(k_wthreads, 1)
gemm16_wgmma_kernel(float * y, const H * a, const H * b, const float * row_scale, int64_t T, int64_t N, int64_t K,
                    int tiles_m, int tiles_n, int span_tiles) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(1024) uint8_t wsmem[];
    const uint32_t raw = smem_addr(wsmem), base = (raw + 1023u) & ~1023u;
    uint8_t *      sm = wsmem + (base - raw);

    const int64_t per_group = int64_t(k_wgroup_m) * tiles_n;
    const int64_t bid = blockIdx.x, group = bid / per_group, first_m = group * k_wgroup_m;
    const int64_t gm = tiles_m - first_m < k_wgroup_m ? tiles_m - first_m : k_wgroup_m, in_group = bid % per_group;
    const int64_t t0 = (first_m + in_group % gm) * k_wbm, n0 = (in_group / gm) * k_wbn;

    const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / k_warp, lane = tid % k_warp;
    const int kt0 = int(blockIdx.z) * span_tiles, n_tiles = min(int((K + k_wbk - 1) / k_wbk) - kt0, span_tiles);

    // Rows 0..127 of a stage are A (x), 128..383 B (W); chunk c of row r at byte r * 128 + 16 (c ^ (r & 7)).
    auto load_tile = [&](int s, int kt) {
        load_swizzled_step<H, k_wbm, k_wbm + k_wbn, k_wthreads>(sm + s * k_wstage_bytes, a, b, t0, n0, T, N, K,
                                                                int64_t(kt0 + kt) * k_wbk);
    };

    float acc[128];  // n8 tile j, element e: row 16 warp + lane / 4 + 8 (e / 2), column 8 j + 2 (lane % 4) + e % 2
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0.0f;

    for (int s = 0; s < k_wstages - 2; ++s) {
        if (s < n_tiles) load_tile(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < n_tiles; ++kt) {
        cp_async_wait<k_wstages - 3>();
        fence_async_shared();
        __syncthreads();
        if (kt + k_wstages - 2 < n_tiles) load_tile((kt + k_wstages - 2) % k_wstages, kt + k_wstages - 2);
        cp_async_commit();
        const uint32_t stage = base + (kt % k_wstages) * k_wstage_bytes;
        const uint32_t sa = stage + wg * 64 * 128, sb = stage + k_wa_bytes;  // this warpgroup's 64 A rows; all of B
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < k_wbk / 16; ++kk)
            wgmma_256<std::is_same<H, __nv_bfloat16>::value>(acc, sw128_desc(sa + kk * 32), sw128_desc(sb + kk * 32));
        wgmma_commit();
        wgmma_wait<1>();
    }
    wgmma_wait<0>();
    fence_acc(acc);
    cp_async_wait<0>();  // no copy may still target shared memory when the block exits

    // The same stores as gemm.cu: rows N floats apart, row_scale (f16 rows scaled on their way in) undone.
    float *    out = y + int64_t(blockIdx.z) * T * N;
    const bool pairs = N % 2 == 0 && uintptr_t(y) % 8 == 0;
#pragma unroll
    for (int j = 0; j < 32; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int64_t row = t0 + wg * 64 + warp * 16 + lane / 4 + 8 * h, col = n0 + j * 8 + 2 * (lane % 4);
            if (row >= T || col >= N) continue;
            const float rs = row_scale ? row_scale[row] : 1.0f;
            const float v0 = acc[4 * j + 2 * h] * rs, v1 = acc[4 * j + 2 * h + 1] * rs;
            float *     p = out + row * N + col;
            if (pairs) {
                *(float2 *) p = make_float2(v0, v1);
            } else {
                p[0] = v0;
                if (col + 1 < N) p[1] = v1;
            }
        }
#endif
}

template <typename H>
void launch_typed(cudaStream_t s, float * out, const H * xb, const float * row_scale, const wdesc & w, int64_t T,
                  int32_t splits) {
    auto *                   kernel = gemm16_wgmma_kernel<H>;
    static std::atomic<bool> opted{false};
    opt_in_shared(kernel, k_wshared, opted);
    const int64_t tiles_m = ceil_div(T, k_wbm), tiles_n = ceil_div(w.rows, k_wbn), blocks = tiles_m * tiles_n;
    if (blocks > int64_t(INT32_MAX))
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "matmul: " + std::to_string(T) + " x " + std::to_string(w.rows) +
                                                  " outputs exceed the wgmma gemm's grid");
    const int64_t steps = ceil_div(w.cols, k_wbk);
    kernel<<<dim3(unsigned(blocks), 1, unsigned(splits)), k_wthreads, k_wshared, s>>>(
        out, xb, (const H *) w.data, row_scale, T, w.rows, w.cols, int(tiles_m), int(tiles_n),
        int(ceil_div(steps, splits)));
    MINICPM_CUDA_LAUNCHED("matmul: wgmma gemm");
}

}  // namespace

void launch_gemm16_wgmma(cudaStream_t s, float * out, const void * xb, const float * row_scale, const wdesc & w,
                         int64_t T, int32_t splits) {
    if (w.type == MINICPM_DTYPE_BF16) {
        launch_typed(s, out, (const __nv_bfloat16 *) xb, row_scale, w, T, splits);
    } else {
        launch_typed(s, out, (const __half *) xb, row_scale, w, T, splits);
    }
}

}  // namespace cuda
}  // namespace minicpm
