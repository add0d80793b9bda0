"""`python -m cobra_app.bench.cuda_check` exercised on the CPU: its checks run on the stand-in kernels
(tests/model/kernel_standins.py, which compute with the PyTorch ops), so every comparison must pass and the rows must
name what a GPU run will check. The memory rows need CUDA (`memory_cases`): they run only on a GPU."""

import pytest
import torch

from cobra_app.bench import cuda_check
from cobra_app.bench.cuda_check import Row
from cobra_app.model.ops import MambaOps
from tests.model.kernel_standins import import_cuda_ops
from tests.model.test_cuda_graph import graphs_on_cpu  # noqa: F401 - a fixture


@pytest.fixture
def kernels(monkeypatch) -> MambaOps:
    module, _ = import_cuda_ops(monkeypatch)
    return MambaOps("cuda-kernels", module.causal_conv1d, module.selective_scan)


def test_the_lengths_include_those_where_the_kernels_use_vector_loads():
    assert {128, 256, 2048} <= set(cuda_check.OP_LENGTHS) & set(cuda_check.MODEL_LENGTHS)
    assert {1, 3, 300} <= set(cuda_check.OP_LENGTHS)


def test_op_checks_pass_on_stand_in_kernels(kernels):
    rows = cuda_check.op_cases(kernels, "cpu")
    assert len(rows) == 3 * len(cuda_check.OP_LENGTHS) and all(row.ok for row in rows), rows
    names = " ".join(row.name for row in rows)
    assert "selective_scan L=2048 (zero start)" in names and "selective_scan L=128 (non-zero start)" in names


def test_model_checks_pass_on_stand_in_kernels(kernels):
    rows = cuda_check.model_cases(kernels, "cpu", lengths=(8, 32), steps=2)
    assert [row.name for row in rows[:3]] == ["MambaLM float32: full pass L=8", "MambaLM float32: full pass L=32",
                                              "MambaLM float32: 8 tokens after 32, then 2 steps, vs torch"]
    assert len(rows) == 2 * (2 + 3) and all(row.ok for row in rows), rows


def test_graph_checks_pass_with_eager_graphs_while_threads_sample(kernels, graphs_on_cpu):
    rows = cuda_check.graph_cases(kernels, "cpu", max_batch=3, decodes=4, steps=3)
    assert len(graphs_on_cpu) == 3  # captured once each at start-up, none while the four decodes ran
    assert [row.value for row in rows][0] == 0 and all(row.ok for row in rows), rows


def test_graph_check_fails_where_batch_sizes_were_not_captured(kernels):
    """Without graphs (here: the CPU), the capture row reports all sizes missing."""
    rows = cuda_check.graph_cases(kernels, "cpu", max_batch=3, decodes=2, steps=2)
    assert rows[0].value == 3 and not rows[0].ok and rows[1].ok


def test_rows_and_report():
    rows = [Row("scan", 2e-5, 1e-4), Row("prefill", 1500.4, 1024, "MiB")]
    assert rows[0].cells() == "| scan | 2.00e-05 | 1.00e-04 | yes |"
    assert rows[1].cells() == "| prefill | 1500 MiB | 1024 MiB | NO |"
    text = cuda_check.report(rows, "Some GPU")
    assert text.startswith("# CUDA kernels vs PyTorch ops\n\nDevice: Some GPU.\n")
    assert text.endswith("| check | measured | bound | ok |\n|---|---|---|---|\n" + rows[0].cells() + "\n"
                         + rows[1].cells() + "\n")


def test_without_cuda_it_says_what_it_needs_and_writes_nothing(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real check")
    out = tmp_path / "CUDA_CHECK.md"
    assert cuda_check.main(["--out", str(out)]) == 2 and not out.exists()
    assert "needs a CUDA device" in capsys.readouterr().err
