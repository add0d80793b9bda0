"""Building the CPU kernel library, once per content: `python -m cobra_app.model.ops.cpu_build` (install time).

The library's name carries a hash of everything the build depends on: its sources, compiler flags and compiler, the
torch and Python versions, and this CPU's instruction-set level. A build is therefore shared by every checkout with
the same sources (it is compiled from a copy of them in its own directory, so build files never name a checkout) and
never replaced by another checkout's, and a finished build is only loaded (~0.1 s), never re-checked by a compiler.
The cache lives where torch keeps JIT extensions (TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions).

The library is compiled without -march: its baseline, AVX2 and AVX-512 variants are all in it, chosen at run time
(`cpu_isa.h`), so the ISA in the key only keeps machines that share a home directory apart.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import get_default_build_root

from cobra_app.model.ops.cpu_capability import host_isa

SOURCE_DIR = Path(__file__).parent
SOURCES = ("cpu_isa.cpp", "selective_scan_cpu.cpp", "causal_conv_cpu.cpp", "linear_cpu.cpp", "decode_step_cpu.cpp")
HEADERS = ("cpu_isa.h", "cpu_vector.h", "cpu_variants.h", "selective_scan_cpu_kernels.h", "linear_cpu_kernels.h")
# No -march: the AVX2 and AVX-512 kernels are compiled under `#pragma GCC target` and chosen by CPUID at run time.
CFLAGS = ("-O3", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi")
LDFLAGS = ("-fopenmp",)
READY = "ready"  # written once the library is built and loads


def _compiler() -> str:
    """The C++ compiler torch's build uses (CXX, else c++) and its version line."""
    cxx = os.environ.get("CXX", "c++")
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = "unavailable"
    return f"{cxx}: {version.splitlines()[0] if version else ''}"


def library_name() -> str:
    """`cobra_cpu_kernels_<16 hex digits>`: the hash of the sources, flags, compiler, torch, Python and ISA."""
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes() + b"\0")
    for part in (*CFLAGS, "|", *LDFLAGS, "|", _compiler(), torch.__version__, str(torch._C._GLIBCXX_USE_CXX11_ABI),
                 platform.python_version(), platform.machine(), host_isa()):
        digest.update(part.encode() + b"\0")
    return f"cobra_cpu_kernels_{digest.hexdigest()[:16]}"


def build_dir(name: str | None = None) -> Path:
    """Where the library `name` (default: the current sources') is built: under TORCH_EXTENSIONS_DIR, as torch's."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / (name or library_name())


def cached_library(name: str | None = None) -> Path | None:
    """The built library for the current sources, or None when it has not been built here yet."""
    directory = build_dir(name)
    library = directory / f"{directory.name}.so"
    return library if (directory / READY).is_file() and library.is_file() else None


def build(verbose: bool = False) -> Path:
    """Compile the library (and load it into this process); returns its path. Raises when there is no working
    compiler. Concurrent builds of the same name wait for each other (torch's lock file in the build directory)."""
    from torch.utils.cpp_extension import load

    name = library_name()
    directory = build_dir(name)
    sources = directory / "src"
    sources.mkdir(parents=True, exist_ok=True)
    for file in SOURCES + HEADERS:  # a copy: the build files then name this directory, not the checkout
        shutil.copyfile(SOURCE_DIR / file, sources / file)
    load(name=name, sources=[str(sources / file) for file in SOURCES], extra_cflags=list(CFLAGS),
         extra_ldflags=list(LDFLAGS), build_directory=str(directory), with_cuda=False, is_python_module=False,
         verbose=verbose)
    marker = directory / f"{READY}.{os.getpid()}"
    marker.write_text(name)
    marker.replace(directory / READY)
    return directory / f"{name}.so"


def _exit_with_parent(parent: int) -> None:
    """Stop this build (the compiler processes of its session included) once process `parent`, which started it, is
    gone (this process is then re-parented)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.killpg(0, signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show the compiler's output")
    parser.add_argument("--exit-with-parent", type=int, metavar="PID",
                        help="stop when process PID, which started this build, exits (background builds; run this in "
                             "a session of its own)")
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        _exit_with_parent(args.exit_with_parent)
    start = time.perf_counter()
    cached = cached_library()
    path = cached or build(verbose=args.verbose)
    print(f"{'cached' if cached else 'built'} {path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
