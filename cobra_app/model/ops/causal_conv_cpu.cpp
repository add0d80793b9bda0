// Mamba's depthwise causal conv1d + SiLU on CPU, continuing from a conv state: forward and backward, fp32 math,
// registered as torch.ops.cobra_conv.*.
//
// Semantics are those of cobra_app/model/ops/torch_ops.py::causal_conv1d (x [B, D, L], weight [D, K], bias [D],
// conv_state [B, D, K] the last K inputs before x):
//     h     = [conv_state, x]                                   [B, D, K + L]
//     y_t   = silu(bias + sum_i weight_i * h_{t + 1 + i})        t < L, i < K (y_t sees x_{t-K+1} .. x_t)
//     state = h[L : L + K]                                      the last K inputs
// Why a kernel: the PyTorch form is K shifted multiply-adds, each a few [B, D, L] temporaries forward and backward;
// for a training step's short chunks (L ~ 8) those small ops cost more than the scan (docs/DEMO_MODEL.md, session 26).
//
// Every channel is independent: work is split over channels (at::parallel_for), and a channel's weight and bias
// gradients are summed over batch rows then time in one fixed order, so results do not depend on the thread count.
// The convolution is plain loops (K is 4: a few multiply-adds per element); the SiLU and its derivative are ATen's
// vectorised silu / silu_backward on the pre-activations (recomputed in the backward: only the inputs are saved).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

struct ConvShapes {
  int64_t Bsz, Dn, L, K;
};

ConvShapes check_inputs(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& conv_state) {
  for (const Tensor* t : {&x, &weight, &bias, &conv_state}) {
    TORCH_CHECK(t->device().is_cpu(), "cobra_conv: all tensors must be on the CPU");
    TORCH_CHECK(t->scalar_type() == at::kFloat, "cobra_conv: all tensors must be float32");
  }
  TORCH_CHECK(x.dim() == 3 && x.size(2) >= 1, "x must be [B, D, L] with L >= 1");
  const int64_t Bsz = x.size(0), Dn = x.size(1), L = x.size(2);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == Dn && weight.size(1) >= 1, "weight must be [D, K]");
  const int64_t K = weight.size(1);
  TORCH_CHECK(bias.numel() == Dn, "bias must be [D]");
  TORCH_CHECK(conv_state.dim() == 3 && conv_state.size(0) == Bsz && conv_state.size(1) == Dn &&
                  conv_state.size(2) == K,
              "conv_state must be [B, D, K]");
  return {Bsz, Dn, L, K};
}

// h [K + L] <- [state row, x row] of one (batch row, channel).
inline void load_history(const float* state, const float* x, int64_t K, int64_t L, float* h) {
  for (int64_t k = 0; k < K; ++k) h[k] = state[k];
  for (int64_t t = 0; t < L; ++t) h[K + t] = x[t];
}

// The inputs, contiguous (x [B, D, L], weight [D, K], bias [D], conv_state [B, D, K]).
struct ConvInputs {
  Tensor x, weight, bias, state;
  ConvInputs(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& conv_state)
      : x(x.contiguous()), weight(weight.contiguous()), bias(bias.contiguous()), state(conv_state.contiguous()) {}
};

// pre [B, D, L] = bias + sum_i w_i * h_{t+1+i} (summed in i order, as the PyTorch form); with `new_state`, also the
// last K inputs [B, D, K]. The SiLU is left to ATen's vectorised silu / silu_backward.
Tensor pre_activations(const ConvInputs& in, int64_t K, Tensor* new_state) {
  const int64_t Bsz = in.x.size(0), Dn = in.x.size(1), L = in.x.size(2);
  Tensor pre = at::empty({Bsz, Dn, L}, in.x.options());
  const float *xp = in.x.data_ptr<float>(), *wp = in.weight.data_ptr<float>(), *bp = in.bias.data_ptr<float>(),
              *sp = in.state.data_ptr<float>();
  float* pp = pre.data_ptr<float>();
  float* np = new_state ? new_state->data_ptr<float>() : nullptr;
  at::parallel_for(0, Bsz * Dn, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> h(K + L);
    for (int64_t row = begin; row < end; ++row) {  // row = b * D + d
      const float* w = wp + (row % Dn) * K;
      load_history(sp + row * K, xp + row * L, K, L, h.data());
      for (int64_t t = 0; t < L; ++t) {
        float acc = 0.0f;
        for (int64_t i = 0; i < K; ++i) acc += w[i] * h[t + 1 + i];
        pp[row * L + t] = bp[row % Dn] + acc;
      }
      if (np)
        for (int64_t k = 0; k < K; ++k) np[row * K + k] = h[L + k];
    }
  });
  return pre;
}

std::tuple<Tensor, Tensor> causal_conv1d_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                             const Tensor& conv_state) {
  const auto [Bsz, Dn, L, K] = check_inputs(x, weight, bias, conv_state);
  Tensor new_state = at::empty({Bsz, Dn, K}, x.options());
  return {at::silu(pre_activations(ConvInputs(x, weight, bias, conv_state), K, &new_state)), new_state};
}

// Gradients of (y, state) w.r.t. (x, weight, bias, conv_state); grad_y [B, D, L], grad_state [B, D, K].
std::tuple<Tensor, Tensor, Tensor, Tensor> causal_conv1d_bwd(const Tensor& x, const Tensor& weight,
                                                             const Tensor& bias, const Tensor& conv_state,
                                                             const Tensor& grad_y, const Tensor& grad_state) {
  const auto [Bsz, Dn, L, K] = check_inputs(x, weight, bias, conv_state);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == at::kFloat, "grad_y must be float32 [B, D, L]");
  TORCH_CHECK(grad_state.sizes() == conv_state.sizes() && grad_state.scalar_type() == at::kFloat,
              "grad_state must be float32 [B, D, K]");
  const ConvInputs in(x, weight, bias, conv_state);
  const Tensor g = at::silu_backward(grad_y.contiguous(), pre_activations(in, K, nullptr));  // [B, D, L]
  const Tensor gsc = grad_state.contiguous();
  Tensor gx = at::empty_like(in.x), gstate = at::empty_like(in.state);
  Tensor gw = at::empty({Dn, K}, x.options()), gb = at::empty({Dn}, x.options());
  const float *xp = in.x.data_ptr<float>(), *wp = in.weight.data_ptr<float>(), *sp = in.state.data_ptr<float>(),
              *gp = g.data_ptr<float>(), *gsp = gsc.data_ptr<float>();
  float *gxp = gx.data_ptr<float>(), *gsop = gstate.data_ptr<float>(), *gwp = gw.data_ptr<float>(),
        *gbp = gb.data_ptr<float>();
  at::parallel_for(0, Dn, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> h(K + L), gh(K + L), gweight(K);
    for (int64_t d = begin; d < end; ++d) {
      const float* w = wp + d * K;
      float gbias = 0.0f;
      std::fill(gweight.begin(), gweight.end(), 0.0f);
      for (int64_t b = 0; b < Bsz; ++b) {  // a channel's sums run over rows then time: one fixed order
        const int64_t row = b * Dn + d;
        const float* gr = gp + row * L;
        load_history(sp + row * K, xp + row * L, K, L, h.data());
        std::fill(gh.begin(), gh.end(), 0.0f);
        for (int64_t t = 0; t < L; ++t) {
          gbias += gr[t];
          for (int64_t i = 0; i < K; ++i) {
            gweight[i] += gr[t] * h[t + 1 + i];
            gh[t + 1 + i] += w[i] * gr[t];
          }
        }
        for (int64_t k = 0; k < K; ++k) gh[L + k] += gsp[row * K + k];  // the new state is h[L : L + K]
        for (int64_t k = 0; k < K; ++k) gsop[row * K + k] = gh[k];
        for (int64_t t = 0; t < L; ++t) gxp[row * L + t] = gh[K + t];
      }
      gbp[d] = gbias;
      for (int64_t i = 0; i < K; ++i) gwp[d * K + i] = gweight[i];
    }
  });
  return {gx, gw, gb, gstate};
}

}  // namespace

TORCH_LIBRARY(cobra_conv, m) {
  m.def("causal_conv1d_fwd(Tensor x, Tensor weight, Tensor bias, Tensor conv_state) -> (Tensor, Tensor)");
  m.def(
      "causal_conv1d_bwd(Tensor x, Tensor weight, Tensor bias, Tensor conv_state, Tensor grad_y, Tensor grad_state)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(cobra_conv, CPU, m) {
  m.impl("causal_conv1d_fwd", &causal_conv1d_fwd);
  m.impl("causal_conv1d_bwd", &causal_conv1d_bwd);
}
