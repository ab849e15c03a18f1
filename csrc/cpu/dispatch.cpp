// Chooses the fast CPU kernels once, from cpuid (and, for AMX, the OS's permission to use tile state).
#include "cpu/ops-fast.h"

#include <algorithm>
#include <cstring>

#if defined(MINICPM_X86)
#    include <cpuid.h>
#endif

namespace minicpm {

namespace {

const cpu_kernel_table k_portable = {"portable", "", matmul_rows_portable, attention_task_portable, false};

#if defined(MINICPM_X86)
const cpu_kernel_table k_avx2 = {"avx2", "avx2 fma f16c", matmul_rows_avx2, attention_task_avx2, false};
const cpu_kernel_table k_avx512 = {"avx512", "avx512f avx512bw avx512vl", matmul_rows_avx512, attention_task_avx512,
                                   false};
const cpu_kernel_table k_amx = {"avx512+amx", "avx512f avx512bw avx512vl avx512_bf16 amx_bf16", matmul_rows_avx512,
                                attention_task_avx512, true};

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

}  // namespace

int cpu_kernel_variants(const cpu_kernel_table ** out, int cap) {
    int n = 0;
    auto add = [&](const cpu_kernel_table & t) {
        if (n < cap) out[n] = &t;
        ++n;
    };
#if defined(MINICPM_X86)
    static const x86_features f = detect();
    if (f.amx_bf16) add(k_amx);
    if (f.avx512) add(k_avx512);
    if (f.avx2) add(k_avx2);
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
    for (int i = 0; i < n; ++i)
        if (std::strcmp(v[i]->name, name) == 0) return v[i];
    return nullptr;
}

int cpu_kernel_family_names(const char ** out, int cap) {
    const cpu_kernel_table * v[8];
    const int n = std::min(cpu_kernel_variants(v, 8), 8);
    for (int i = 0; i < n && i < cap; ++i) out[i] = v[i]->name;
    return n;
}

}  // namespace minicpm
