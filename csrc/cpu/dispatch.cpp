// Chooses the fast CPU kernels once, from cpuid (and, for AMX, the OS's permission to use tile state) on x86-64
// and from the kernel's hwcaps on ARM64. Families, best first:
//   x86-64: avx512+amx  AMX tiles for bf16 weights at T >= 5, vdpbf16ps below; AVX-512 FMA for f16/f32;
//                       attention over a bf16 KV cache with vdpbf16ps
//           avx512bf16  vdpbf16ps for bf16 weights at every T (what Zen 4/5 run) and for attention over a bf16
//                       KV cache; AVX-512 FMA for f16/f32
//           avx512      exact: AVX-512 FMA (bf16 widened by shift, f16 by vcvtph2ps)
//           avx2        exact: AVX2 + FMA + F16C
//   ARM64:  neon+bf16+i8mm  bfdot (one token) / bfmmla (token pairs) for bf16 weights; smmla for q8/q4 weights
//                           (HWCAP2_BF16, HWCAP2_I8MM and HWCAP_ASIMDDP: Neoverse V1/N2, Cortex-A710, Apple M2)
//           neon+dotprod    exact: NEON FMA for float weights; sdot for q8/q4 (HWCAP_ASIMDDP: Cortex-A76/A78,
//                           Neoverse N1, Apple M1)
//           neon            exact: NEON FMA (bf16 widened by shift, f16 by fcvtl); smull/sadalp for q8/q4
//   Attention and the elementwise ops of the ARM64 families are the baseline build (attention.cpp,
//   elementwise.cpp), which is NEON on ARM64.
//   any:    portable    exact: plain C++ (auto-vectorized for the baseline ISA)
#include "cpu/ops-fast.h"

#include <algorithm>
#include <cstring>

#if defined(MINICPM_X86)
#    include <cpuid.h>
#endif
#if defined(__aarch64__)
#    include <sys/auxv.h>
#endif

namespace minicpm {

namespace {

const cpu_kernel_table k_portable = {"portable", "", matmul_rows_portable, attention_task_portable, false, false,
                                     nullptr, nullptr, 0, rms_norm_row_portable, silu_mul_portable, add_scaled_portable};

#if defined(MINICPM_X86)
const cpu_kernel_table k_avx2 = {"avx2", "avx2 fma f16c", matmul_rows_avx2, attention_task_avx2, false, false,
                                 nullptr, nullptr, 0, rms_norm_row_avx2, silu_mul_avx2, add_scaled_avx2};
const cpu_kernel_table k_avx512 = {"avx512", "avx512f avx512bw avx512vl", matmul_rows_avx512, attention_task_avx512,
                                   false, false, nullptr, nullptr, 0, rms_norm_row_avx512, silu_mul_avx512, add_scaled_avx512};
const cpu_kernel_table k_avx512bf16 = {"avx512bf16", "avx512f avx512bw avx512vl avx512_bf16", matmul_rows_avx512,
                                       attention_task_dpbf16_avx512, true, false, bf16_pack_x_avx512,
                                       matmul_rows_dpbf16_avx512, 32, rms_norm_row_avx512, silu_mul_avx512, add_scaled_avx512};
const cpu_kernel_table k_amx = {"avx512+amx", "avx512f avx512bw avx512vl avx512_bf16 amx_bf16", matmul_rows_avx512,
                                attention_task_dpbf16_avx512, true, true, bf16_pack_x_avx512, matmul_rows_dpbf16_avx512, 32,
                                rms_norm_row_avx512, silu_mul_avx512, add_scaled_avx512};

struct x86_features {
    bool avx2 = false, avx512 = false, avx512_bf16 = false, amx_bf16 = false;
};

x86_features detect() {
    x86_features f;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(1, 0, &a, &b, &c, &d)) return f;
    const bool fma = c & (1u << 12), f16c = c & (1u << 29), osxsave = c & (1u << 27);
    if (!osxsave) return f;
    unsigned xlo, xhi;
    asm volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    const bool os_avx = (xlo & 0x6) == 0x6, os_avx512 = (xlo & 0xe6) == 0xe6;
    const bool os_amx = (xlo & 0x60000) == 0x60000;  // XTILECFG and XTILEDATA state enabled
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    const bool avx2 = b & (1u << 5), avx512f = b & (1u << 16), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
    const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);
    unsigned a1 = 0, b1, c1, d1;
    __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    f.avx2 = os_avx && avx2 && fma && f16c;
    f.avx512 = f.avx2 && os_avx512 && avx512f && avx512bw && avx512vl;
    f.avx512_bf16 = f.avx512 && (a1 & (1u << 5));
    f.amx_bf16 = f.avx512_bf16 && os_amx && amx_bf16 && amx_tile && amx_request_permission();
    return f;
}
#endif

#if defined(__aarch64__)
const cpu_kernel_table k_neon = {"neon", "asimd", matmul_rows_neon, attention_task_portable, false, false,
                                 nullptr, nullptr, 0, rms_norm_row_portable, silu_mul_portable, add_scaled_portable};
const cpu_kernel_table k_neon_dotprod = {"neon+dotprod", "asimd asimddp", matmul_rows_neon, attention_task_portable,
                                         false, false, nullptr, nullptr, 0, rms_norm_row_portable, silu_mul_portable,
                                         add_scaled_portable};
const cpu_kernel_table k_neon_bf16_i8mm = {"neon+bf16+i8mm", "asimd asimddp bf16 i8mm", matmul_rows_neon,
                                           attention_task_portable, false, false, bf16_pack_x_neon, matmul_rows_bf16_neon, 8,
                                           rms_norm_row_portable, silu_mul_portable, add_scaled_portable};
#endif

}  // namespace

#if defined(__aarch64__)
arm_features arm_cpu_features() {
#    ifndef HWCAP_ASIMDDP
#        define HWCAP_ASIMDDP (1 << 20)
#    endif
#    ifndef HWCAP2_I8MM
#        define HWCAP2_I8MM (1 << 13)
#    endif
#    ifndef HWCAP2_BF16
#        define HWCAP2_BF16 (1 << 14)
#    endif
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    arm_features f;
    f.dotprod = (hw & HWCAP_ASIMDDP) != 0;
    f.bf16 = (hw2 & HWCAP2_BF16) != 0;
    f.i8mm = (hw2 & HWCAP2_I8MM) != 0;
    return f;
}
#endif

int cpu_kernel_variants(const cpu_kernel_table ** out, int cap) {
    int n = 0;
    auto add = [&](const cpu_kernel_table & t) {
        if (n < cap) out[n] = &t;
        ++n;
    };
#if defined(MINICPM_X86)
    static const x86_features f = detect();
    if (f.amx_bf16) add(k_amx);
    if (f.avx512_bf16) add(k_avx512bf16);
    if (f.avx512) add(k_avx512);
    if (f.avx2) add(k_avx2);
#endif
#if defined(__aarch64__)
    static const arm_features f = arm_cpu_features();
    if (f.bf16 && f.i8mm && f.dotprod) add(k_neon_bf16_i8mm);
    if (f.dotprod) add(k_neon_dotprod);
    add(k_neon);
#endif
    add(k_portable);
    return n;
}

const cpu_kernel_table & cpu_kernels() {
    static const cpu_kernel_table * best = [] {
        const cpu_kernel_table * v[4];
        cpu_kernel_variants(v, 4);
        return v[0];
    }();
    return *best;
}

const char * cpu_features() { return cpu_kernels().features; }

const cpu_kernel_table * cpu_kernel_by_name(const char * name) {
    const cpu_kernel_table * v[8];
    const int n = std::min(cpu_kernel_variants(v, 8), 8);
    const bool exact = std::strcmp(name, "exact") == 0;
    for (int i = 0; i < n; ++i)
        if (exact ? cpu_kernels_exact(*v[i]) : std::strcmp(v[i]->name, name) == 0) return v[i];
    return nullptr;
}

int cpu_kernel_compiled_names(const char ** out, int cap) {
    static const char * const names[] = {
#if defined(MINICPM_X86)
        "avx512+amx", "avx512bf16", "avx512", "avx2",
#endif
#if defined(__aarch64__)
        "neon+bf16+i8mm", "neon+dotprod", "neon",
#endif
        "portable"};
    const int n = int(sizeof(names) / sizeof(names[0]));
    for (int i = 0; i < n && i < cap; ++i) out[i] = names[i];
    return n;
}

int cpu_kernel_family_names(const char ** out, int cap) {
    const cpu_kernel_table * v[8];
    const int n = std::min(cpu_kernel_variants(v, 8), 8);
    for (int i = 0; i < n && i < cap; ++i) out[i] = v[i]->name;
    return n;
}

}  // namespace minicpm
