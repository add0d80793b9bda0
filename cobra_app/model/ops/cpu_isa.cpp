// The kernel variant in use (cpu_isa.h): chosen by CPUID at run time, capped by `cap_isa` (tests, benchmarks and the
// COBRA_CPU_ISA environment variable read on the Python side).

#include "cpu_isa.h"

#include <torch/library.h>

#include <algorithm>
#include <atomic>

namespace cobra_cpu {
namespace {

constexpr const char* kNames[] = {"baseline", "avx2", "avx512", "avx512_bf16"};

// avx512 = F + BW (16-bit masked loads); avx512_bf16 adds the bf16 dot product (vdpbf16ps) and VNNI (vpdpwssd),
// which every CPU with AVX-512 BF16 has.
Isa best_isa() {
#if COBRA_CPU_MULTI_ISA
  static const Isa isa = [] {
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return Isa::kBase;
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))) return Isa::kAvx2;
    const bool bf16 = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni");
    return bf16 ? Isa::kAvx512Bf16 : Isa::kAvx512;
  }();
  return isa;
#else
  return Isa::kBase;
#endif
}

std::atomic<int> isa_cap{static_cast<int>(Isa::kAvx512Bf16)};

std::string isa() { return isa_name(current_isa()); }

// Use at most `cap` (one of kNames) even where the CPU has more. Returns the ISA now in use.
std::string cap_isa(const std::string& cap) {
  const auto* it = std::find(std::begin(kNames), std::end(kNames), cap);
  TORCH_CHECK(it != std::end(kNames), "unknown ISA '", cap, "': baseline, avx2, avx512 or avx512_bf16");
  isa_cap.store(static_cast<int>(it - std::begin(kNames)));
  return isa();
}

}  // namespace

Isa current_isa() { return static_cast<Isa>(std::min(static_cast<int>(best_isa()), isa_cap.load())); }

const char* isa_name(Isa isa) { return kNames[static_cast<int>(isa)]; }

}  // namespace cobra_cpu

TORCH_LIBRARY(cobra_cpu, m) {
  m.def("isa() -> str", &cobra_cpu::isa);
  m.def("cap_isa(str cap) -> str", &cobra_cpu::cap_isa);
}
