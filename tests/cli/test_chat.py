"""The terminal chat, driven through main() with stdin/stdout on a tiny model directory."""

import io
import sys

import pytest

from cobra_app import pipeline
from cobra_app.cli import chat
from cobra_app.generation import SamplingParams
from cobra_app.loading import ModelUnavailableError, save_model_dir
from tests.helpers import make_tiny_vlm, one_torch_thread, sample_image  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    vlm, tokenizer = make_tiny_vlm()
    return save_model_dir(vlm, tokenizer, tmp_path_factory.mktemp("chat") / "tiny")


@pytest.fixture
def images(tmp_path):
    paths = []
    for seed in (1, 2):
        paths.append(tmp_path / f"img{seed}.png")
        sample_image(seed=seed).save(paths[-1])
    return paths


def run_chat(monkeypatch, capsys, argv, lines):
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code = chat.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def replies(out: str) -> list[str]:
    return [line.removeprefix("Cobra: ") for line in out.replace("You: ", "\n").splitlines()
            if line.startswith("Cobra: ")]


def test_chat_commands(monkeypatch, capsys, model_dir, images):
    cobra = pipeline.load(model_dir, "cpu")
    first = "".join(cobra.stream(images[0], "What is in the image?", SamplingParams(max_new_tokens=8)))
    lines = ["What is in the image?", "Is there a dog?", "/regen", "/undo", "/history", "/reset", "/history",
             "Tell me more.", f"/image {images[1]}", "/image /no/such/file.png", "/bogus", "", "/stats", "/quit",
             "never read"]
    code, out, err = run_chat(monkeypatch, capsys, ["--model", str(model_dir), "--image", str(images[0]),
                                                    "--max-new-tokens", "8", "--device", "cpu", "--stats"], lines)
    assert code == 0, err
    assert "tiny-cobra" in out and "/regen" in out  # banner and command help
    got = replies(out)
    assert got[0] == first  # the first turn is what the stateless pipeline answers
    assert got[1] == got[2]  # /regen is greedy: the same reply again, decoded from the saved state
    assert "Removed the last exchange (1 left)." in out
    assert "You: What is in the image?\nCobra: " + first in out  # /history after /undo
    assert "Conversation cleared" in out and "(empty conversation)" in out
    assert f"New conversation about {images[1]}" in out
    assert "Cannot open image" in out and "Unknown command /bogus" in out
    assert "hits=" in out and "bytes_in_use=" in out
    assert out.count("[length: 8 new tokens") + out.count("[eos:") == 4  # --stats after each of the 4 replies
    assert "never read" not in out


def test_chat_reports_plain_errors_and_ends_at_eof(monkeypatch, capsys, model_dir):
    lines = ["/regen", "/undo", "//etc/hosts is a file", "<image>"]
    code, out, _ = run_chat(monkeypatch, capsys, ["--model", str(model_dir), "--max-new-tokens", "4",
                                                  "--max-context-tokens", "40"], lines)
    assert code == 0  # end of input quits
    assert "! There is no reply to regenerate yet." in out and "! There is nothing to undo." in out
    assert "text only" in out and len(replies(out)) == 1  # "//..." sent "/etc/hosts is a file"
    assert "! Please type a message." in out


def test_control_characters_typed_are_removed_before_the_model_reads_them(monkeypatch, capsys, model_dir, images):
    from cobra_app.sessions import SessionManager

    opened = []

    class Recording(SessionManager):
        def open_session(self):
            opened.append((self, super().open_session()))
            return opened[-1][1]

    monkeypatch.setattr("cobra_app.sessions.SessionManager", Recording)
    typed, clean = "Is there a blue\x00 diamond\x1b[0m in the image?\x07", "Is there a blue diamond[0m in the image?"
    code, out, _ = run_chat(monkeypatch, capsys, ["--model", str(model_dir), "--image", str(images[0]),
                                                  "--max-new-tokens", "8"], [typed])
    (manager, sid), = opened
    read = manager.cobra.turns.user_turn_ids(clean, first=True)
    assert code == 0 and manager.token_ids(sid)[: len(read)] == read  # the model read the message without them
    assert replies(out) == [manager.cobra.generate(images[0], clean, max_new_tokens=8)]


def test_chat_context_limit_message(monkeypatch, capsys, model_dir):
    code, out, _ = run_chat(monkeypatch, capsys, ["--model", str(model_dir), "--max-new-tokens", "30",
                                                  "--max-context-tokens", "40"],
                            ["Is there a dog?", "Is there a cat?", "Is there a cow?"])
    assert code == 0
    assert "context limit" in out and "new conversation" in out


def test_default_model_falls_back_to_the_demo_model_with_a_notice(monkeypatch, capsys, model_dir):
    real_load = pipeline.load

    def offline_load(source, device="auto", dtype="auto", **files):
        if str(source) == "cobra+3b":
            raise ModelUnavailableError("could not fetch 'cobra+3b/config.json' (offline)")
        return real_load(source, device, dtype, **files)

    monkeypatch.setattr(pipeline, "load", offline_load)
    monkeypatch.setattr(chat, "DEMO_MODEL_DIR", model_dir)
    code, out, err = run_chat(monkeypatch, capsys, ["--max-new-tokens", "3"], ["Hello", "/quit"])
    assert code == 0
    assert "could not be fetched" in err and "falling back" in err and str(model_dir) in err
    assert len(replies(out)) == 1

    monkeypatch.setattr(chat, "DEMO_MODEL_DIR", model_dir / "missing")
    code, _, err = run_chat(monkeypatch, capsys, [], ["Hello"])
    assert code == 1 and "is missing too" in err
    code, _, err = run_chat(monkeypatch, capsys, ["--model", "cobra+3b"], ["Hello"])
    assert code == 1 and "unavailable" in err  # an explicit model is not silently replaced


def test_a_second_chat_over_the_same_state_dir_resumes_from_disk(monkeypatch, capsys, model_dir, images, tmp_path):
    argv = ["--model", str(model_dir), "--image", str(images[0]), "--max-new-tokens", "6", "--device", "cpu",
            "--stats", "--state-dir", str(tmp_path / "states")]
    _, first, _ = run_chat(monkeypatch, capsys, argv, ["What is in the image?"])
    assert " prefilled" in first and ", 0 prefilled" not in first
    _, second, _ = run_chat(monkeypatch, capsys, argv, ["What is in the image?"])  # a new process, in effect
    assert ", 0 prefilled" in second and replies(second) == replies(first)
    assert list((tmp_path / "states").glob("*/*.safetensors"))


def test_bad_arguments(monkeypatch, capsys, model_dir, tmp_path):
    code, _, err = run_chat(monkeypatch, capsys, ["--model", str(model_dir), "--image", str(tmp_path / "nope.png")],
                            [])
    assert code == 2 and "cannot open image" in err
    with pytest.raises(SystemExit) as exit_:
        run_chat(monkeypatch, capsys, ["--model", str(model_dir), "--top-p", "0"], [])
    assert exit_.value.code == 2


def test_the_first_reply_never_waits_for_a_kernel_build(monkeypatch, capsys, model_dir):
    """A machine without a built kernel: the chat answers on PyTorch ops while the build runs in the background."""
    import threading

    from cobra_app.model.ops import cpu_build, cpu_kernel

    building, finish = threading.Event(), threading.Event()

    def slow_build():  # stands in for the compile (about a minute): it ends only after the chat has answered
        building.set()
        finish.wait(timeout=60)

    monkeypatch.setattr(cpu_kernel, "_loaded", False)
    monkeypatch.setattr(cpu_kernel, "_error", None)
    monkeypatch.setattr(cpu_kernel, "_background", None)
    monkeypatch.setattr(cpu_build, "cached_library", lambda: None)
    monkeypatch.setattr(cpu_kernel, "_build_then_load", slow_build)
    try:
        code, out, err = run_chat(monkeypatch, capsys, ["--model", str(model_dir), "--device", "cpu",
                                                        "--max-new-tokens", "4", "--stats"], ["Hello?", "/quit"])
        assert building.is_set() and cpu_kernel._background.is_alive()  # the build was still running at the end
    finally:
        finish.set()
    assert code == 0, err
    assert len(replies(out)) == 1
    assert "torch ops; CPU kernels building in the background (PyTorch ops until then)" in out  # the banner says so
