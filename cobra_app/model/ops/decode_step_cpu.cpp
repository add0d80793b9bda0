// One decoding step of the whole Mamba layer stack in one call, registered as torch.ops.cobra_decode.*: for every
// layer, the residual add, RMSNorm, in_proj, the mixer step (one-token conv, x_proj, dt_proj, scan step, gate) and
// out_proj, the same operations in the same order and precision as MambaLM's unfused path (so the same numbers, to
// the bit), without the Python calls of each operation (about 150 us a layer: 10 ms of a 64-layer token).
//
// The projections go through torch.ops.cobra_linear.linear and the scan through torch.ops.cobra_scan.
// selective_scan_fwd, exactly as the Python path calls them.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace cobra_decode {
namespace {

using Optional = std::optional<at::Tensor>;

constexpr int64_t kConvGrain = 2048;  // channels per thread in the one-token conv (below this, one thread does all)

// The compiled scan (selective_scan_cpu.cpp) for one step, as `cpu_kernel.selective_scan` calls it.
std::tuple<at::Tensor, at::Tensor> scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                        const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                        const at::Tensor& z, const at::Tensor& delta_bias,
                                        const at::Tensor& ssm_state) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cobra_scan::selective_scan_fwd", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&)>();
  return op.call(u, delta, A, B, C, D, z, delta_bias, ssm_state);
}

// The decode projections exactly as `cpu_kernel.linear` computes them: torch.ops.cobra_linear.linear, which chooses
// the kernel for the weights' dtype (linear_cpu.cpp); int8 weights come with their group scales.
at::Tensor project(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& scale) {
  static const auto linear =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("cobra_linear::linear", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>();
  return linear.call(x, w, scale);
}

// One decoding step of a Mamba mixer between its in_proj and out_proj: the same operations, in the same order and
// precision, as the unfused path (torch_ops.causal_conv1d for one token, the x_proj and dt_proj projections as
// `project`, then the compiled scan's selective_scan_fwd).
// xz [M, 2D] (in_proj output, x then z); conv_state [M, D, K]; conv_w [D, K]; conv_b, dt_bias, Dv [D]; x_proj_w
// [R + 2N, D]; dt_proj_w [D, R]; A [D, N] fp32; ssm_state [M, D, N] fp32; x_proj_scale, dt_proj_scale: the group
// scales of int8 projection weights, else none.
// Returns (y [M, D] in xz's dtype, new conv_state [M, D, K], new ssm_state [M, D, N] fp32).
std::tuple<at::Tensor, at::Tensor, at::Tensor> mixer_step(
    const at::Tensor& xz, const at::Tensor& conv_state, const at::Tensor& conv_w, const at::Tensor& conv_b,
    const at::Tensor& x_proj_w, const at::Tensor& dt_proj_w, const at::Tensor& dt_bias, const at::Tensor& A,
    const at::Tensor& Dv, const at::Tensor& ssm_state, const std::optional<at::Tensor>& x_proj_scale,
    const std::optional<at::Tensor>& dt_proj_scale) {
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
    at::parallel_for(0, M * D, kConvGrain, [&](int64_t begin, int64_t end) {  // channel c = (m, d)
      for (int64_t c = begin, m = begin / D, d = begin % D; c < end; ++c) {
        const scalar_t* src = old_window + c * K;
        scalar_t* dst = out + c * K;
        for (int64_t k = 0; k + 1 < K; ++k) dst[k] = src[k + 1];
        dst[K - 1] = x[m * 2 * D + d];
        float acc = 0.f;
        for (int64_t k = 0; k < K; ++k) {
          // rounded to fp32 before the add, as ATen's multiply (this file's baseline code has no FMA to fuse them)
          const float product = static_cast<float>(dst[k]) * wp[d * K + k];
          acc += product;
        }
        cp[c] = acc + bp[d];
        if (++d == D) d = 0, ++m;
      }
    });
  });
  const at::Tensor u = at::silu(conv).to(st);  // [M, D, 1]
  const at::Tensor x_dbl = project(u.squeeze(-1), x_proj_w, x_proj_scale);  // [M, R + 2N]
  const at::Tensor delta = project(x_dbl.narrow(1, 0, R), dt_proj_w, dt_proj_scale).unsqueeze(-1);  // [M, D, 1]
  const at::Tensor B = x_dbl.narrow(1, R, N).unsqueeze(-1), C = x_dbl.narrow(1, R + N, N).unsqueeze(-1);  // [M, N, 1]
  auto [y, s] = scan(u, delta, A, B, C, Dv, z, dt_bias, ssm_state);
  return {y.squeeze(-1), window.contiguous(), s};
}


// The tensors of one layer in `layers`, in this order (scales: the group scales of int8 weights, else none).
enum Weight { kNorm, kInProj, kInScale, kConvW, kConvB, kXProj, kXScale, kDtProj, kDtScale, kDtBias, kA, kD, kOutProj,
              kOutScale, kWeightsPerLayer };

// hidden [M, d] (compute dtype), residual [M, d] fp32 (its value before the first layer's add: zeros at the start
// of a step), layers: kWeightsPerLayer tensors per layer, conv_states [M, D, K] and ssm_states [M, D, N] per layer.
// Returns (hidden, residual) after the last layer (before the final add and norm) and the new states.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> decode_layers(
    at::Tensor hidden, at::Tensor residual, const c10::List<Optional>& layers, const std::vector<at::Tensor>& conv_states,
    const std::vector<at::Tensor>& ssm_states, double eps) {
  const int64_t n_layers = static_cast<int64_t>(conv_states.size());
  TORCH_CHECK(static_cast<int64_t>(layers.size()) == n_layers * kWeightsPerLayer &&
                  static_cast<int64_t>(ssm_states.size()) == n_layers,
              "decode_layers: ", kWeightsPerLayer, " tensors and two states per layer");
  const at::ScalarType dtype = hidden.scalar_type();
  const int64_t d = hidden.size(1);
  std::vector<at::Tensor> convs, ssms;
  convs.reserve(n_layers);
  ssms.reserve(n_layers);
  for (int64_t i = 0; i < n_layers; ++i) {
    const auto w = [&](Weight k) { return layers.get(i * kWeightsPerLayer + k); };
    residual = residual + hidden.to(at::kFloat);
    const at::Tensor h = at::rms_norm(residual, {d}, w(kNorm), eps).to(dtype);
    const at::Tensor xz = project(h, *w(kInProj), w(kInScale));
    auto [y, conv, ssm] = mixer_step(xz, conv_states[i], *w(kConvW), *w(kConvB), *w(kXProj), *w(kDtProj),
                                     *w(kDtBias), *w(kA), *w(kD), ssm_states[i], w(kXScale), w(kDtScale));
    hidden = project(y, *w(kOutProj), w(kOutScale));
    convs.push_back(conv);
    ssms.push_back(ssm);
  }
  return {hidden, residual, convs, ssms};
}

}  // namespace
}  // namespace cobra_decode

TORCH_LIBRARY(cobra_decode, m) {
  m.def(
      "mixer_step(Tensor xz, Tensor conv_state, Tensor conv_w, Tensor conv_b, Tensor x_proj_w, Tensor dt_proj_w, "
      "Tensor dt_bias, Tensor A, Tensor D, Tensor ssm_state, Tensor? x_proj_scale=None, Tensor? dt_proj_scale=None) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "decode_layers(Tensor hidden, Tensor residual, Tensor?[] layers, Tensor[] conv_states, Tensor[] ssm_states, "
      "float eps) -> (Tensor, Tensor, Tensor[], Tensor[])");
}

TORCH_LIBRARY_IMPL(cobra_decode, CPU, m) {
  m.impl("mixer_step", &cobra_decode::mixer_step);
  m.impl("decode_layers", &cobra_decode::decode_layers);
}
