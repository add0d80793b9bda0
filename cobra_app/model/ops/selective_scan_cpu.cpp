// Mamba-1 selective scan on CPU: forward and backward, fp32 math, registered as torch.ops.cobra_scan.*.
//
// Semantics are those of cobra_app/model/ops/torch_ops.py::selective_scan:
//     dt_t = softplus(delta_t + delta_bias)            (torch's softplus: x > 20 -> x)
//     s_t  = exp(dt_t * A) * s_{t-1} + dt_t * u_t * B_t
//     y_t  = (C_t . s_t + D * u_t) * silu(z_t)
// Shapes: u, delta, z [B, D, L] (any strides); A [D, N]; B, C [B, N, L]; D, delta_bias [D]; ssm_state [B, D, N].
//
// Layout: every (batch, channel) pair is an independent recurrence. Work is split over channels with
// at::parallel_for; a channel's time series is copied into small fp32 buffers, the per-step scalars (softplus, silu)
// are computed for all t at once with vector code, then one sequential pass over t keeps the state s[N] in vector
// registers and produces y_t on the fly (selective_scan_cpu_kernels.h). B and C are re-laid out here as [B, L, NP]
// (NP = N padded to 16 or 32, pad lanes zero, A padded with 0) so that each step loads whole vectors; the pad lanes
// of the state stay exactly 0.
//
// SIMD without -march: the kernels are compiled three times from the same header, for the baseline ISA (4 lanes:
// SSE2 or NEON), for AVX2+FMA (8 lanes) and for AVX-512F (16 lanes), each under `#pragma GCC target`, and the best
// one the CPU supports is chosen at run time. A cached build therefore runs on any x86-64 (other architectures and
// non-GCC compilers get the baseline copy only).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__)
#define COBRA_SCAN_MULTI_ISA 1
#else
#define COBRA_SCAN_MULTI_ISA 0
#endif

namespace cobra_scan {
namespace {  // internal linkage: nothing here can clash with another build of this library

// A [B, D, L] tensor seen as raw pointer + strides.
template <typename T>
struct Series {
  const T* data;
  int64_t sb, sd, sl;
  inline const T* at(int64_t b, int64_t d) const { return data + b * sb + d * sd; }
};

template <typename T>
struct FwdArgs {
  Series<T> u, delta, z;  // [B, D, L]
  const float* A;         // [D, NP]
  const float* Bp;        // [B, L, NP]
  const float* Cp;        // [B, L, NP]
  const float* Dv;        // [D]
  const float* bias;      // [D]
  const float* s0;        // [B, D, N]
  T* y;                   // [B, D, L] contiguous
  float* s_out;           // [B, D, N]
  int64_t Dn, L, N;
};

// Backward work is split into tasks of (batch, block of channels). gB/gC sums over channels go to per-task
// partial buffers, gA/gD/gbias to per-(batch, channel) ones; all are reduced afterwards in a fixed order, so
// results do not depend on the thread count.
struct BwdArgs {
  Series<float> u, delta, z, gy;  // [B, D, L]
  const float* A;                 // [D, NP]
  const float* Bp;                // [B, L, NP]
  const float* Cp;                // [B, L, NP]
  const float* Dv;                // [D]
  const float* bias;              // [D]
  const float* s0;                // [B, D, N]
  const float* gs;                // [B, D, N] grad of the last state
  float *gu, *gdelta, *gz;        // [B, D, L] contiguous
  float* gs0;                     // [B, D, N]
  float* gA_part;                 // [B, D, NP]
  float *gD_part, *gbias_part;    // [B, D]
  float *gB_part, *gC_part;       // [B * n_blocks, L, NP]
  int64_t Dn, L, N, n_blocks, block;
};

template <typename T>
using FwdFn = void (*)(const FwdArgs<T>&, int64_t, int64_t);
using BwdFn = void (*)(const BwdArgs&, int64_t, int64_t);

namespace base {  // SSE2 / NEON width
#define COBRA_SCAN_LANES 4
#include "selective_scan_cpu_kernels.h"
#undef COBRA_SCAN_LANES
}  // namespace base

#if COBRA_SCAN_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#define COBRA_SCAN_LANES 8
#include "selective_scan_cpu_kernels.h"
#undef COBRA_SCAN_LANES
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
namespace avx512 {
#define COBRA_SCAN_LANES 16
#include "selective_scan_cpu_kernels.h"
#undef COBRA_SCAN_LANES
}  // namespace avx512
#pragma GCC pop_options
#endif

// ------------------------------------------------------------------------------------------------ ISA dispatch

enum class Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

Isa best_isa() {
#if COBRA_SCAN_MULTI_ISA
  static const Isa isa = __builtin_cpu_supports("avx512f")                                        ? Isa::kAvx512
                         : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? Isa::kAvx2
                                                                                           : Isa::kBase;
  return isa;
#else
  return Isa::kBase;
#endif
}

std::atomic<int> isa_cap{static_cast<int>(Isa::kAvx512)};  // test hook: the best ISA allowed

Isa current_isa() { return static_cast<Isa>(std::min(static_cast<int>(best_isa()), isa_cap.load())); }

const char* isa_name(Isa isa) { return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "baseline"; }

// NP (16 or 32) fp32 lanes per state = NV vectors of the ISA's width (16, 8 or 4 lanes); L = 1 (decoding) takes the
// one-step kernel, which vectorises over channels instead of time steps.
template <typename T>
FwdFn<T> pick_forward(int64_t NP, int64_t L) {
  const bool wide = NP == 32, step = L == 1;
  switch (current_isa()) {
#if COBRA_SCAN_MULTI_ISA
    case Isa::kAvx512:
      return step ? (wide ? avx512::step_channels<T, 2> : avx512::step_channels<T, 1>)
                  : (wide ? avx512::forward_channels<T, 2> : avx512::forward_channels<T, 1>);
    case Isa::kAvx2:
      return step ? (wide ? avx2::step_channels<T, 4> : avx2::step_channels<T, 2>)
                  : (wide ? avx2::forward_channels<T, 4> : avx2::forward_channels<T, 2>);
#endif
    default:
      return step ? (wide ? base::step_channels<T, 8> : base::step_channels<T, 4>)
                  : (wide ? base::forward_channels<T, 8> : base::forward_channels<T, 4>);
  }
}

BwdFn pick_backward(int64_t NP) {
  const bool wide = NP == 32;
  switch (current_isa()) {
#if COBRA_SCAN_MULTI_ISA
    case Isa::kAvx512:
      return wide ? avx512::backward_tasks<2> : avx512::backward_tasks<1>;
    case Isa::kAvx2:
      return wide ? avx2::backward_tasks<4> : avx2::backward_tasks<2>;
#endif
    default:
      return wide ? base::backward_tasks<8> : base::backward_tasks<4>;
  }
}

// ------------------------------------------------------------------------------------------------ operators

constexpr int64_t kMaxState = 32;
constexpr int64_t kBwdBlock = 128;  // channels per backward task (fixed: results independent of thread count)

// State lanes after padding: a multiple of every ISA's vector width.
int64_t padded_state(int64_t N) { return N <= 16 ? 16 : 32; }

template <typename T>
Series<T> series(const at::Tensor& x) {
  return {x.data_ptr<T>(), x.stride(0), x.stride(1), x.stride(2)};
}

// x [..., N] -> contiguous fp32 [..., NP] with zero padding. Where N already is NP (Mamba's N = 16) only the
// conversion that is needed: the kernels only read it, so fp32 A [D, 16] is used as it is, not copied every step.
at::Tensor pad_last(const at::Tensor& x, int64_t NP) {
  if (x.size(-1) == NP) return x.to(at::kFloat).contiguous();
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = NP;
  at::Tensor out = at::zeros(sizes, x.options().dtype(at::kFloat));
  out.narrow(-1, 0, x.size(-1)).copy_(x);
  return out;
}

struct Prepared {
  int64_t Bsz, Dn, L, N, NP;
  at::Tensor A, Bp, Cp, Dv, bias, s0;
};

Prepared prepare(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                 const at::Tensor& C, const at::Tensor& D, const at::Tensor& z, const at::Tensor& delta_bias,
                 const at::Tensor& ssm_state) {
  for (const at::Tensor* t : {&u, &delta, &A, &B, &C, &D, &z, &delta_bias, &ssm_state}) {
    TORCH_CHECK(t->device().is_cpu(), "cobra_scan: all tensors must be on the CPU");
  }
  TORCH_CHECK(u.dim() == 3, "u must be [B, D, L]");
  const int64_t Bsz = u.size(0), Dn = u.size(1), L = u.size(2), N = A.size(-1);
  TORCH_CHECK(delta.sizes() == u.sizes() && z.sizes() == u.sizes(), "delta and z must match u [B, D, L]");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == Dn, "A must be [D, N]");
  TORCH_CHECK(N >= 1 && N <= kMaxState, "d_state must be in [1, ", kMaxState, "], got ", N);
  TORCH_CHECK(B.dim() == 3 && B.size(0) == Bsz && B.size(1) == N && B.size(2) == L, "B must be [B, N, L]");
  TORCH_CHECK(C.sizes() == B.sizes(), "C must be [B, N, L]");
  TORCH_CHECK(D.numel() == Dn && delta_bias.numel() == Dn, "D and delta_bias must be [D]");
  TORCH_CHECK(ssm_state.dim() == 3 && ssm_state.size(0) == Bsz && ssm_state.size(1) == Dn && ssm_state.size(2) == N,
              "ssm_state must be [B, D, N]");
  const int64_t NP = padded_state(N);
  return {Bsz,
          Dn,
          L,
          N,
          NP,
          pad_last(A, NP),
          pad_last(B.transpose(1, 2), NP),
          pad_last(C.transpose(1, 2), NP),
          D.to(at::kFloat).contiguous(),
          delta_bias.to(at::kFloat).contiguous(),
          ssm_state.to(at::kFloat).contiguous()};
}

template <typename T>
void run_forward(const Prepared& p, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& z, at::Tensor& y,
                 at::Tensor& s_out) {
  const FwdArgs<T> args{series<T>(u),         series<T>(delta),     series<T>(z),
                        p.A.data_ptr<float>(),  p.Bp.data_ptr<float>(), p.Cp.data_ptr<float>(),
                        p.Dv.data_ptr<float>(), p.bias.data_ptr<float>(), p.s0.data_ptr<float>(),
                        y.data_ptr<T>(),        s_out.data_ptr<float>(), p.Dn,
                        p.L,                    p.N};
  const FwdFn<T> fn = pick_forward<T>(p.NP, p.L);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, p.L * p.NP));  // ~32k state updates
  at::parallel_for(0, p.Bsz * p.Dn, grain, [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

// (y [B, D, L] in u's dtype, last state [B, D, N] fp32).
std::tuple<at::Tensor, at::Tensor> selective_scan_fwd(const at::Tensor& u, const at::Tensor& delta,
                                                      const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                                      const at::Tensor& D, const at::Tensor& z,
                                                      const at::Tensor& delta_bias, const at::Tensor& ssm_state) {
  const Prepared p = prepare(u, delta, A, B, C, D, z, delta_bias, ssm_state);
  const at::ScalarType st = u.scalar_type();
  at::Tensor s_out = at::empty({p.Bsz, p.Dn, p.N}, u.options().dtype(at::kFloat));
  const bool same = delta.scalar_type() == st && z.scalar_type() == st;
  if (same && st == at::kBFloat16) {
    at::Tensor y = at::empty({p.Bsz, p.Dn, p.L}, u.options());
    run_forward<c10::BFloat16>(p, u, delta, z, y, s_out);
    return {y, s_out};
  }
  if (same && st == at::kHalf) {
    at::Tensor y = at::empty({p.Bsz, p.Dn, p.L}, u.options());
    run_forward<c10::Half>(p, u, delta, z, y, s_out);
    return {y, s_out};
  }
  at::Tensor y = at::empty({p.Bsz, p.Dn, p.L}, u.options().dtype(at::kFloat));
  run_forward<float>(p, u.to(at::kFloat), delta.to(at::kFloat), z.to(at::kFloat), y, s_out);
  return {y.to(st), s_out};
}

// Gradients, all fp32: (gu, gdelta, gA, gB, gC, gD, gz, gdelta_bias, gssm_state) shaped like the inputs.
std::vector<at::Tensor> selective_scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                           const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                           const at::Tensor& z, const at::Tensor& delta_bias,
                                           const at::Tensor& ssm_state, const at::Tensor& grad_y,
                                           const at::Tensor& grad_state) {
  const Prepared p = prepare(u, delta, A, B, C, D, z, delta_bias, ssm_state);
  TORCH_CHECK(grad_y.sizes() == u.sizes(), "grad_y must be [B, D, L]");
  TORCH_CHECK(grad_state.sizes() == ssm_state.sizes(), "grad_state must be [B, D, N]");
  const int64_t Bsz = p.Bsz, Dn = p.Dn, L = p.L, N = p.N, NP = p.NP;
  const int64_t n_blocks = (Dn + kBwdBlock - 1) / kBwdBlock;
  const auto f32 = u.options().dtype(at::kFloat);
  const at::Tensor u32 = u.to(at::kFloat), delta32 = delta.to(at::kFloat), z32 = z.to(at::kFloat);
  const at::Tensor gy32 = grad_y.to(at::kFloat), gs32 = grad_state.to(at::kFloat).contiguous();
  at::Tensor gu = at::empty({Bsz, Dn, L}, f32), gdelta = at::empty_like(gu), gz = at::empty_like(gu);
  at::Tensor gs0 = at::empty({Bsz, Dn, N}, f32);
  at::Tensor gA_part = at::empty({Bsz, Dn, NP}, f32);
  at::Tensor gD_part = at::empty({Bsz, Dn}, f32), gbias_part = at::empty({Bsz, Dn}, f32);
  at::Tensor gB_part = at::zeros({Bsz, n_blocks, L, NP}, f32), gC_part = at::zeros({Bsz, n_blocks, L, NP}, f32);
  const BwdArgs args{series<float>(u32),         series<float>(delta32),     series<float>(z32),
                     series<float>(gy32),        p.A.data_ptr<float>(),      p.Bp.data_ptr<float>(),
                     p.Cp.data_ptr<float>(),     p.Dv.data_ptr<float>(),     p.bias.data_ptr<float>(),
                     p.s0.data_ptr<float>(),     gs32.data_ptr<float>(),     gu.data_ptr<float>(),
                     gdelta.data_ptr<float>(),   gz.data_ptr<float>(),       gs0.data_ptr<float>(),
                     gA_part.data_ptr<float>(),  gD_part.data_ptr<float>(),  gbias_part.data_ptr<float>(),
                     gB_part.data_ptr<float>(),  gC_part.data_ptr<float>(),  Dn,
                     L,                          N,                          n_blocks,
                     kBwdBlock};
  const BwdFn fn = pick_backward(NP);
  at::parallel_for(0, Bsz * n_blocks, 1, [&](int64_t begin, int64_t end) { fn(args, begin, end); });
  // Fixed-order reductions of the partials.
  at::Tensor gA = gA_part.sum(0).narrow(-1, 0, N).contiguous();
  at::Tensor gB = gB_part.sum(1).narrow(-1, 0, N).transpose(1, 2).contiguous();
  at::Tensor gC = gC_part.sum(1).narrow(-1, 0, N).transpose(1, 2).contiguous();
  return {gu, gdelta, gA, gB, gC, gD_part.sum(0), gz, gbias_part.sum(0), gs0};
}

// The decode projections exactly as `cpu_kernel.linear` computes them: torch.ops.cobra_linear.linear, which chooses
// between the bf16 matrix-vector kernel and at::linear (linear_cpu.cpp).
at::Tensor project(const at::Tensor& x, const at::Tensor& w) {
  static const auto linear = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("cobra_linear::linear", "")
                                 .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return linear.call(x, w);
}

// One decoding step of a Mamba mixer between its in_proj and out_proj, fused into one call: the same operations,
// in the same order and precision, as the unfused path (torch_ops.causal_conv1d for one token, the x_proj and dt_proj
// projections as `project`, then selective_scan_fwd), without a Python dispatch per operation.
// xz [M, 2D] (in_proj output, x then z); conv_state [M, D, K]; conv_w [D, K]; conv_b, dt_bias, Dv [D]; x_proj_w
// [R + 2N, D]; dt_proj_w [D, R]; A [D, N] fp32; ssm_state [M, D, N] fp32.
// Returns (y [M, D] in xz's dtype, new conv_state [M, D, K], new ssm_state [M, D, N] fp32).
std::tuple<at::Tensor, at::Tensor, at::Tensor> mixer_step(const at::Tensor& xz, const at::Tensor& conv_state,
                                                          const at::Tensor& conv_w, const at::Tensor& conv_b,
                                                          const at::Tensor& x_proj_w, const at::Tensor& dt_proj_w,
                                                          const at::Tensor& dt_bias, const at::Tensor& A,
                                                          const at::Tensor& Dv, const at::Tensor& ssm_state) {
  const int64_t D = conv_w.size(0), K = conv_w.size(1), N = A.size(1), R = dt_proj_w.size(1);
  TORCH_CHECK(xz.dim() == 2 && xz.size(1) == 2 * D, "mixer_step: xz must be [M, 2D]");
  TORCH_CHECK(x_proj_w.size(0) == R + 2 * N && x_proj_w.size(1) == D, "mixer_step: x_proj_w must be [R + 2N, D]");
  const at::ScalarType st = xz.scalar_type();
  const int64_t M = xz.size(0);
  const at::Tensor z = xz.narrow(1, D, D).unsqueeze(-1);  // [M, D, 1]
  // causal conv over the last K inputs, + bias (torch_ops.causal_conv1d, L = 1) in one pass over the channels: the
  // new conv state (the last K inputs, in xz's dtype) and the fp32 pre-activation, whose products are summed in
  // ATen's order for a K-term row (k = 0, 1, ..., K - 1, from 0; checked bit for bit at K = 4 by the tests)
  const at::Tensor state = conv_state.to(st).contiguous(), w = conv_w.to(at::kFloat).contiguous();
  const at::Tensor b = conv_b.to(at::kFloat).contiguous(), xs = xz.contiguous();
  at::Tensor window = at::empty({M, D, K}, xz.options());        // [M, D, K]: the new conv state
  at::Tensor conv = at::empty({M, D, 1}, xz.options().dtype(at::kFloat));  // [M, D, 1]
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st, "mixer_step_conv", [&] {
    const scalar_t* old_window = state.data_ptr<scalar_t>();
    const scalar_t* x = xs.data_ptr<scalar_t>();  // row m: x at [m * 2D, m * 2D + D)
    const float* wp = w.data_ptr<float>();
    const float* bp = b.data_ptr<float>();
    scalar_t* out = window.data_ptr<scalar_t>();
    float* cp = conv.data_ptr<float>();
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t d = 0; d < D; ++d) {
        const scalar_t* src = old_window + (m * D + d) * K;
        scalar_t* dst = out + (m * D + d) * K;
        for (int64_t k = 0; k + 1 < K; ++k) dst[k] = src[k + 1];
        dst[K - 1] = x[m * 2 * D + d];
        float acc = 0.f;
        for (int64_t k = 0; k < K; ++k) {
          // rounded to fp32 before the add, as ATen's multiply (this file's baseline code has no FMA to fuse them)
          const float product = static_cast<float>(dst[k]) * wp[d * K + k];
          acc += product;
        }
        cp[m * D + d] = acc + bp[d];
      }
    }
  });
  const at::Tensor u = at::silu(conv).to(st);  // [M, D, 1]
  const at::Tensor x_dbl = project(u.squeeze(-1), x_proj_w);   // [M, R + 2N]
  const at::Tensor delta = project(x_dbl.narrow(1, 0, R), dt_proj_w).unsqueeze(-1);  // [M, D, 1]
  const at::Tensor B = x_dbl.narrow(1, R, N).unsqueeze(-1), C = x_dbl.narrow(1, R + N, N).unsqueeze(-1);  // [M, N, 1]
  auto [y, s] = selective_scan_fwd(u, delta, A, B, C, Dv, z, dt_bias, ssm_state);
  return {y.squeeze(-1), window.contiguous(), s};
}

// The kernel variant in use: "avx512", "avx2" or "baseline".
std::string isa() { return isa_name(current_isa()); }

// Test hook: use at most `cap` ("avx512", "avx2", "baseline") even where the CPU has more. Returns the ISA in use.
std::string cap_isa(const std::string& cap) {
  TORCH_CHECK(cap == "avx512" || cap == "avx2" || cap == "baseline", "unknown ISA ", cap);
  isa_cap.store(static_cast<int>(cap == "avx512" ? Isa::kAvx512 : cap == "avx2" ? Isa::kAvx2 : Isa::kBase));
  return isa();
}

}  // namespace
}  // namespace cobra_scan

TORCH_LIBRARY(cobra_scan, m) {
  m.def(
      "selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, Tensor z, "
      "Tensor delta_bias, Tensor ssm_state) -> (Tensor, Tensor)");
  m.def(
      "selective_scan_bwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, Tensor z, "
      "Tensor delta_bias, Tensor ssm_state, Tensor grad_y, Tensor grad_state) -> Tensor[]");
  m.def(
      "mixer_step(Tensor xz, Tensor conv_state, Tensor conv_w, Tensor conv_b, Tensor x_proj_w, Tensor dt_proj_w, "
      "Tensor dt_bias, Tensor A, Tensor D, Tensor ssm_state) -> (Tensor, Tensor, Tensor)");
  m.def("isa() -> str", &cobra_scan::isa);
  m.def("cap_isa(str cap) -> str", &cobra_scan::cap_isa);
}

TORCH_LIBRARY_IMPL(cobra_scan, CPU, m) {
  m.impl("selective_scan_fwd", &cobra_scan::selective_scan_fwd);
  m.impl("selective_scan_bwd", &cobra_scan::selective_scan_bwd);
  m.impl("mixer_step", &cobra_scan::mixer_step);
}
