"""The compiled CPU kernels for the model tests: the library (skip, or fail on CI, when it cannot be built) and each
ISA variant this CPU can run (`torch.ops.cobra_cpu.cap_isa`, the hook that lets one machine test them all)."""

import os

import pytest
import torch

from cobra_app.model.ops import cpu_kernel
from cobra_app.model.ops.cpu_capability import ISA_LEVELS


@pytest.fixture(scope="session")
def kernel_ops():
    ops = cpu_kernel.cpu_kernel_ops()
    if ops is None:
        reason = f"CPU kernels could not be built: {cpu_kernel.load_error()}"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return ops


@pytest.fixture(params=ISA_LEVELS[::-1])
def isa(request, kernel_ops):
    """Run the test on each kernel variant (capped at what this CPU supports; the ones it lacks are skipped)."""
    used = torch.ops.cobra_cpu.cap_isa(request.param)
    try:
        if used != request.param:
            pytest.skip(f"this CPU has no {request.param}")
        yield used
    finally:
        torch.ops.cobra_cpu.cap_isa(ISA_LEVELS[-1])
