"""Run the app (`python app.py`, or the API alone: `python -m cobra_app serve`) in a subprocess on a free loopback
port: for the load script and the app's tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from cobra_app.serving.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


class AppURL(str):
    """The app's URL, with the path of its log and its process id."""

    def __new__(cls, url: str, log: Path, pid: int):
        self = super().__new__(cls, url)
        self.log, self.pid = log, pid
        return self


def wait_until_answering(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Return once `url` answers 200; raise (with the end of the process's log) if `proc` exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[1:3]} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer in {timeout_s} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def running_app(*args: str, env: dict | None = None, timeout_s: float = 120.0, log_path: Path | None = None,
                entry: tuple[str, ...] = (str(ROOT / "app.py"),), ready_path: str = "") -> Iterator[AppURL]:
    """Start `python app.py --host 127.0.0.1 --port FREE *args` (`entry`: another command line after `python`);
    once URL + `ready_path` answers, yield its URL (a str with `.log`, the path of its output, and `.pid`); stop it
    afterwards. The app runs offline: HF_HUB_OFFLINE=1, no analytics."""
    port = free_port()
    log_path = log_path or ROOT / "artifacts" / f"app-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
               "NO_PROXY": "127.0.0.1,localhost", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, *entry, "--host", "127.0.0.1", "--port", str(port), *args], cwd=ROOT,
                                env=environ, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_until_answering(url + ready_path, proc, log_path, timeout_s)
            yield AppURL(url, log_path, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
