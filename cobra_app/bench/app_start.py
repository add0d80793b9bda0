"""Time from `python app.py` to serving, on a machine whose CPU kernels are not built yet (a fresh clone):
`python -m cobra_app.bench.app_start [--model cobra+3b] [--repeats 3] [--cached]`.

Each start gets an empty kernel cache (TORCH_EXTENSIONS_DIR in a new temporary directory; `--cached`: this shell's
cache instead) and runs offline (HF_HUB_OFFLINE=1: the default model, as `python app.py` has it, falls back to the
bundled demo model unless it is in the hub cache). Prints, per start, the seconds until the page answers and until
the app's log says the kernels built in the background are in use, then the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from cobra_app.bench.app_process import running_app

SWITCH_LINE = "switching from PyTorch ops"


def one_start(model: str, fresh_cache: bool, build_timeout_s: float) -> tuple[float, float | None]:
    """(seconds to serve, seconds to the switch to the built kernels or None when there was nothing to build)."""
    with tempfile.TemporaryDirectory(prefix="cobra-kernels-") as cache:
        env = {"TORCH_EXTENSIONS_DIR": cache} if fresh_cache else {}
        start = time.monotonic()
        with running_app("--model", model, env=env, timeout_s=600) as url:
            served = time.monotonic() - start
            if "building them in the background" not in url.log.read_text():
                return served, None
            while SWITCH_LINE not in url.log.read_text():
                if time.monotonic() - start > build_timeout_s:
                    raise TimeoutError(f"no switch after {build_timeout_s} s:\n{url.log.read_text()[-2000:]}")
                time.sleep(0.5)
            return served, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cobra+3b", help="the app's --model (default: the app's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cached", dest="fresh", action="store_false", help="use this shell's kernel cache")
    parser.add_argument("--build-timeout", type=float, default=1200.0)
    args = parser.parse_args(argv)
    served, switched = [], []
    for i in range(args.repeats):
        s, k = one_start(args.model, args.fresh, args.build_timeout)
        served.append(s)
        switched += [k] if k is not None else []
        print(f"start {i + 1}: serving after {s:.1f} s" + (f", CPU kernels in use after {k:.0f} s" if k else ""),
              flush=True)
    print(f"median: serving after {statistics.median(served):.1f} s"
          + (f", CPU kernels in use after {statistics.median(switched):.0f} s" if switched else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
