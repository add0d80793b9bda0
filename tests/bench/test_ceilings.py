"""Timing in turns: figures that are compared see the same machine, round by round."""

import pytest
import torch

from cobra_app.bench.ceilings import copy_case, count_flops, interleaved_seconds, matmul_case


def test_functions_are_timed_in_turns_and_each_gets_one_median_per_round():
    calls = []
    fns = {"ours": lambda: calls.append("ours"), "peer": lambda: calls.append("peer")}
    rounds = interleaved_seconds(fns, rounds=3, per_round=2, warmup=1)
    assert calls == ["ours", "peer"] + ["ours", "ours", "peer", "peer"] * 3
    assert {name: len(seconds) for name, seconds in rounds.items()} == {"ours": 3, "peer": 3}
    assert all(s >= 0 for seconds in rounds.values() for s in seconds)


def test_each_function_can_have_its_own_number_of_calls_per_round():
    calls = []
    fns = {"slow": lambda: calls.append("slow"), "quick": lambda: calls.append("quick")}
    interleaved_seconds(fns, rounds=2, per_round={"slow": 1, "quick": 3}, warmup=0)
    assert calls == ["slow", "quick", "quick", "quick"] * 2


def test_ceiling_cases_count_their_work():
    assert matmul_case(torch.float32, m=3, k=4, n=5).work == 2 * 3 * 4 * 5
    copy = copy_case(nbytes=1000)
    copy.call()
    assert copy.work == 2000 and copy.rate(1e-6) == 2000 / 1e-6 / 1e9


def test_flops_count_the_cpu_kernels_products_too():
    """bf16-stored weights under fp32 arithmetic go through the kernels' own op, which torch's counter does not know."""
    from cobra_app.model.ops import cpu_kernel

    if not cpu_kernel.load_kernel():
        pytest.skip(f"CPU kernels unavailable: {cpu_kernel.load_error()}")
    x, w = torch.randn(40, 96), torch.randn(24, 96).bfloat16()
    assert count_flops(lambda: cpu_kernel.linear(x, w)) == 2 * 40 * 96 * 24
