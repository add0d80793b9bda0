"""The Stop-latency script (python -m cobra_app.bench.stop_latency): its model talks at length, and one trial runs end
to end in a real browser. The figures themselves are the script's output (docs/HARDENING.md), not asserted here."""

import shutil

import pytest

from cobra_app.bench.stop_latency import CHROMIUM, main, talking_demo_model
from cobra_app.paths import DEMO_MODEL_DIR, EXAMPLES_DIR

pytestmark = pytest.mark.skipif(not DEMO_MODEL_DIR.is_dir(), reason="needs the demo model")


def test_the_talking_model_is_the_demo_model_deeper_and_never_ends_a_reply_early(tmp_path):
    from cobra_app.pipeline import load

    demo, talker = load(DEMO_MODEL_DIR, device="cpu"), load(talking_demo_model(tmp_path / "m", depth=2), device="cpu")
    assert talker.config.llm.n_layer == 2 * demo.config.llm.n_layer
    reply = talker.generate(EXAMPLES_DIR / "scene-1.png", "How many objects are there?", max_new_tokens=48)
    assert len(talker.turns.text_ids(reply)) >= 40  # (the demo model itself answers in a word or two)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed")
def test_one_trial_runs_end_to_end(capsys):
    main(["--trials", "1", "--no-load", "--click-after", "0.5"])  # the default depth: a reply lasts seconds
    out = capsys.readouterr().out
    assert "trial  1: reply ended" in out and "1 trials: median" in out and "0 not stopped" in out
