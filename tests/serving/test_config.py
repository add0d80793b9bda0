"""Spec: the app's settings: flags over environment over defaults, Spaces' server variables, bad values refused."""

import pytest

from cobra_app.serving.config import AppConfig, parse_bytes, parse_config


def test_flags_override_environment_which_overrides_defaults():
    assert parse_config([], {}) == AppConfig()
    env = {"COBRA_MODEL": "assets/demo-model", "COBRA_PORT": "8000", "COBRA_SHARE": "true",
           "COBRA_MEMORY_BUDGET": "512MiB", "COBRA_CONCURRENCY": "4", "COBRA_DEVICE": "cpu", "COBRA_DTYPE": "float32"}
    cfg = parse_config([], env)
    assert (cfg.model, cfg.port, cfg.share, cfg.memory_budget, cfg.concurrency) == (
        "assets/demo-model", 8000, True, 512 * 2**20, 4)
    assert (cfg.device, cfg.dtype, cfg.host) == ("cpu", "float32", "127.0.0.1")
    cfg = parse_config(["--model", "x/y", "--port", "9000", "--host", "0.0.0.0", "--memory-budget", "1GB",
                        "--concurrency", "1", "--share"], env)
    assert (cfg.model, cfg.port, cfg.host, cfg.memory_budget, cfg.concurrency) == ("x/y", 9000, "0.0.0.0", 10**9, 1)


def test_spaces_server_variables_are_honoured():
    cfg = parse_config([], {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861"})
    assert (cfg.host, cfg.port) == ("0.0.0.0", 7861)


def test_bad_settings_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--memory-budget", "lots"], {})
    assert "not a size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config([], {"COBRA_CONCURRENCY": "0"})
    assert parse_bytes("1.5 GB") == 1_500_000_000 and parse_bytes("2kib") == 2048


def test_the_api_s_key_and_image_url_switch():
    assert (AppConfig().api_key, AppConfig().allow_image_urls) == (None, False)
    cfg = parse_config(["--allow-image-urls"], {"COBRA_API_KEY": "s3cret"})
    assert cfg.api_key == "s3cret" and cfg.allow_image_urls and "s3cret" not in repr(cfg)  # never in a log line
    assert parse_config(["--api-key", "flag"], {"COBRA_API_KEY": "env"}).api_key == "flag"
    assert parse_config([], {"COBRA_ALLOW_IMAGE_URLS": "true"}).allow_image_urls
