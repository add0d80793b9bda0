"""Building the CPU kernel library once per content (`cobra_app.model.ops.cpu_build`), and serving while it builds
(`cpu_kernel.load_in_background`)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cobra_app.model.ops import cpu_build

ROOT = Path(__file__).resolve().parents[2]


def checkout_copy(tmp_path: Path, name: str) -> Path:
    """A copy of the kernel sources, as another checkout would have them."""
    copy = tmp_path / name
    copy.mkdir()
    for file in cpu_build.SOURCES + cpu_build.HEADERS:
        shutil.copyfile(cpu_build.SOURCE_DIR / file, copy / file)
    return copy


def test_the_name_is_a_hash_of_the_content_not_of_the_checkout(tmp_path, monkeypatch):
    names = []
    for checkout in ("a", "b"):
        monkeypatch.setattr(cpu_build, "SOURCE_DIR", checkout_copy(tmp_path, checkout))
        names.append(cpu_build.library_name())
    assert names[0] == names[1] and names[0].startswith("cobra_cpu_kernels_")
    (cpu_build.SOURCE_DIR / "linear_cpu.cpp").write_text((cpu_build.SOURCE_DIR / "linear_cpu.cpp").read_text() + "\n")
    edited = cpu_build.library_name()
    monkeypatch.setattr(cpu_build, "CFLAGS", (*cpu_build.CFLAGS, "-g"))
    flagged = cpu_build.library_name()
    monkeypatch.setattr(cpu_build.torch, "__version__", "0.0.0")
    assert len({names[0], edited, flagged, cpu_build.library_name()}) == 4


def test_only_a_finished_build_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    name = cpu_build.library_name()
    assert cpu_build.build_dir() == tmp_path / name and cpu_build.cached_library() is None
    (tmp_path / name).mkdir()
    (tmp_path / name / f"{name}.so").write_bytes(b"half-written")
    assert cpu_build.cached_library() is None  # no ready marker yet
    (tmp_path / name / cpu_build.READY).write_text(name)
    assert cpu_build.cached_library() == tmp_path / name / f"{name}.so"


SERVE_WHILE_BUILDING = """
import logging
import time
logging.basicConfig(level=logging.INFO)  # as the app logs
from cobra_app.model.ops import TORCH_OPS, cpu_kernel, get_ops
start = time.perf_counter()
cpu_kernel.load_in_background()
assert get_ops("cpu") is TORCH_OPS and "building" in cpu_kernel.status(), cpu_kernel.status()
assert time.perf_counter() - start < 5
print("serving on torch ops", flush=True)
assert cpu_kernel.load_kernel(), cpu_kernel.load_error()
assert get_ops("cpu").name == "cpu-kernel" and cpu_kernel.status().startswith("ready")
"""


def run_python(code: str, extensions: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("COBRA_OPS", "COBRA_CPU_ISA")}
    environ.update(TORCH_EXTENSIONS_DIR=str(extensions), PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], env=environ, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_a_fresh_machine_serves_on_torch_ops_while_the_kernels_build(tmp_path):
    """No compile on the caller's path: PyTorch ops at once, the kernels after a background build (minutes)."""
    done = run_python(SERVE_WHILE_BUILDING, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "serving on torch ops" in done.stdout and "switching from PyTorch ops" in done.stderr
    assert len(list(tmp_path.glob(f"cobra_cpu_kernels_*/{cpu_build.READY}"))) == 1  # the next start only loads it


def test_a_failed_background_build_stays_on_torch_ops(tmp_path):
    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` executable to stand in for a broken compiler")
    code = SERVE_WHILE_BUILDING.replace('assert cpu_kernel.load_kernel(), cpu_kernel.load_error()', (
        'assert not cpu_kernel.load_kernel() and "build failed" in cpu_kernel.load_error()\n'
        'assert get_ops("cpu") is TORCH_OPS and cpu_kernel.status().startswith("unavailable")'))
    code = code.split('assert get_ops("cpu").name == "cpu-kernel"')[0]
    done = run_python(code, tmp_path, CXX=false)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_build_stops_when_the_process_that_started_it_exits(tmp_path):
    """An app stopped during its background build leaves no compiler running."""
    code = ("import os, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-m', 'cobra_app.model.ops.cpu_build', '--exit-with-parent',"
            " str(os.getpid())], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(8)\n"  # the build has started compiling
            "os._exit(0)\n")
    done = run_python(code, tmp_path)
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)  # the build's session: the builder and its compilers
        except ProcessLookupError:
            return
        time.sleep(0.5)
    pytest.fail("the build outlived the process that started it")
