"""Where a release-layout run's other files are: --llm and --vision-weights for the command-line tools that load a
model (chat, probe, bench, convert), with the app's flags, environment variables and help (`serving.config.OPTIONS`)."""

from __future__ import annotations

import argparse
import os

from cobra_app.serving.config import OPTIONS

# AppConfig field -> (`load` keyword, extra spellings of the flag)
MODEL_FILE_OPTIONS = {"llm": ("llm", ()), "vision_weights": ("vision", ("--vision",))}


def add_model_file_options(parser: argparse.ArgumentParser) -> None:
    """--llm and --vision-weights (also --vision), defaulting to COBRA_LLM / COBRA_VISION."""
    for field, (dest, aliases) in MODEL_FILE_OPTIONS.items():
        flag, env, _, help_text = OPTIONS[field]
        parser.add_argument(flag, *aliases, dest=dest, default=os.environ.get(env) or None,
                            help=f"{help_text} (env {env})")


def model_file_options(args: argparse.Namespace) -> dict[str, str | None]:
    """The `load` keyword arguments the options give: {"llm": ..., "vision": ...}."""
    return {dest: getattr(args, dest) for dest, _ in MODEL_FILE_OPTIONS.values()}
