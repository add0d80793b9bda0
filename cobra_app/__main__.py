"""`python -m cobra_app COMMAND ...`: the command-line entry points, one module each (registry, not if-chains)."""

from __future__ import annotations

import importlib
import sys

# command -> (module with `main(argv) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("cobra_app.cli.chat", "terminal chat about an image, with cached state across turns"),
    "probe": ("cobra_app.cli.probe", "closed-set scoring of a JSONL probe suite, with an HTML report"),
    "serve": ("cobra_app.api.serve", "the OpenAI-compatible API (/v1) alone, without the page"),
    "bench": ("cobra_app.bench.run", "speed benchmark (prefill, decode, follow-up turns, batching)"),
    "convert": ("cobra_app.cli.convert", "write a self-contained model directory from a release-layout run"),
    "train-demo": ("cobra_app.demo.train", "train the offline demo model on synthetic scenes"),
    "eval-demo": ("cobra_app.demo.evaluate", "held-out accuracy of a model on synthetic scenes"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m cobra_app COMMAND [options]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<11} {help_text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
