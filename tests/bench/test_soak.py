"""The soak script (python -m cobra_app.bench.soak) runs end to end at small values: sessions are opened, used and
closed by the app, and the app's memory is read after each cycle. Its figures are its output (docs/HARDENING.md)."""

import re

import pytest

from cobra_app.bench.soak import main
from cobra_app.paths import DEMO_MODEL_DIR

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DEMO_MODEL_DIR.is_dir(), reason="needs the demo model")]


def test_a_small_soak_closes_every_session_and_reports_each_cycle(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.5")  # the app notices closed clients within 0.5 s
    main(["--sessions", "3", "--cycles", "2", "--workers", "2", "--turns", "2", "--large-every", "2",
          "--large-size", "800", "--settle-s", "0", "--log", str(tmp_path / "app.log")])
    out = capsys.readouterr().out
    for k in (1, 2):
        assert f"cycle {k}: 3 sessions (0 could not connect), 6 requests, 0 failed" in out
    assert out.count("0 sessions open afterwards") == 2 and "0 failed requests; 0 sessions left open" in out
    stores = re.findall(r"state store ([\d.]+) of 64.0 MB", out)  # closed sessions' states stay, within the budget
    assert len(stores) == 2 and all(0 < float(mb) <= 64 for mb in stores)
