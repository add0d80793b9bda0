"""--llm and --vision-weights (COBRA_LLM, COBRA_VISION): the same options in the app and in the command-line tools,
handed to `load` for the requested model only (the offline demo model is self-contained)."""

import argparse
import io
import json

import pytest

import app
from cobra_app.bench.release_run import release_checkpoint, write_run_dir
from cobra_app.cli import chat, model_files, probe
from cobra_app.serving.config import parse_config
from cobra_app.serving.model_choice import choose_model
from tests.helpers import TINY_LLM_BACKBONE, make_tiny_vlm, offline_hub_cache, refuse_network, register_tiny_llm


def test_app_flags_override_their_environment_variables():
    assert (parse_config([], {}).llm, parse_config([], {}).vision_weights) == (None, None)
    env = {"COBRA_LLM": "models/llm", "COBRA_VISION": "models/vision"}
    cfg = parse_config([], env)
    assert (cfg.llm, cfg.vision_weights) == ("models/llm", "models/vision")
    cfg = parse_config(["--llm", "owner/mamba", "--vision-weights", "other"], env)
    assert (cfg.llm, cfg.vision_weights) == ("owner/mamba", "other")


def test_command_line_tools_share_the_options_and_variables(monkeypatch):
    monkeypatch.setenv("COBRA_LLM", "from-env")
    monkeypatch.delenv("COBRA_VISION", raising=False)
    parser = argparse.ArgumentParser()
    model_files.add_model_file_options(parser)
    assert model_files.model_file_options(parser.parse_args([])) == {"llm": "from-env", "vision": None}
    args = parser.parse_args(["--llm", "d", "--vision", "v"])
    assert model_files.model_file_options(args) == {"llm": "d", "vision": "v"}
    assert chat.build_parser().parse_args(["--vision-weights", "w"]).vision == "w"
    assert probe.parse_args(["suite.jsonl", "--llm", "d"]).llm == "d"


def test_the_options_reach_the_requested_load_only(tmp_path):
    calls = []

    def loader(source, **options):
        calls.append((source, options))
        if source == "cobra+3b":
            from cobra_app.loading import ModelUnavailableError

            raise ModelUnavailableError("offline")
        return object()

    (tmp_path / "demo").mkdir()
    choose_model(str(tmp_path), None, loader=loader, llm="L", vision="V")
    choose_model("cobra+3b", str(tmp_path / "demo"), loader=loader, llm="L", vision="V")
    assert calls[0] == (str(tmp_path), {"device": "auto", "dtype": "auto", "llm": "L", "vision": "V"})
    assert calls[-1] == (str(tmp_path / "demo"), {"device": "auto", "dtype": "auto"})


def test_the_app_hands_its_settings_to_the_model_choice(monkeypatch):
    seen = {}

    def choose(*args, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop before the page is built

    monkeypatch.setattr("cobra_app.serving.model_choice.choose_model", choose)
    with pytest.raises(KeyboardInterrupt):
        app.build(parse_config(["--llm", "models/llm", "--vision-weights", "models/vision"], {}))
    assert (seen["llm"], seen["vision"]) == ("models/llm", "models/vision")


def test_terminal_chat_on_a_run_whose_llm_files_are_local(tmp_path, monkeypatch, capsys):
    vlm, tokenizer = make_tiny_vlm()
    offline_hub_cache(monkeypatch, tmp_path / "empty-cache")
    register_tiny_llm(monkeypatch)
    calls = refuse_network(monkeypatch)
    run = write_run_dir(tmp_path / "run", vlm, TINY_LLM_BACKBONE, release_checkpoint(vlm, with_vision=True))
    llm = tmp_path / "llm"
    tokenizer.save_pretrained(llm)
    (llm / "config.json").write_text(json.dumps(vlm.config.llm.to_mamba_ssm()))
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n/quit\n"))
    assert chat.main(["--model", str(run), "--device", "cpu", "--max-new-tokens", "3"]) == 1
    assert "--llm" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n/quit\n"))
    assert chat.main(["--model", str(run), "--llm", str(llm), "--device", "cpu", "--max-new-tokens", "3"]) == 0
    assert "Cobra: " in capsys.readouterr().out
    assert calls == []
