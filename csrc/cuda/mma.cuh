// PTX wrappers of the tensor-core GEMMs (gemm.cu, qgemm.cu): 16-byte cp.async into shared memory, ldmatrix,
// mma.sync m16n8k16 with f32 accumulation (sm_80+).
#pragma once

#include "cuda/common.cuh"

#include <atomic>

namespace minicpm {
namespace cuda {

__device__ __forceinline__ uint32_t smem_addr(const void * p) { return uint32_t(__cvta_generic_to_shared(p)); }

// 16 bytes global -> shared; src_bytes 0 fills the destination with zeros (rows past T or N).
__device__ __forceinline__ void cp_async16(void * dst, const void * src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// One 64-column step (from column k0) of A rows t0.. (BM of them, T in all) and B rows n0.. (ROWS - BM, N in
// all), both K values a row, into a shared stage of ROWS rows of 128 bytes by NT threads: 16-byte chunk c of
// row r goes to chunk c ^ (r & 7) (the 128-byte swizzle: gemm.cu's ldmatrix reads and wgmma's descriptors both
// expect it). Chunks past K (a multiple of 8) and rows past T or N are zero-filled.
template <typename H, int BM, int ROWS, int NT>
__device__ __forceinline__ void load_swizzled_step(uint8_t * st, const H * a, const H * b, int64_t t0, int64_t n0,
                                                   int64_t T, int64_t N, int64_t K, int64_t k0) {
    for (int e = threadIdx.x; e < ROWS * 8; e += NT) {
        const int     r = e / 8, c = e % 8;
        const int64_t k = k0 + c * 8;
        const bool    is_a = r < BM;
        const int64_t row = is_a ? t0 + r : n0 + (r - BM);
        const bool    in = (is_a ? row < T : row < N) && k < K;
        const H *     base = is_a ? a : b;
        cp_async16(st + r * 128 + ((c ^ (r & 7)) << 4), in ? base + row * K + k : base, in ? 16 : 0);
    }
}

// Four 8 x 8 matrices of 16-bit values; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void * p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// d += a . b for one m16n8k16 tile: bf16 (BF16 true) or f16 inputs, f32 accumulators.
template <bool BF16>
__device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
    if constexpr (BF16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}

// More than 48 KiB of dynamic shared memory needs a per-kernel opt-in: made once, not per launch (a launch may be
// recorded into a step graph), but only a success is remembered, so a failure is reported by every launch that
// would have run without it (`done`: one flag per kernel). The carveout asks for all of the unified L1 as shared
// memory (a hint; the copies bypass L1), so that two pipelines of ~100 KiB fit an SM where it has the room.
template <typename F> void opt_in_shared(F * kernel, size_t bytes, std::atomic<bool> & done) {
    if (done.load(std::memory_order_acquire)) return;
    MINICPM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    MINICPM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                            int(cudaSharedmemCarveoutMaxShared)));
    done.store(true, std::memory_order_release);
}

}  // namespace cuda
}  // namespace minicpm
