// bf16 matrix-vector products for decoding on CPU: y[M, N] = x[M, K] @ w[N, K]^T for a few rows (M <= 8),
// registered as torch.ops.cobra_linear.*.
//
// Decoding one token reads every weight once, so its speed is set by how fast the weights stream from memory.
// torch's bf16 GEMM reaches about 60% of this machine's bandwidth for M = 1; this kernel streams each weight row once
// for all M input rows, with AVX-512 BF16 dot products (vdpbf16ps: pairs of bf16 products accumulated in fp32).
// Accumulation is fp32 (16 lanes per row, then a tree sum), the result is rounded to bf16 once, as torch's is.
//
// Built only for CPUs with AVX-512 BF16 (chosen at run time: `available()`); elsewhere the Python side keeps
// torch's F.linear. Rows of w are split over threads with at::parallel_for.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__)
#define COBRA_LINEAR_AVX512BF16 1
#include <immintrin.h>
#else
#define COBRA_LINEAR_AVX512BF16 0
#endif

namespace cobra_linear {
namespace {

constexpr int64_t kMaxRows = 8;  // input rows (sequences decoded at once) handled by the kernel

#if COBRA_LINEAR_AVX512BF16
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512bf16")

// How far ahead of its loads a thread asks for weights (into L2). The cores' own prefetchers stop at 4 KB page
// boundaries; asking 16 KB ahead kept the stream of a decode step's matrices at 33 GB/s against 29 without (2 threads,
// this machine; 4 and 8 KB gave 31-32, 32 KB the same as 16).
constexpr int64_t kPrefetchBytes = 16384;

// Output columns [n0, n1) for M input rows: two weight rows at a time, 32 bf16 (one cache line) per load.
template <int M>
void columns(const uint16_t* x, const uint16_t* w, float* y, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  const int64_t k_full = K / 32 * 32;
  const __mmask32 tail = static_cast<__mmask32>((uint64_t{1} << (K - k_full)) - 1);
  for (int64_t n = n0; n < n1; n += 2) {
    const bool pair = n + 1 < n1;
    const uint16_t* w0 = w + n * K;
    const uint16_t* w1 = pair ? w0 + K : w0;
    __m512 acc0[M], acc1[M];
    for (int m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 32) {
      // rows n and n + 1 are adjacent, so the pair is read as one stream of 2 lines per step (beyond w: no fault)
      const char* ahead = reinterpret_cast<const char*>(w0) + 4 * k + kPrefetchBytes;
      _mm_prefetch(ahead, _MM_HINT_T1);
      _mm_prefetch(ahead + 64, _MM_HINT_T1);
      const bool full = k < k_full;
      const __m512i a0 = full ? _mm512_loadu_si512(w0 + k) : _mm512_maskz_loadu_epi16(tail, w0 + k);
      const __m512i a1 = full ? _mm512_loadu_si512(w1 + k) : _mm512_maskz_loadu_epi16(tail, w1 + k);
      for (int m = 0; m < M; ++m) {
        const uint16_t* xm = x + m * K + k;
        const __m512i b = full ? _mm512_loadu_si512(xm) : _mm512_maskz_loadu_epi16(tail, xm);
        acc0[m] = _mm512_dpbf16_ps(acc0[m], (__m512bh)a0, (__m512bh)b);
        acc1[m] = _mm512_dpbf16_ps(acc1[m], (__m512bh)a1, (__m512bh)b);
      }
    }
    for (int m = 0; m < M; ++m) {
      y[m * N + n] = _mm512_reduce_add_ps(acc0[m]);
      if (pair) y[m * N + n + 1] = _mm512_reduce_add_ps(acc1[m]);
    }
  }
}

#pragma GCC pop_options

using ColumnsFn = void (*)(const uint16_t*, const uint16_t*, float*, int64_t, int64_t, int64_t, int64_t);
constexpr ColumnsFn kColumns[kMaxRows] = {columns<1>, columns<2>, columns<3>, columns<4>,
                                          columns<5>, columns<6>, columns<7>, columns<8>};
#endif

bool available() {
#if COBRA_LINEAR_AVX512BF16
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

// x [M, K] bf16, w [N, K] bf16 (both contiguous), 1 <= M <= 8 -> y [M, N] bf16.
at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(available(), "cobra_linear: this CPU has no AVX-512 BF16");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "cobra_linear: x [M, K] and w [N, K]");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16, "cobra_linear: bf16 only");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= kMaxRows, "cobra_linear: 1 to ", kMaxRows, " rows");
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1), N = wc.size(0);
  at::Tensor y = at::empty({M, N}, xc.options().dtype(at::kFloat));
#if COBRA_LINEAR_AVX512BF16
  const auto* xp = reinterpret_cast<const uint16_t*>(xc.data_ptr());
  const auto* wp = reinterpret_cast<const uint16_t*>(wc.data_ptr());
  float* yp = y.data_ptr<float>();
  const ColumnsFn fn = kColumns[M - 1];
  at::parallel_for(0, (N + 1) / 2, 64, [&](int64_t begin, int64_t end) {
    fn(xp, wp, yp, N, K, 2 * begin, std::min(2 * end, N));
  });
#endif
  return y.to(at::kBFloat16);
}

// x [M, K], w [N, K] -> x @ w.T: the bf16 kernel above for bf16 inputs of 1 to kMaxRows rows (decode steps) where
// the CPU has AVX-512 BF16, else at::linear (= F.linear). The one place that chooses; Python's `cpu_kernel.linear`
// and the fused decode step's projections both call it.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w) {
  if (available() && x.dim() == 2 && x.size(0) >= 1 && x.size(0) <= kMaxRows &&
      x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16) {
    return linear_bf16(x, w);
  }
  return at::linear(x, w);
}

}  // namespace
}  // namespace cobra_linear

TORCH_LIBRARY(cobra_linear, m) {
  m.def("linear_bf16(Tensor x, Tensor w) -> Tensor");
  m.def("linear(Tensor x, Tensor w) -> Tensor");
  m.def("available() -> bool", &cobra_linear::available);
}

TORCH_LIBRARY_IMPL(cobra_linear, CPU, m) {
  m.impl("linear_bf16", &cobra_linear::linear_bf16);
  m.impl("linear", &cobra_linear::linear);
}
