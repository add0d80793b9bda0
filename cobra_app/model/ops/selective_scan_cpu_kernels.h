// Per-channel selective-scan kernels, written once for any vector width.
//
// Included by selective_scan_cpu.cpp once per instruction set, inside namespace cobra_scan::<isa> and under the
// matching `#pragma GCC target`, right after cpu_vector.h (the vector type vf of kLanes fp32, loadu, storeu, hsum).
// No include guard, on purpose; no #include here either (everything this needs comes from the .cpp, outside the
// namespace).
//
// Vectors are GCC/Clang vector extensions; exp and log are Cephes polynomials, so nothing depends on libm's vector
// ABI or on -march. Every function here is compiled for the enclosing target only.

#define CS_INLINE inline __attribute__((always_inline))

typedef int32_t vi __attribute__((vector_size(4 * COBRA_CPU_LANES)));  // kLanes x int32 (masks, exponent bits)

CS_INLINE vf splat(float x) { return x - vf{}; }  // broadcast (x - 0 == x exactly; folds to one broadcast)
CS_INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }
CS_INLINE vf vmin(vf a, vf b) { return a < b ? a : b; }

// exp(x), Cephes expf: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, times 2^n built in the exponent bits.
// Inputs are clamped to [-87.3, 88] (results 1.2e-38 .. 1.7e38); relative error ~1 ulp.
CS_INLINE vf vexp(vf x) {
  x = vmin(vmax(x, splat(-87.33654f)), splat(88.0f));
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf n = (x * splat(1.44269504088896341f) + magic) - magic;
  vf r = x - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  vf p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  vf e = p * (r * r) + r + splat(1.0f);
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  return e * (vf)bits;  // same-size vector cast: reinterprets the bits as 2^n
}

// log(w) for w in [1, 2] (Cephes logf on the mantissa range [sqrt(1/2), sqrt(2)]).
CS_INLINE vf vlog_1to2(vf w) {
  vi big = w > splat(1.41421356237f);
  vf m = big ? w * splat(0.5f) : w;
  vf e = big ? splat(1.0f) : splat(0.0f);
  vf x = m - splat(1.0f);
  vf z = x * x;
  vf p = splat(7.0376836292e-2f);
  p = p * x + splat(-1.1514610310e-1f);
  p = p * x + splat(1.1676998740e-1f);
  p = p * x + splat(-1.2420140846e-1f);
  p = p * x + splat(1.4249322787e-1f);
  p = p * x + splat(-1.6668057665e-1f);
  p = p * x + splat(2.0000714765e-1f);
  p = p * x + splat(-2.4999993993e-1f);
  p = p * x + splat(3.3333331174e-1f);
  vf y = p * x * z + e * splat(-2.12194440e-4f) - splat(0.5f) * z;
  return x + y + e * splat(0.693359375f);
}

// softplus(x) = log1p(exp(x)), = x above torch's threshold 20. Computed as max(x, 0) + log1p(exp(-|x|)), with
// log1p(v) = log(1 + v) * v / ((1 + v) - 1) (exact-rounding trick, accurate for tiny v).
CS_INLINE vf vsoftplus(vf x) {
  vf ax = vmax(x, -x);
  vf v = vexp(-ax);
  vf w = splat(1.0f) + v;
  vf l1p = (w == splat(1.0f)) ? v : vlog_1to2(w) * (v / (w - splat(1.0f)));
  vf sp = vmax(x, splat(0.0f)) + l1p;
  return x > splat(20.0f) ? x : sp;
}

CS_INLINE vf vsigmoid(vf x) { return splat(1.0f) / (splat(1.0f) + vexp(-x)); }
CS_INLINE vf vsilu(vf x) { return x / (splat(1.0f) + vexp(-x)); }  // as torch: x / (1 + exp(-x))

// d softplus / dx = sigmoid(x), = 1 above the threshold (torch's softplus_backward).
CS_INLINE vf vsoftplus_grad(vf x) { return x > splat(20.0f) ? splat(1.0f) : vsigmoid(x); }

CS_INLINE int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// out[0:L] = float(p[t * stride]), out[L:Lp] = 0.
template <typename T>
CS_INLINE void load_series(const T* p, int64_t stride, int64_t L, int64_t Lp, float* out) {
  if (std::is_same<T, float>::value && stride == 1) {
    std::memcpy(out, p, L * sizeof(float));
  } else {
    for (int64_t t = 0; t < L; ++t) out[t] = static_cast<float>(p[t * stride]);
  }
  for (int64_t t = L; t < Lp; ++t) out[t] = 0.0f;
}

// NP x fp32 (N used, the rest 0) <-> NV vectors; whole vectors where N = NP (Mamba's N = 16), else through a
// zero-padded buffer.
template <int NV>
CS_INLINE void load_state(const float* p, int64_t N, vf* out) {
  if (N == NV * kLanes) {
    for (int v = 0; v < NV; ++v) out[v] = loadu(p + v * kLanes);
    return;
  }
  float tmp[NV * kLanes] = {};
  std::memcpy(tmp, p, N * sizeof(float));
  for (int v = 0; v < NV; ++v) out[v] = loadu(tmp + v * kLanes);
}
template <int NV>
CS_INLINE void store_state(const vf* in, int64_t N, float* p) {
  if (N == NV * kLanes) {
    for (int v = 0; v < NV; ++v) storeu(p + v * kLanes, in[v]);
    return;
  }
  float tmp[NV * kLanes];
  for (int v = 0; v < NV; ++v) storeu(tmp + v * kLanes, in[v]);
  std::memcpy(p, tmp, N * sizeof(float));
}

// ------------------------------------------------------------------------------------------------ forward
//
// Per channel: the per-step scalars dt_t = softplus(delta_t + bias), dt_t u_t and silu(z_t) for all t at once
// (vectorised over t), then one sequential pass over t with s (NV vectors) in registers: s = exp(dt A) s + dt u B_t,
// y_t = C_t . s, and finally y = (y + D u) silu(z) (vectorised over t). NP = NV * kLanes must equal the padding.

template <typename T, int NV>
void forward_channels(const FwdArgs<T>& a, int64_t begin, int64_t end) {
  constexpr int64_t NP = NV * kLanes;
  const int64_t L = a.L, Lp = round_up(L, kLanes), N = a.N;
  std::vector<float> buf(5 * Lp);
  float *ub = buf.data(), *dtb = ub + Lp, *dtub = dtb + Lp, *gateb = dtub + Lp, *yb = gateb + Lp;
  for (int64_t c = begin; c < end; ++c) {
    const int64_t b = c / a.Dn, d = c % a.Dn;
    const float bias = a.bias[d], Dd = a.Dv[d];
    load_series(a.u.at(b, d), a.u.sl, L, Lp, ub);
    load_series(a.delta.at(b, d), a.delta.sl, L, Lp, dtb);
    load_series(a.z.at(b, d), a.z.sl, L, Lp, gateb);
    for (int64_t t = 0; t < Lp; t += kLanes) {
      const vf dt = vsoftplus(loadu(dtb + t) + splat(bias));
      storeu(dtb + t, dt);
      storeu(dtub + t, dt * loadu(ub + t));
      storeu(gateb + t, vsilu(loadu(gateb + t)));
    }
    vf s[NV], av[NV];
    load_state<NV>(a.s0 + c * N, N, s);
    for (int v = 0; v < NV; ++v) av[v] = loadu(a.A + d * NP + v * kLanes);
    const float* Bb = a.Bp + b * L * NP;
    const float* Cb = a.Cp + b * L * NP;
    for (int64_t t = 0; t < L; ++t) {
      const vf dtv = splat(dtb[t]), dtuv = splat(dtub[t]);
      vf acc = splat(0.0f);
      for (int v = 0; v < NV; ++v) {
        s[v] = vexp(dtv * av[v]) * s[v] + dtuv * loadu(Bb + t * NP + v * kLanes);
        acc = acc + s[v] * loadu(Cb + t * NP + v * kLanes);
      }
      yb[t] = hsum(acc);
    }
    for (int64_t t = 0; t < Lp; t += kLanes) {
      storeu(yb + t, (loadu(yb + t) + splat(Dd) * loadu(ub + t)) * loadu(gateb + t));
    }
    T* y = a.y + c * L;
    for (int64_t t = 0; t < L; ++t) y[t] = static_cast<T>(yb[t]);
    store_state<NV>(s, N, a.s_out + c * N);
  }
}

// ------------------------------------------------------------------------------------------------ one step
//
// L = 1 (decoding): the same arithmetic as forward_channels, but the per-step scalars (softplus, silu) are vectorised
// over kLanes channels at a time instead of over t, where a single step would waste all lanes but one, and so is the
// output gate. Channel c is (batch b, channel d) = divmod(c, Dn), advanced by one per channel: a division per channel
// cost more than the recurrence.

template <typename T, int NV>
void step_channels(const FwdArgs<T>& a, int64_t begin, int64_t end) {
  constexpr int64_t NP = NV * kLanes;
  const int64_t N = a.N;
  int64_t b = begin / a.Dn, d = begin % a.Dn;  // of the next channel to gather
  for (int64_t c0 = begin; c0 < end; c0 += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, end - c0);
    float ub[kLanes] = {}, dtb[kLanes] = {}, gateb[kLanes] = {}, biasb[kLanes] = {}, skipb[kLanes] = {};
    int64_t bs[kLanes], ds[kLanes];
    for (int64_t i = 0; i < count; ++i) {
      bs[i] = b;
      ds[i] = d;
      ub[i] = static_cast<float>(*a.u.at(b, d));
      dtb[i] = static_cast<float>(*a.delta.at(b, d));
      gateb[i] = static_cast<float>(*a.z.at(b, d));
      biasb[i] = a.bias[d];
      skipb[i] = a.Dv[d];
      if (++d == a.Dn) d = 0, ++b;
    }
    const vf dt = vsoftplus(loadu(dtb) + loadu(biasb));
    storeu(dtb, dt);
    float dtub[kLanes], yb[kLanes] = {};
    storeu(dtub, dt * loadu(ub));
    storeu(gateb, vsilu(loadu(gateb)));
    for (int64_t i = 0; i < count; ++i) {
      const int64_t c = c0 + i;
      vf s[NV];
      load_state<NV>(a.s0 + c * N, N, s);
      const vf dtv = splat(dtb[i]), dtuv = splat(dtub[i]);
      const float* Av = a.A + ds[i] * NP;
      const float* Bv = a.Bp + bs[i] * NP;
      const float* Cv = a.Cp + bs[i] * NP;
      vf acc = splat(0.0f);
      for (int v = 0; v < NV; ++v) {
        s[v] = vexp(dtv * loadu(Av + v * kLanes)) * s[v] + dtuv * loadu(Bv + v * kLanes);
        acc = acc + s[v] * loadu(Cv + v * kLanes);
      }
      yb[i] = hsum(acc);
      store_state<NV>(s, N, a.s_out + c * N);
    }
    storeu(yb, (loadu(yb) + loadu(skipb) * loadu(ub)) * loadu(gateb));
    for (int64_t i = 0; i < count; ++i) a.y[c0 + i] = static_cast<T>(yb[i]);
  }
}

// ------------------------------------------------------------------------------------------------ backward
//
// Per channel, with x_t = delta_t + bias, dt_t = softplus(x_t), dA_t = exp(dt_t A) (vector over N),
// s_t = dA_t * s_{t-1} + dt_t u_t B_t, q_t = C_t . s_t + D u_t, y_t = q_t silu(z_t), and incoming gy_t, g_{s_L}:
//   gq_t   = gy_t silu(z_t)                       gz_t = gy_t q_t silu'(z_t),  silu' = sig (1 + z (1 - sig))
//   gD    += gq_t u_t                             gu_t = gq_t D  (+ the scan term below)
//   h_t    = dL/ds_t (total) = gq_t C_t + dA_{t+1} * h_{t+1},   starting from h = g_{s_L}
//   gC_t  += gq_t s_t                             (summed over channels d)
//   gB_t  += dt_t u_t h_t                         (summed over channels d)
//   w_t    = h_t * s_{t-1} * dA_t                 (dL/d(dA_t) * dA_t; d dA_t = dA_t d(dt_t A))
//   gA    += w_t dt_t                             (summed over t here, over the batch afterwards)
//   gdt_t  = sum_n w_t A + u_t (h_t . B_t)        gu_t += dt_t (h_t . B_t)
//   gx_t   = gdt_t softplus'(x_t)  ->  gdelta_t = gx_t,  gbias += gx_t
//   g_{s_0} = dA_0 * h_0: what is left of h after the first step.
// s_t and dA_t are recomputed per channel into [L + 1, NP] and [L, NP] buffers (no [B, D, L, N] tensors).

template <int NV>
void backward_tasks(const BwdArgs& a, int64_t task_begin, int64_t task_end) {
  constexpr int64_t NP = NV * kLanes;
  const int64_t L = a.L, Lp = round_up(L, kLanes), N = a.N;
  std::vector<float> buf(10 * Lp + (2 * L + 1) * NP, 0.0f);
  float *ub = buf.data(), *xb = ub + Lp, *zb = xb + Lp, *gyb = zb + Lp, *dtb = gyb + Lp, *dtub = dtb + Lp;
  float *qb = dtub + Lp, *gqb = qb + Lp, *gub = gqb + Lp, *gdtb = gub + Lp;
  float* S = gdtb + Lp;           // [L + 1, NP]: S[t + 1] = s_t, S[0] = the initial state
  float* dAb = S + (L + 1) * NP;  // [L, NP]
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t b = task / a.n_blocks, blk = task % a.n_blocks;
    const float* Bb = a.Bp + b * L * NP;
    const float* Cb = a.Cp + b * L * NP;
    float* gBb = a.gB_part + task * L * NP;  // this task's partial sums over its channels
    float* gCb = a.gC_part + task * L * NP;
    for (int64_t d = blk * a.block; d < std::min(a.Dn, (blk + 1) * a.block); ++d) {
      const int64_t c = b * a.Dn + d;
      const float bias = a.bias[d], Dd = a.Dv[d];
      load_series(a.u.at(b, d), a.u.sl, L, Lp, ub);
      load_series(a.delta.at(b, d), a.delta.sl, L, Lp, xb);
      load_series(a.z.at(b, d), a.z.sl, L, Lp, zb);
      load_series(a.gy.at(b, d), a.gy.sl, L, Lp, gyb);
      for (int64_t t = 0; t < Lp; t += kLanes) {
        const vf x = loadu(xb + t) + splat(bias);
        const vf dt = vsoftplus(x);
        storeu(xb + t, x);
        storeu(dtb + t, dt);
        storeu(dtub + t, dt * loadu(ub + t));
      }
      // Forward recomputation, keeping every state and decay.
      vf s[NV], av[NV], h[NV], gA[NV];
      load_state<NV>(a.s0 + c * N, N, s);
      for (int v = 0; v < NV; ++v) {
        storeu(S + v * kLanes, s[v]);
        av[v] = loadu(a.A + d * NP + v * kLanes);
      }
      for (int64_t t = 0; t < L; ++t) {
        const vf dtv = splat(dtb[t]), dtuv = splat(dtub[t]);
        vf acc = splat(0.0f);
        for (int v = 0; v < NV; ++v) {
          const vf dA = vexp(dtv * av[v]);
          s[v] = dA * s[v] + dtuv * loadu(Bb + t * NP + v * kLanes);
          acc = acc + s[v] * loadu(Cb + t * NP + v * kLanes);
          storeu(dAb + t * NP + v * kLanes, dA);
          storeu(S + (t + 1) * NP + v * kLanes, s[v]);
        }
        qb[t] = hsum(acc);
      }
      // Output gate: gq = dL/dq, gz, the skip term's gD and the direct part of gu.
      vf gD = splat(0.0f);
      for (int64_t t = 0; t < Lp; t += kLanes) {
        const vf z = loadu(zb + t), u = loadu(ub + t), gy = loadu(gyb + t);
        const vf sig = vsigmoid(z);
        const vf q = loadu(qb + t) + splat(Dd) * u;
        const vf gq = gy * vsilu(z);
        storeu(zb + t, gy * q * sig * (splat(1.0f) + z * (splat(1.0f) - sig)));  // zb now holds gz
        storeu(gqb + t, gq);
        storeu(gub + t, gq * splat(Dd));
        gD = gD + gq * u;
      }
      // Reverse-time recurrence for h = dL/ds_t.
      load_state<NV>(a.gs + c * N, N, h);
      for (int v = 0; v < NV; ++v) gA[v] = splat(0.0f);
      for (int64_t t = L - 1; t >= 0; --t) {
        const vf gqv = splat(gqb[t]), dtv = splat(dtb[t]), dtuv = splat(dtub[t]);
        vf wa = splat(0.0f), hB = splat(0.0f);
        for (int v = 0; v < NV; ++v) {
          const int64_t o = t * NP + v * kLanes;
          const vf dA = loadu(dAb + o);
          h[v] = h[v] + gqv * loadu(Cb + o);                           // h_t
          storeu(gCb + o, loadu(gCb + o) + gqv * loadu(S + o + NP));  // gC_t += gq_t s_t
          storeu(gBb + o, loadu(gBb + o) + dtuv * h[v]);              // gB_t += dt_t u_t h_t
          const vf w = h[v] * loadu(S + o) * dA;                      // h_t s_{t-1} dA_t
          gA[v] = gA[v] + w * dtv;
          wa = wa + w * av[v];
          hB = hB + h[v] * loadu(Bb + o);
          h[v] = h[v] * dA;  // dA_t h_t: the part of h_{t-1} that comes through s_t
        }
        const float hb = hsum(hB);
        gdtb[t] = hsum(wa) + ub[t] * hb;
        gub[t] += dtb[t] * hb;
      }
      store_state<NV>(h, N, a.gs0 + c * N);
      for (int v = 0; v < NV; ++v) storeu(a.gA_part + c * NP + v * kLanes, gA[v]);
      // Through the softplus to delta and the bias.
      vf gbias = splat(0.0f);
      for (int64_t t = 0; t < Lp; t += kLanes) {
        const vf gx = loadu(gdtb + t) * vsoftplus_grad(loadu(xb + t));
        storeu(xb + t, gx);  // xb now holds gdelta
        gbias = gbias + gx;
      }
      a.gD_part[c] = hsum(gD);
      a.gbias_part[c] = hsum(gbias);
      std::memcpy(a.gu + c * L, gub, L * sizeof(float));
      std::memcpy(a.gdelta + c * L, xb, L * sizeof(float));
      std::memcpy(a.gz + c * L, zb, L * sizeof(float));
    }
  }
}

#undef CS_INLINE
