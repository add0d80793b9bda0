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
// SIMD without -march: the kernels are compiled three times from the same header (cpu_variants.h), for the baseline
// ISA (4 lanes: SSE2 or NEON), for AVX2+FMA (8 lanes) and for AVX-512 F + BW (16 lanes), each under `#pragma GCC
// target`, and the one for the ISA in use (cpu_isa.h) is chosen at run time. A cached build therefore runs on any x86-64 (other architectures
// and non-GCC compilers get the baseline copy only).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_isa.h"

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

#define COBRA_CPU_KERNELS "selective_scan_cpu_kernels.h"
#include "cpu_variants.h"
#undef COBRA_CPU_KERNELS

// ------------------------------------------------------------------------------------------------ ISA dispatch

using cobra_cpu::Isa;

// NP (16 or 32) fp32 lanes per state = NV vectors of the ISA's width (16, 8 or 4 lanes); L = 1 (decoding) takes the
// one-step kernel, which vectorises over channels instead of time steps.
template <typename T>
FwdFn<T> pick_forward(int64_t NP, int64_t L) {
  const bool wide = NP == 32, step = L == 1;
  switch (cobra_cpu::current_isa()) {
#if COBRA_CPU_MULTI_ISA
    case Isa::kAvx512Bf16:
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
  switch (cobra_cpu::current_isa()) {
#if COBRA_CPU_MULTI_ISA
    case Isa::kAvx512Bf16:
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

}  // namespace
}  // namespace cobra_scan

TORCH_LIBRARY(cobra_scan, m) {
  m.def(
      "selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, Tensor z, "
      "Tensor delta_bias, Tensor ssm_state) -> (Tensor, Tensor)");
  m.def(
      "selective_scan_bwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor D, Tensor z, "
      "Tensor delta_bias, Tensor ssm_state, Tensor grad_y, Tensor grad_state) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(cobra_scan, CPU, m) {
  m.impl("selective_scan_fwd", &cobra_scan::selective_scan_fwd);
  m.impl("selective_scan_bwd", &cobra_scan::selective_scan_bwd);
}
