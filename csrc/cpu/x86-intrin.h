// <immintrin.h> for the x86 kernel files. GCC 12 reports false (maybe-)uninitialized warnings inside the
// intrinsics' _mm*_undefined_* placeholders; the warnings are located in its headers, so silencing them around
// the include is enough.
#pragma once

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
