"""Stop under load (issue 24): how soon a long reply ends after a Stop click, in a real browser, while another process
keeps every core busy.

    flock /tmp/cobra-heavy.lock python -m cobra_app.bench.stop_latency [--trials 20] [--max-new-tokens 512]

The app is launched on 127.0.0.1 (`python app.py`) serving the demo model made to talk at length: its layers repeated
`--depth` times and its EOS embedding zeroed, so that every reply runs to max new tokens and lasts seconds (the demo
model's own replies end after a few words, and 512 tokens of it take under a second on a quiet Zen 4: nothing to stop).
A process of `--load-threads` threads multiplying matrices keeps the cores busy for the whole run (`--no-load`: a
quiet machine). Headless Chromium (Playwright) picks an example, sets max new tokens, sends a question and, once the
reply has streamed for `--click-after` seconds, clicks Stop. The reply has ended when its text no longer changes and
the speed line under it is shown; the latency is from the click to the later of the two (page clock). A trial whose
reply was not stopped (it ended before the click, or reached max new tokens first) counts as a failure. Prints each
trial, then the median, p95 and max against the target (`--target-s`, 0.5 s); exits 1 when p95 misses it or a trial
failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cobra_app.bench.app_process import running_app
from cobra_app.paths import DEMO_MODEL_DIR

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
QUESTION = "Describe the image."
BURN = ("import sys, torch\ntorch.set_num_threads(int(sys.argv[1]))\na = torch.randn(1024, 1024)\n"
        "while True:\n    a @ a")  # every thread of the process busy until it is killed
# Page side: the times (page clock, ms) of every change of the last reply's text and of each new speed line.
OBSERVE = """() => {
  const chat = document.querySelector('#chat');
  const reply = () => {
    const r = chat.querySelectorAll('.message:not(.thought) > [data-testid="bot"] .message-content');
    return r.length ? r[r.length - 1].innerText : '';
  };
  window.__stop = {text: reply(), changed: performance.now(), lines: chat.querySelectorAll('.thought .title').length,
                   lineAt: null};
  new MutationObserver(() => {
    const s = window.__stop, now = performance.now(), text = reply();
    if (text !== s.text) { s.text = text; s.changed = now; }
    const lines = chat.querySelectorAll('.thought .title');
    if (lines.length > s.lines && s.lineAt === null) s.lineAt = now;
  }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""
CLICK_STOP = "() => { const t = performance.now(); document.querySelector('#stop').click(); return t; }"


@dataclass
class Trial:
    """One Stop click; times in seconds from the click (page clock)."""

    latency_s: float  # click -> the reply's text stopped changing and its speed line was shown
    text_s: float  # click -> the last change of the reply's text
    line_s: float  # click -> the speed line shown
    line: str  # the speed line under the reply: it ends with "stopped" when Stop ended the reply

    @property
    def stopped(self) -> bool:
        return self.line.endswith("stopped")


def talking_demo_model(out_dir: Path, depth: int) -> Path:
    """The demo model made to talk at length: its Mamba layers repeated `depth` times (a slower model, so that a
    reply of max new tokens lasts seconds, as a larger model's does) and its EOS embedding, tied to the output layer,
    zeroed (a greedy reply never ends before max new tokens). What it says does not matter here."""
    import torch

    from cobra_app.loading import read_model, save_model_dir
    from cobra_app.model.cobra import CobraVLM

    vlm, tokenizer = read_model(DEMO_MODEL_DIR, device="cpu", dtype="float32")
    layers = vlm.config.llm.n_layer
    config = dataclasses.replace(vlm.config, llm=dataclasses.replace(vlm.config.llm, n_layer=layers * depth))
    deep, weights = CobraVLM(config), vlm.state_dict()
    prefix = "llm.backbone.layers."

    def source(key: str) -> str:  # layer i of the deep model is layer i % layers of the demo model
        if not key.startswith(prefix):
            return key
        index, rest = key[len(prefix):].split(".", 1)
        return f"{prefix}{int(index) % layers}.{rest}"

    deep.load_state_dict({key: weights[source(key)] for key in deep.state_dict()})
    with torch.no_grad():
        deep.llm.backbone.embedding.weight[tokenizer.eos_token_id].zero_()
    return save_model_dir(deep, tokenizer, out_dir)


@contextlib.contextmanager
def busy_cores(threads: int) -> Iterator[subprocess.Popen | None]:
    """Another process keeping `threads` cores busy while the block runs (0: none)."""
    if threads <= 0:
        yield None
        return
    proc = subprocess.Popen([sys.executable, "-c", BURN, str(threads)])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


SET_ATTEMPTS = 10


def prepare(page, max_new_tokens: int) -> None:
    """Pick the first example and set max new tokens (the Parameters panel)."""
    page.locator("#examples button").first.click()
    page.wait_for_function("() => document.querySelectorAll('#image-input img').length > 0")
    page.locator("#params-panel").click()
    box = page.locator("#max-new-tokens input[type=number]")
    set_to = f"() => document.querySelector('#max-new-tokens input[type=number]').value == '{max_new_tokens}'"
    for _ in range(SET_ATTEMPTS):  # a busy page may still re-render the panel and reset what was typed
        box.fill(str(max_new_tokens))
        box.press("Enter")
        page.wait_for_timeout(1000)
        if page.evaluate(set_to):
            return
    raise RuntimeError(f"max new tokens did not stay at {max_new_tokens} after {SET_ATTEMPTS} attempts")


def one_trial(page, click_after_s: float, timeout_ms: int) -> Trial:
    """Send, let the reply stream for `click_after_s`, click Stop, wait for the reply to end; then Clear."""
    page.evaluate(OBSERVE)
    page.fill("#message textarea", QUESTION)
    page.locator("#send").click()
    page.wait_for_function("() => window.__stop.text.length > 0", timeout=timeout_ms)  # streaming
    page.wait_for_timeout(click_after_s * 1000)
    clicked = page.evaluate(CLICK_STOP)
    page.wait_for_function("() => window.__stop.lineAt !== null", timeout=timeout_ms)
    page.wait_for_timeout(1000)  # any change still coming would move the end
    stop = page.evaluate("() => window.__stop")
    line = page.locator("#chat .thought .title").last.inner_text()
    text_s, line_s = (stop["changed"] - clicked) / 1000, (stop["lineAt"] - clicked) / 1000
    trial = Trial(max(text_s, line_s), text_s, line_s, line.strip())
    page.locator("#clear").click()
    page.wait_for_function("() => document.querySelectorAll('#chat .message').length === 0", timeout=timeout_ms)
    return trial


def run_trials(url: str, args: argparse.Namespace) -> list[Trial]:
    from playwright.sync_api import sync_playwright

    trials = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(args.timeout_s * 1000)
        page.goto(url)
        page.wait_for_selector("#chat")
        prepare(page, args.max_new_tokens)
        one_trial(page, args.click_after, args.timeout_s * 1000)  # warm-up, not counted
        for i in range(args.trials):
            trial = one_trial(page, args.click_after, args.timeout_s * 1000)
            trials.append(trial)
            print(f"trial {i + 1:>2}: reply ended {trial.latency_s:6.3f} s after the click (text {trial.text_s:6.3f} s,"
                  f" speed line {trial.line_s:6.3f} s){'' if trial.stopped else '  NOT STOPPED: ' + trial.line}",
                  flush=True)
        browser.close()
    return trials


def report(trials: list[Trial], target_s: float) -> bool:
    """Print the summary; whether p95 meets the target and every trial was stopped."""
    latencies = [t.latency_s for t in trials]
    p50, p95 = np.percentile(latencies, [50, 95])
    failed = sum(not t.stopped for t in trials)
    ok = p95 <= target_s and failed == 0
    print(f"\n{len(trials)} trials: median {p50:.3f} s, p95 {p95:.3f} s, max {max(latencies):.3f} s; "
          f"{failed} not stopped; target p95 <= {target_s} s: {'met' if ok else 'MISSED'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--click-after", type=float, default=1.0, help="seconds of streaming before the click")
    parser.add_argument("--depth", type=int, default=4, help="the talking model has the demo model's layers this "
                        "many times over")
    parser.add_argument("--load-threads", type=int, default=os.cpu_count(),
                        help="threads of the process keeping the cores busy (default: one per core)")
    parser.add_argument("--no-load", dest="load_threads", action="store_const", const=0, help="a quiet machine")
    parser.add_argument("--target-s", type=float, default=0.5)
    parser.add_argument("--timeout-s", type=float, default=180.0, help="longest wait for any step of a trial")
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args(argv)

    print(f"Stop latency: {args.trials} trials, max new tokens {args.max_new_tokens}, demo model x{args.depth} deep, "
          f"click after "
          f"{args.click_after} s of streaming, {args.load_threads} busy threads in another process "
          f"({os.cpu_count()} cores)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = talking_demo_model(Path(tmp) / "talking-demo-model", args.depth)
        with running_app("--model", str(model), log_path=Path(tmp) / "app.log") as url, \
                busy_cores(args.load_threads):
            trials = run_trials(url, args)
    return 0 if report(trials, args.target_s) else 1


if __name__ == "__main__":
    sys.exit(main())
