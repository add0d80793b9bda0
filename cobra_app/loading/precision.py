"""The `dtype` option: how a model's large matrices are stored and multiplied (`resolve_precision`, a
`model.precision.Precision` with its reason), and `apply_precision`.

Storage sets the memory and the bytes a decoded token reads; compute sets the arithmetic. On CPU, bf16 compute is
used only where torch's bf16 matmul is fast (`cpu_capability.bf16_verdict`: AVX-512 BF16 and the like); elsewhere
bf16-stored weights are multiplied in fp32 by the CPU kernels (an AVX2-only EPYC ran torch's bf16 matmul at 0.3 GFLOP/s
against 60-89 in fp32). "int8" stores the LM's projections and head as int8 with a bf16 scale per 32 weights of a
row (`model/quantize.py`), the other matrices in bf16.
"""

from __future__ import annotations

import torch

from cobra_app.model.cobra import CobraVLM
from cobra_app.model.ops.cpu_capability import bf16_verdict
from cobra_app.model.precision import Precision
from cobra_app.model.quantize import quantize_lm_

FLOAT_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "int8")
# Models above this size default to bf16 weights on CPU (half the memory and bytes per token); below it fp32 costs
# little and is exact.
CPU_BF16_MIN_PARAMS = 500_000_000


def _cpu_bf16_weights(how: str) -> Precision:
    verdict = bf16_verdict()
    compute = torch.bfloat16 if verdict.fast else torch.float32
    return Precision(torch.bfloat16, compute, f"{how}; {'bf16' if verdict.fast else 'fp32'} compute: {verdict.reason}")


def resolve_precision(dtype: str | torch.dtype, device: torch.device, num_params: int) -> Precision:
    """`dtype` ("auto", a float dtype or its name, "int8") -> the Precision to load a model of `num_params` in.

    "auto": bf16 on CUDA; on CPU fp32 for models under CPU_BF16_MIN_PARAMS, else bf16 weights. bf16 weights on CPU
    (auto or asked for) compute in bf16 where the CPU's bf16 matmul is fast, else in fp32. "int8" is CPU-only."""
    name = str(dtype).removeprefix("torch.")
    if name == "auto":
        if device.type != "cpu":
            return Precision(torch.bfloat16, torch.bfloat16, f"auto: bf16 on {device.type}")
        if num_params < CPU_BF16_MIN_PARAMS:
            return Precision(torch.float32, torch.float32,
                             f"auto: fp32 for a small model ({num_params / 1e6:.0f} M parameters)")
        return _cpu_bf16_weights("auto: bf16 weights for a large model (half of fp32's memory and bytes per token)")
    if name == "int8":
        if device.type != "cpu":
            raise ValueError("dtype 'int8' is a CPU option (its kernels are CPU kernels); use bfloat16 on a GPU")
        float_part = _cpu_bf16_weights("int8 LM projections and head, the other matrices bf16")
        return Precision(torch.int8, float_part.compute, float_part.reason)
    if name not in FLOAT_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_CHOICES)}")
    weights = FLOAT_DTYPES[name]
    if device.type == "cpu" and weights == torch.bfloat16:
        return _cpu_bf16_weights("bf16 weights as asked")
    return Precision(weights, weights, f"{name} as asked")


def apply_precision(vlm: CobraVLM, precision: Precision) -> CobraVLM:
    """Cast `vlm` in place (a no-op for a network built in these dtypes), quantise it for int8 (from its weights as
    they are) and record `precision` on it. Returns vlm."""
    vlm.cast(precision.float_weights, precision.compute)
    if precision.weights == torch.int8:
        quantize_lm_(vlm.llm)
    vlm.precision = precision
    return vlm
