// Projections for CPU inference, registered as torch.ops.cobra_linear.linear: y[M, N] = x[M, K] @ w[N, K]^T with
// weights stored in x's dtype, in bf16, or in int8 with one bf16 scale per group of kQ8Group weights of a row
// (weight-only quantisation).
//
// Decoding one token reads every weight once, so its speed is set by how fast the weights stream from memory; for
// up to kMaxRows input rows (sequences decoded together) the kernels here stream each weight row once for all rows:
//   - bf16 x and bf16 w on AVX-512 BF16: vdpbf16ps (pairs of bf16 products accumulated in fp32), one rounding to bf16,
//     as torch's bf16 product;
//   - otherwise bf16 or int8 w with fp32 arithmetic (linear_cpu_kernels.h: AVX-512, AVX2+FMA or the baseline vector
//     width, by the ISA in use), x converted to fp32 first and the result rounded to x's dtype once.
// Longer inputs (prefill, vision) with weights stored in another dtype than x convert kBlockBytes of weight rows at a
// time to x's dtype and multiply them with torch's matmul: the arithmetic is the matmul's (fast fp32 where bf16
// matmul is slow), the weights stay stored at half or a quarter of fp32's bytes.
// Rows of w are split over threads with at::parallel_for.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>

#include "cpu_isa.h"

#if COBRA_CPU_MULTI_ISA
#include <immintrin.h>
#endif

namespace cobra_linear {
namespace {

constexpr int64_t kMaxRows = 8;  // input rows (sequences decoded at once) handled by the matrix-vector kernels
// How far ahead of its loads a thread asks for weights (into L2). The cores' own prefetchers stop at 4 KB page
// boundaries; asking 16 KB ahead kept the stream of a decode step's matrices at 33 GB/s against 29 without (2 threads,
// AVX-512 BF16 EPYC; 4 and 8 KB gave 31-32, 32 KB the same as 16).
constexpr int64_t kPrefetchBytes = 16384;
// Weight rows converted to the compute dtype at a time for longer inputs: a few MB, so the block stays in cache.
constexpr int64_t kBlockBytes = 4 << 20;

using cobra_cpu::Isa;

#if COBRA_CPU_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512bf16")
namespace bf16dot {

// Output columns [n0, n1) for M bf16 input rows: two weight rows at a time, 32 bf16 (one cache line) per load.
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

}  // namespace bf16dot
#pragma GCC pop_options
#endif

#define COBRA_CPU_KERNELS "linear_cpu_kernels.h"
#include "cpu_variants.h"
#undef COBRA_CPU_KERNELS

#if COBRA_CPU_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")
// The int8 kernels' multiply-add pairs in one instruction (vpdpwssd), on 256-bit vectors: widening 32 int8 weights
// to a 512-bit vector is the slower step (AMD Zen 5, from L2: 45 GB/s of weights at 512 bits, 53 at 256).
namespace avx512vnni {
#define COBRA_CPU_LANES 8
#define COBRA_LINEAR_VNNI 1
#include "cpu_vector.h"
#include "linear_cpu_kernels.h"
#undef COBRA_LINEAR_VNNI
#undef COBRA_CPU_LANES
}  // namespace avx512vnni
#pragma GCC pop_options
#endif

using Bf16Fn = void (*)(const float*, const uint16_t*, float*, int64_t, int64_t, int64_t, int64_t);
using Int8Fn = void (*)(const int16_t*, const float*, const int8_t*, const uint16_t*, float*, int64_t, int64_t,
                        int64_t, int64_t);

// Weight rows per pass R and partial sums S for M input rows: each weight vector serves R x M products, and the
// S x R x M sums (<= 8: 16 vector registers on AVX2 and the baseline, 32 on AVX-512) hide the multiply-add latency.
// int8: R8 rows per pass, each with an int32 and an fp32 sum per input row: two rows only up to M = 2, so that the
// 2 * R8 * M sums fit AVX2's registers (<= 8) up to M = 4.
template <int M>
struct Shape {
  static constexpr int R = M <= 4 ? 2 : 1, S = M <= 2 ? 2 : 1, R512 = 2, R8 = M <= 2 ? 2 : 1;
};

template <int M>
std::pair<Bf16Fn, Int8Fn> pick_columns() {
  using Sh = Shape<M>;
  switch (cobra_cpu::current_isa()) {
#if COBRA_CPU_MULTI_ISA
    case Isa::kAvx512Bf16:
      return {avx512::columns_bf16<M, Sh::R512, Sh::S>, avx512vnni::columns_int8<M, Sh::R8>};
    case Isa::kAvx512:
      return {avx512::columns_bf16<M, Sh::R512, Sh::S>, avx512::columns_int8<M, Sh::R8>};
    case Isa::kAvx2:
      return {avx2::columns_bf16<M, Sh::R, Sh::S>, avx2::columns_int8<M, Sh::R8>};
#endif
    default:
      return {base::columns_bf16<M, Sh::R, Sh::S>, base::columns_int8<M, Sh::R8>};
  }
}

std::pair<Bf16Fn, Int8Fn> pick_columns(int64_t M) {
  switch (M) {
    case 1: return pick_columns<1>();
    case 2: return pick_columns<2>();
    case 3: return pick_columns<3>();
    case 4: return pick_columns<4>();
    case 5: return pick_columns<5>();
    case 6: return pick_columns<6>();
    case 7: return pick_columns<7>();
    default: return pick_columns<8>();
  }
}

// bf16 x [M, K], bf16 w [N, K] (contiguous) -> fp32 y [M, N], on AVX-512 BF16.
at::Tensor linear_bf16dot(const at::Tensor& x, const at::Tensor& w) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
#if COBRA_CPU_MULTI_ISA
  using Fn = void (*)(const uint16_t*, const uint16_t*, float*, int64_t, int64_t, int64_t, int64_t);
  constexpr Fn kColumns[kMaxRows] = {bf16dot::columns<1>, bf16dot::columns<2>, bf16dot::columns<3>,
                                     bf16dot::columns<4>, bf16dot::columns<5>, bf16dot::columns<6>,
                                     bf16dot::columns<7>, bf16dot::columns<8>};
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr());
  float* yp = y.data_ptr<float>();
  const Fn fn = kColumns[M - 1];
  at::parallel_for(0, (N + 1) / 2, 64, [&](int64_t begin, int64_t end) {
    fn(xp, wp, yp, N, K, 2 * begin, std::min(2 * end, N));
  });
#endif
  return y;
}

// fp32 x [M, K], bf16 w [N, K] (both contiguous) -> fp32 y [M, N].
at::Tensor linear_bf16_weights(const at::Tensor& x, const at::Tensor& w) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr());
  float* yp = y.data_ptr<float>();
  const Bf16Fn fn = pick_columns(M).first;
  at::parallel_for(0, (N + 1) / 2, 64, [&](int64_t begin, int64_t end) {  // pairs of rows: whole passes for R <= 2
    fn(xp, wp, yp, N, K, 2 * begin, std::min(2 * end, N));
  });
  return y;
}

// x [K] (fp32, bf16 or fp16: values taken exactly as fp32) -> q [K] int16 with x ~ q * step, step = max|x| / 32767
// (1 for a zero row); returns step. Plain loops the compiler vectorizes; the rounding adds 1.5 * 2^23 (round to
// nearest even for |v| <= 2^22).
template <typename T>
float quantize_row(const T* x, int16_t* q, int64_t K) {
  float peak = 0.f;
  for (int64_t k = 0; k < K; ++k) {
    const float magnitude = std::fabs(static_cast<float>(x[k]));
    peak = magnitude > peak ? magnitude : peak;  // a max reduction the compiler vectorizes (NaN never wins)
  }
  const float step = peak > 0.f ? peak / 32767.f : 1.f, inverse = 1.f / step;
  for (int64_t k = 0; k < K; ++k) {
    const float rounded = (static_cast<float>(x[k]) * inverse + 12582912.f) - 12582912.f;
    q[k] = static_cast<int16_t>(static_cast<int32_t>(std::max(-32767.f, std::min(32767.f, rounded))));
  }
  return step;
}

// x [M, K] (fp32, bf16 or fp16), int8 w [N, K] (both contiguous), bf16 scale [N, ceil(K / kQ8Group)] -> fp32
// y [M, N]. Each input row is rounded to int16 steps of max|x_m| / 32767 first (error <= 2^-16 of its largest
// value: ~250x below the weights' own rounding).
at::Tensor linear_int8_weights(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor xq = at::empty({M, K}, x.options().dtype(at::kShort));
  at::Tensor x_scale = at::empty({M}, x.options().dtype(at::kFloat));
  int16_t* qp = xq.data_ptr<int16_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "quantize_rows", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    for (int64_t m = 0; m < M; ++m) x_scale.data_ptr<float>()[m] = quantize_row(xp + m * K, qp + m * K, K);
  });
  at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
  const auto* wp = reinterpret_cast<const int8_t*>(w.data_ptr());
  const auto* sp = reinterpret_cast<const uint16_t*>(scale.data_ptr());
  const float* xs = x_scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const Int8Fn fn = pick_columns(M).second;
  at::parallel_for(0, (N + 1) / 2, 64, [&](int64_t begin, int64_t end) {
    fn(qp, xs, wp, sp, yp, N, K, 2 * begin, std::min(2 * end, N));
  });
  return y;
}

// w [N, K] (int8 with scale [N, ceil(K / kQ8Group)], or any float dtype) -> the weights w * scale of their group in
// `dtype` (products in fp32).
at::Tensor dequantize(const at::Tensor& w, const std::optional<at::Tensor>& scale, at::ScalarType dtype) {
  if (!scale) return w.to(dtype);
  const at::Tensor per_weight =
      scale->to(at::kFloat).repeat_interleave(base::kQ8Group, 1).narrow(1, 0, w.size(1));  // [N, K]
  return (w.to(at::kFloat) * per_weight).to(dtype);
}

// x [M, K] @ dequantize(w)^T in x's dtype, kBlockBytes of converted weights at a time.
at::Tensor linear_blocked(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& scale) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  const int64_t block = std::max<int64_t>(64, kBlockBytes / (K * static_cast<int64_t>(x.element_size())));
  for (int64_t n0 = 0; n0 < N; n0 += block) {
    const int64_t nb = std::min(block, N - n0);
    const std::optional<at::Tensor> s = scale ? std::optional<at::Tensor>(scale->narrow(0, n0, nb)) : std::nullopt;
    at::Tensor out = y.narrow(1, n0, nb);
    at::mm_out(out, x, dequantize(w.narrow(0, n0, nb), s, x.scalar_type()).t());
  }
  return y;
}

// x [M, K] (fp32, bf16 or fp16), w [N, K] (x's dtype, bf16, or int8 with bf16 scale [N, groups]) -> x @ w^T [M, N] in
// x's dtype. The one place that chooses a kernel; Python's `cpu_kernel.linear` and the fused decode step's
// projections both call it.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& scale) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "cobra_linear: x [M, K] and w [N, K]");
  const bool quantized = w.scalar_type() == at::kChar;
  TORCH_CHECK(quantized == scale.has_value(), "cobra_linear: int8 weights need their scales, and only they");
  if (quantized) {
    const int64_t groups = (w.size(1) + base::kQ8Group - 1) / base::kQ8Group;
    TORCH_CHECK(scale->dim() == 2 && scale->size(0) == w.size(0) && scale->size(1) == groups &&
                    scale->scalar_type() == at::kBFloat16,
                "cobra_linear: scale must be bf16 [N, ceil(K / ", base::kQ8Group, ")]");
  }
  const at::ScalarType xt = x.scalar_type(), wt = w.scalar_type();
  const int64_t M = x.size(0);
  if (M >= 1 && M <= kMaxRows && at::isFloatingType(xt) && xt != at::kDouble) {
    if (xt == at::kBFloat16 && wt == at::kBFloat16 && cobra_cpu::current_isa() >= Isa::kAvx512Bf16) {
      return linear_bf16dot(x.contiguous(), w.contiguous()).to(xt);
    }
    if (wt == at::kBFloat16 || quantized) {
      const at::Tensor wc = w.contiguous();
      at::Tensor y = quantized ? linear_int8_weights(x.contiguous(), wc, scale->contiguous())
                               : linear_bf16_weights(x.to(at::kFloat).contiguous(), wc);
      return y.to(xt);
    }
  }
  if (!quantized && wt == xt) return at::linear(x, w);
  return linear_blocked(x, w, scale);
}

}  // namespace
}  // namespace cobra_linear

TORCH_LIBRARY(cobra_linear, m) { m.def("linear(Tensor x, Tensor w, Tensor? scale=None) -> Tensor"); }

TORCH_LIBRARY_IMPL(cobra_linear, CPU, m) { m.impl("linear", &cobra_linear::linear); }
