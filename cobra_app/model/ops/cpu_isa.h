// The instruction sets the CPU kernels are compiled for, and the one in use: the best the CPU has, capped by a test
// hook (torch.ops.cobra_cpu.cap_isa) so that one machine can run, and tests can check, every variant.
//
// Shared by the library's translation units (hidden visibility: another build of the library loaded in the same
// process keeps its own copy).

#pragma once

#include <string>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__)
#define COBRA_CPU_MULTI_ISA 1  // GCC on x86: AVX2 and AVX-512 variants compiled under `#pragma GCC target`
#else
#define COBRA_CPU_MULTI_ISA 0  // the baseline variant only (SSE2 / NEON width)
#endif

namespace cobra_cpu {

// Ordered: each level has everything of the ones below it.
enum class Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

__attribute__((visibility("hidden"))) Isa current_isa();
__attribute__((visibility("hidden"))) const char* isa_name(Isa isa);

}  // namespace cobra_cpu
