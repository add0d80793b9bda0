"""Paths and the app launcher for the API and browser tests."""

from __future__ import annotations

import os
from pathlib import Path

from cobra_app.bench.app_process import ROOT, running_app

__all__ = ["DEMO_MODEL", "EXAMPLES", "ROOT", "SCREENSHOTS", "running_app"]
# the offline demo model; COBRA_TEST_DEMO_MODEL points the app tests at another build of it (e.g. a candidate run)
DEMO_MODEL = Path(os.environ.get("COBRA_TEST_DEMO_MODEL") or ROOT / "assets" / "demo-model")
EXAMPLES = ROOT / "assets" / "examples"
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
