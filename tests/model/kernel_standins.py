"""Stand-ins for the mamba-ssm and causal-conv1d kernels, so that `cobra_app.model.ops.cuda_ops` runs on the CPU.

Each stand-in has its kernel's signature, checks what the library's C++ checks (dtypes, layouts), records the tensors
it received (the tests then check contiguity and alignment, which the real kernels need at some lengths but do not
check), and computes its kernel's result with the PyTorch ops, decode kernels updating their state in place.
`import_cuda_ops(monkeypatch)` imports a copy of the module against empty stand-in packages, then points its kernel
names at a `Kernels` recorder.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import torch
from torch import Tensor

from cobra_app.model.ops import torch_ops

KERNEL_MODULES = {  # what cuda_ops imports: module -> names
    "causal_conv1d": ("causal_conv1d_fn", "causal_conv1d_update"),
    "mamba_ssm": (),
    "mamba_ssm.ops": (),
    "mamba_ssm.ops.selective_scan_interface": ("selective_scan_fn",),
    "mamba_ssm.ops.triton": (),
    "mamba_ssm.ops.triton.selective_state_update": ("selective_state_update",),
}
SEQUENCE_INPUTS = {"selective_scan_fn": ("u", "delta", "B", "C", "z"), "causal_conv1d_fn": ("x",)}


def is_aligned(t: Tensor) -> bool:
    """Contiguous and 16-byte aligned: what the kernels' vector loads need."""
    return t.is_contiguous() and t.data_ptr() % 16 == 0


class Kernels:
    """The four kernels on the PyTorch ops; `calls` holds (kernel name, {argument: tensor}) for every call."""

    def __init__(self):
        self.calls: list[tuple[str, dict[str, Tensor]]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def sequence_inputs(self) -> list[tuple[str, str, Tensor]]:
        """(kernel, argument, tensor) for every sequence tensor handed to a multi-token kernel."""
        return [(name, arg, args[arg]) for name, args in self.calls for arg in SEQUENCE_INPUTS.get(name, ())]

    def selective_scan_fn(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        self.calls.append(("selective_scan_fn", dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z,
                                                      delta_bias=delta_bias)))
        assert delta_softplus and return_last_state and z is not None, "the stand-in covers the call cuda_ops makes"
        for name, t in dict(delta=delta, B=B, C=C, z=z).items():
            if t.dtype != u.dtype:
                raise RuntimeError(f"selective_scan: {name} is {t.dtype}, u is {u.dtype}")
        if not A.dtype == D.dtype == delta_bias.dtype == torch.float32:
            raise RuntimeError("selective_scan: A, D and delta_bias must be fp32")
        start = torch.zeros(u.shape[0], u.shape[1], A.shape[1])
        return torch_ops.selective_scan(u, delta, A, B, C, D, z, delta_bias, start)  # y in u.dtype, s_L fp32

    def causal_conv1d_fn(self, x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                         final_states_out=None, activation=None):
        self.calls.append(("causal_conv1d_fn", dict(x=x, weight=weight, bias=bias)))
        assert activation == "silu" and initial_states is None and not return_final_states
        if bias.dtype != weight.dtype or not (x.stride(2) == 1 or x.stride(1) == 1):
            raise RuntimeError("causal_conv1d: bias dtype or x layout")
        start = torch.zeros(*x.shape[:2], weight.shape[-1], dtype=x.dtype)
        return torch_ops.causal_conv1d(x, weight, bias, start)[0]

    def causal_conv1d_update(self, x, conv_state, weight, bias=None, activation=None):
        self.calls.append(("causal_conv1d_update", dict(x=x, conv_state=conv_state)))
        if conv_state.dtype != x.dtype:
            raise RuntimeError("causal_conv1d_update: conv_state must have x's dtype")
        y, new_state = torch_ops.causal_conv1d(x[..., None], weight, bias, conv_state)
        conv_state.copy_(new_state)
        return y[..., 0]

    def selective_state_update(self, state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
        self.calls.append(("selective_state_update", dict(state=state, x=x)))
        assert dt_softplus
        y, new_state = torch_ops.selective_scan(x[..., None], dt[..., None], A, B[..., None], C[..., None], D,
                                                z[..., None], dt_bias, state)
        state.copy_(new_state)
        return y[..., 0]


def import_cuda_ops(monkeypatch) -> tuple[types.ModuleType, Kernels]:
    """A fresh copy of `cobra_app.model.ops.cuda_ops` (not registered in sys.modules), imported against stand-in
    packages, its kernel names pointing at a new `Kernels` recorder. The packages go when the test ends."""
    for name, attrs in KERNEL_MODULES.items():
        module = types.ModuleType(name)
        for attr in attrs:
            setattr(module, attr, None)
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.find_spec("cobra_app.model.ops.cuda_ops")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kernels = Kernels()
    for attrs in KERNEL_MODULES.values():
        for attr in attrs:
            monkeypatch.setattr(module, attr, getattr(kernels, attr))
    return module, kernels
