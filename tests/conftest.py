"""Suite-wide set-up: the CPU kernels are built (first run on a machine, about a minute) or loaded before any test, so
that no test's timing or launched app depends on a compile, and every test sees the same operators."""

import pytest

from cobra_app.model.ops import cpu_kernel


@pytest.fixture(scope="session", autouse=True)
def cpu_kernels_built():
    cpu_kernel.load_kernel()  # False where there is no compiler: the tests then run on the PyTorch operators
