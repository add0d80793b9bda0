// The kernels of one header compiled once per vector width, for `cpu_isa.h`'s run-time choice: namespace base (SSE2 /
// NEON width, 4 fp32 lanes) and, with GCC on x86, avx2 (AVX2 + FMA, 8 lanes) and avx512 (AVX-512 F + BW, 16 lanes)
// under `#pragma GCC target`. Include it after `#define COBRA_CPU_KERNELS "<kernel header>"`. No include guard: each
// translation unit includes it for its own kernels.

namespace base {  // SSE2 / NEON width
#define COBRA_CPU_LANES 4
#include "cpu_vector.h"
#include COBRA_CPU_KERNELS
#undef COBRA_CPU_LANES
}  // namespace base

#if COBRA_CPU_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#define COBRA_CPU_LANES 8
#include "cpu_vector.h"
#include COBRA_CPU_KERNELS
#undef COBRA_CPU_LANES
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx2,fma")
namespace avx512 {
#define COBRA_CPU_LANES 16
#include "cpu_vector.h"
#include COBRA_CPU_KERNELS
#undef COBRA_CPU_LANES
}  // namespace avx512
#pragma GCC pop_options
#endif
