// Matrix-vector kernels for weights stored in bf16 or int8, written once for any vector width.
//
// Included by linear_cpu.cpp once per instruction set, inside namespace cobra_linear::<isa> and under the matching
// `#pragma GCC target`, right after cpu_vector.h (kLanes = 4: SSE2 / NEON, 8: AVX2, 16: AVX-512; the x86 widths use
// immintrin.h, included by the .cpp). No include guard and no #include, on purpose (as selective_scan_cpu_kernels.h).
//
// bf16 weights: fp32 arithmetic. A chunk of weights at a time becomes fp32 by a 16-bit shift (exact), then fp32 fused
// multiply-adds into kLanes partial sums per (row, output), summed at the end (GCC/Clang vector extensions).
// int8 weights: integer arithmetic within a group. The input rows arrive as int16 (rounded by the caller to 1/32767 of
// each row's largest magnitude); weights are sign-extended to int16 and multiplied in pairs into int32 lanes
// (pmaddwd, or on 256-bit vectors AVX-512 VNNI's vpdpwssd), exactly, over each group of kQ8Group weights that shares
// one bf16 scale; each group's lanes become fp32 and are added scaled by the group's scale, and the row's sum by the
// input row's.

#define CL_INLINE inline __attribute__((always_inline))

// Weights of one row widened to fp32 at a time: 4 vectors for the baseline, whose loop the compiler vectorizes.
constexpr int64_t kChunk = kLanes == 4 ? 16 : 2 * kLanes;

// One bf16 weight -> fp32: the top half of an fp32.
CL_INLINE float to_float(uint16_t w) {
  const uint32_t bits = static_cast<uint32_t>(w) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// kChunk bf16 weights of one row -> fp32 in `out`. x86: sign- or zero-extend, shift, convert (intrinsics: GCC makes
// scalar code of vector-extension conversions, and half-width stores of its own loop's); baseline: a plain loop,
// which the compiler vectorizes for SSE2 or NEON.
#if COBRA_CPU_LANES == 16
CL_INLINE void widen(const uint16_t* __restrict w, float* __restrict out) {
  for (int64_t i = 0; i < kChunk; i += 16) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i)));
    _mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
  }
}
#elif COBRA_CPU_LANES == 8
CL_INLINE void widen(const uint16_t* __restrict w, float* __restrict out) {
  for (int64_t i = 0; i < kChunk; i += 8) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)));
    _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
  }
}
#else
CL_INLINE void widen(const uint16_t* __restrict w, float* __restrict out) {
  for (int64_t i = 0; i < kChunk; ++i) out[i] = to_float(w[i]);
}
#endif

// y[m, n] = sum_k x[m, k] w[n, k] for n in [n0, n1), m < M; x [M, K] fp32, w [N, K] bf16.
// R adjacent weight rows per pass (one stream, prefetched kPrefetchBytes ahead), all M input rows against each; S
// partial sums per (row, input row), so that S * R * M chains of fused multiply-adds overlap their latency.
template <int M, int R, int S>
void columns_bf16(const float* x, const uint16_t* w, float* y, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  static_assert(kChunk % (S * kLanes) == 0, "a chunk feeds every partial sum equally");
  const int64_t k_vec = K / kChunk * kChunk;
  constexpr int64_t kStepBytes = R * kChunk * 2;  // weight bytes read per step
  for (int64_t n = n0; n < n1; n += R) {
    const int64_t rows = std::min<int64_t>(R, n1 - n);
    const uint16_t* wr[R];
    for (int r = 0; r < R; ++r) wr[r] = w + (n + std::min<int64_t>(r, rows - 1)) * K;
    const char* stream = reinterpret_cast<const char*>(wr[0]) + kPrefetchBytes;
    vf acc[S][R][M];
    for (int a = 0; a < S; ++a)
      for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) acc[a][r][m] = vf{};
    for (int64_t k = 0; k < k_vec; k += kChunk) {
      // rows n .. n + R - 1 are adjacent: read them as one stream of R * K weights (beyond w: no fault)
      for (int64_t b = 0; b < kStepBytes; b += 64) __builtin_prefetch(stream + R * k * 2 + b, 0, 2);
      alignas(64) float wf[R][kChunk];
      for (int r = 0; r < R; ++r) widen(wr[r] + k, wf[r]);
      for (int64_t c = 0; c < kChunk; c += S * kLanes) {
        for (int a = 0; a < S; ++a) {
          for (int m = 0; m < M; ++m) {
            const vf xv = loadu(x + m * K + k + c + a * kLanes);
            for (int r = 0; r < R; ++r) acc[a][r][m] += loadu(wf[r] + c + a * kLanes) * xv;
          }
        }
      }
    }
    for (int r = 0; r < rows; ++r) {
      for (int m = 0; m < M; ++m) {
        vf total = acc[0][r][m];
        for (int a = 1; a < S; ++a) total += acc[a][r][m];
        float sum = hsum(total);
        for (int64_t k = k_vec; k < K; ++k) sum += to_float(wr[r][k]) * x[m * K + k];
        y[m * N + n + r] = sum;
      }
    }
  }
}

// int8 x int16 multiply-adds into int32 lanes, kQ8Step weights per step; Q8Sum: fp32 lanes of scaled group sums.
#if COBRA_CPU_LANES == 16
constexpr int64_t kQ8Step = 32;
typedef __m512i Q8Acc;
CL_INLINE Q8Acc q8_zero() { return _mm512_setzero_si512(); }
CL_INLINE Q8Acc q8_madd(Q8Acc acc, const int8_t* w, const int16_t* x) {
  const __m512i wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
  const __m512i xv = _mm512_loadu_si512(x);
  return _mm512_add_epi32(acc, _mm512_madd_epi16(wv, xv));  // VNNI CPUs take the 256-bit kernel (linear_cpu.cpp)
}
CL_INLINE vf q8_lanes(Q8Acc acc) {
  const __m512 lanes = _mm512_cvtepi32_ps(acc);
  return loadu(reinterpret_cast<const float*>(&lanes));
}
#elif COBRA_CPU_LANES == 8
constexpr int64_t kQ8Step = 16;
typedef __m256i Q8Acc;
CL_INLINE Q8Acc q8_zero() { return _mm256_setzero_si256(); }
CL_INLINE Q8Acc q8_madd(Q8Acc acc, const int8_t* w, const int16_t* x) {
  const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
#ifdef COBRA_LINEAR_VNNI
  return _mm256_dpwssd_epi32(acc, wv, xv);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(wv, xv));
#endif
}
CL_INLINE vf q8_lanes(Q8Acc acc) {
  const __m256 lanes = _mm256_cvtepi32_ps(acc);
  return loadu(reinterpret_cast<const float*>(&lanes));
}
#else
constexpr int64_t kQ8Step = 16;
struct Q8Acc {
  int32_t lane[kQ8Step];
};
struct Q8Sum {
  float lane[kQ8Step];
};
CL_INLINE Q8Acc q8_zero() { return Q8Acc{}; }
CL_INLINE Q8Acc q8_madd(Q8Acc acc, const int8_t* __restrict w, const int16_t* __restrict x) {
  for (int64_t i = 0; i < kQ8Step; ++i) acc.lane[i] += static_cast<int32_t>(w[i]) * static_cast<int32_t>(x[i]);
  return acc;
}
CL_INLINE Q8Sum q8_scaled_add(Q8Sum sum, const Q8Acc& acc, float scale) {
  for (int64_t i = 0; i < kQ8Step; ++i) sum.lane[i] += static_cast<float>(acc.lane[i]) * scale;
  return sum;
}
CL_INLINE float q8_total(const Q8Sum& sum) {
  float total = 0.f;
  for (const float lane : sum.lane) total += lane;
  return total;
}
#endif
#if COBRA_CPU_LANES == 16 || COBRA_CPU_LANES == 8
typedef vf Q8Sum;
CL_INLINE Q8Sum q8_scaled_add(Q8Sum sum, Q8Acc acc, float scale) { return sum + q8_lanes(acc) * scale; }
CL_INLINE float q8_total(Q8Sum sum) { return hsum(sum); }
#endif

// Weights per scale along a row (the last group of a row may be shorter): cobra_app/model/ops/torch_ops.py's
// INT8_GROUP. A group's int32 lanes hold at most 32 / 8 products of |w x| <= 127 * 32767: no overflow.
constexpr int64_t kQ8Group = 32;
static_assert(kQ8Group % kQ8Step == 0, "a group is whole steps");
// Groups whose bf16 scales are widened to fp32 at a time, before their weights are read: the multiply-adds then take
// each scale from memory as a broadcast operand instead of widening it between them.
constexpr int64_t kScaleBlock = 64;

// y[m, n] = x_scale[m] * sum_g w_scale[n, g] * sum_{k in group g} xq[m, k] w[n, k] for n in [n0, n1), m < M;
// xq [M, K] int16, w [N, K] int8, w_scale [N, ceil(K / kQ8Group)] bf16. R rows per pass as in columns_bf16; the
// R x M chains of multiply-adds overlap their latency.
template <int M, int R>
void columns_int8(const int16_t* xq, const float* x_scale, const int8_t* w, const uint16_t* w_scale, float* y,
                  int64_t N, int64_t K, int64_t n0, int64_t n1) {
  const int64_t groups = (K + kQ8Group - 1) / kQ8Group, full = K / kQ8Group;
  constexpr int64_t kStepBytes = R * kQ8Group;  // weight bytes read per group
  for (int64_t n = n0; n < n1; n += R) {
    const int64_t rows = std::min<int64_t>(R, n1 - n);
    const int8_t* wr[R];
    const uint16_t* sr[R];
    for (int r = 0; r < R; ++r) {
      const int64_t row = n + std::min<int64_t>(r, rows - 1);
      wr[r] = w + row * K;
      sr[r] = w_scale + row * groups;
    }
    const char* stream = reinterpret_cast<const char*>(wr[0]) + kPrefetchBytes;
    Q8Sum sum[R][M];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) sum[r][m] = Q8Sum{};
    for (int64_t g0 = 0; g0 < full; g0 += kScaleBlock) {
      const int64_t g1 = std::min(full, g0 + kScaleBlock);
      alignas(64) float scale[R][kScaleBlock];
      for (int r = 0; r < R; ++r)
        for (int64_t g = g0; g < g1; ++g) scale[r][g - g0] = to_float(sr[r][g]);
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t k = g * kQ8Group;
        for (int64_t b = 0; b < kStepBytes; b += 64) __builtin_prefetch(stream + R * k + b, 0, 2);
        Q8Acc acc[R][M];
        for (int r = 0; r < R; ++r)
          for (int m = 0; m < M; ++m) acc[r][m] = q8_zero();
        for (int64_t s = 0; s < kQ8Group; s += kQ8Step) {
          for (int m = 0; m < M; ++m) {
            for (int r = 0; r < R; ++r) acc[r][m] = q8_madd(acc[r][m], wr[r] + k + s, xq + m * K + k + s);
          }
        }
        for (int r = 0; r < R; ++r)
          for (int m = 0; m < M; ++m) sum[r][m] = q8_scaled_add(sum[r][m], acc[r][m], scale[r][g - g0]);
      }
    }
    for (int r = 0; r < rows; ++r) {
      for (int m = 0; m < M; ++m) {
        float total = q8_total(sum[r][m]);
        if (full < groups) {  // the short last group
          int64_t tail = 0;
          for (int64_t k = full * kQ8Group; k < K; ++k) tail += static_cast<int32_t>(wr[r][k]) * xq[m * K + k];
          total += static_cast<float>(tail) * to_float(sr[r][full]);
        }
        y[m * N + n + r] = total * x_scale[m];
      }
    }
  }
}

#undef CL_INLINE
