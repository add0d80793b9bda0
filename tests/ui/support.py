"""Paths, the app launcher and small helpers shared by the app's tests."""

from __future__ import annotations

import os
from pathlib import Path

from cobra_app.bench.app_process import ROOT, running_app
from cobra_app.paths import DEMO_MODEL_DIR, EXAMPLES_DIR
from cobra_app.ui.handlers import Notifier

__all__ = ["DEMO_MODEL", "EXAMPLES", "ROOT", "SCREENSHOTS", "RecordingNotifier", "last", "running_app"]
# the offline demo model; COBRA_TEST_DEMO_MODEL points the app tests at another build of it (e.g. a candidate run)
DEMO_MODEL = Path(os.environ.get("COBRA_TEST_DEMO_MODEL") or DEMO_MODEL_DIR)
EXAMPLES = EXAMPLES_DIR
SCREENSHOTS = ROOT / "artifacts" / "screenshots"


class RecordingNotifier(Notifier):
    """Keeps the notices the handlers raise, in order (instead of Gradio's toasts)."""

    def __init__(self):
        self.warnings: list[str] = []
        self.infos: list[str] = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def info(self, message: str) -> None:
        self.infos.append(message)


def last(stream):
    """The final value of a handler's stream (the state the UI is left in)."""
    out = None
    for out in stream:
        pass
    return out
