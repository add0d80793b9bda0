// fp32 vectors of one instruction set's width, shared by the kernel headers (selective_scan_cpu_kernels.h,
// linear_cpu_kernels.h).
//
// Included right before a kernel header, inside that ISA's namespace and `#pragma GCC target`, with COBRA_CPU_LANES
// set to the target's native fp32 vector width (4: SSE2 / NEON, 8: AVX2, 16: AVX-512; wider-than-native vectors would
// turn compares and selects into scalar code). No include guard, on purpose: each ISA gets its own copy.
// GCC/Clang vector extensions, so nothing depends on -march.

#define CPU_INLINE inline __attribute__((always_inline))

constexpr int64_t kLanes = COBRA_CPU_LANES;
typedef float vf __attribute__((vector_size(4 * COBRA_CPU_LANES)));  // kLanes x fp32
typedef float v4f __attribute__((vector_size(16)));

CPU_INLINE vf loadu(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(vf));
  return v;
}
CPU_INLINE void storeu(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }

// Sum of the lanes: 128-bit quarters added in order, then a fixed pairwise sum.
CPU_INLINE float hsum(vf v) {
  v4f acc;
  std::memcpy(&acc, &v, sizeof(v4f));
  for (int64_t i = 1; i < kLanes / 4; ++i) {
    v4f part;
    std::memcpy(&part, reinterpret_cast<const char*>(&v) + i * sizeof(v4f), sizeof(v4f));
    acc = acc + part;
  }
  return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

#undef CPU_INLINE
