"""Terminal chat with Cobra, on the same sessions as the UI: follow-up turns cost only their new tokens.

    python -m cobra_app chat --image photo.jpg [--model cobra+3b|PATH] [--sample --temperature 0.4 ...]
    python -m cobra_app chat --model runs/my-run --llm models/mamba-2.8b-zephyr --vision-weights models/vision

Type a message and press Enter; the reply streams. Commands:
    /image PATH   start a new conversation about another image (/image none: text only)
    /regen        a new reply to your last message        /undo    remove the last exchange
    /reset        clear the conversation, keep the image  /history show the conversation
    /stats        cache statistics                        /help    this list
    /quit         leave (also Ctrl-D; Ctrl-C stops a reply that is streaming, or quits at the prompt)
A message that starts with "/" is sent by doubling the slash ("//etc/hosts is ..." sends "/etc/hosts is ...").

Without --model the released `cobra+3b` is used; when it cannot be fetched (offline) the chat says so and falls back
to the offline demo model in `assets/demo-model`. `main(argv)` returns the exit status: 0 normally, 1 when no model
can be loaded, 2 for bad arguments or an unreadable --image.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from PIL import Image

from cobra_app.cli.model_files import add_model_file_options, model_file_options
from cobra_app.paths import DEMO_MODEL_DIR

DEFAULT_MODEL = "cobra+3b"

COMMANDS_HELP = """\
Commands: /image PATH (new conversation about that image; /image none: text only), /regen, /undo, /reset,
          /history, /stats, /help, /quit. Ctrl-C stops a streaming reply."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cobra_app chat", description="Chat with Cobra in the terminal.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--image", type=Path, help="image to talk about (omit for a text-only chat)")
    p.add_argument("--model", default=None,
                   help=f"registry id, hub path or model directory (default: {DEFAULT_MODEL}, falling back to "
                        "assets/demo-model when it cannot be fetched)")
    add_model_file_options(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16, int8 (CPU)")
    g = p.add_argument_group("sampling (greedy by default, as the release's REPL)")
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0: off")
    g.add_argument("--top-p", type=float, default=1.0, help="1.0: off")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="1.0: off")
    g.add_argument("--seed", type=int, default=None, help="seed for sampling (default: random)")
    p.add_argument("--max-context-tokens", type=int, default=None,
                   help="conversation length limit in text tokens (default: the model's llm_max_length)")
    p.add_argument("--history", choices=("release", "generated"), default="release",
                   help="release: replies kept as the release keeps them (decoded, stripped, re-tokenized); "
                        "generated: the generated token ids")
    p.add_argument("--state-dir", type=Path, default=os.environ.get("COBRA_STATE_DIR") or None,
                   help="folder where conversation states are also kept on disk (env COBRA_STATE_DIR): a "
                        "conversation another chat, the app or the API already had resumes from there")
    p.add_argument("--state-dir-size", default=os.environ.get("COBRA_STATE_DIR_SIZE") or "10GB",
                   help="most bytes of state files in --state-dir (env COBRA_STATE_DIR_SIZE)")
    p.add_argument("--stats", action="store_true", help="print timing and token counts after each reply")
    return p


def _sampling(args, parser):
    from cobra_app.generation import SamplingParams

    try:
        return SamplingParams(max_new_tokens=args.max_new_tokens, greedy=not args.sample,
                              temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              repetition_penalty=args.repetition_penalty, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))


def _load_model(args):
    """The Cobra to chat with, or None (reasons printed to stderr). The app's rule (`serving.model_choice`): without
    --model the released model, or the offline demo model with a notice when it can't be fetched; an explicit --model
    is never silently replaced."""
    from cobra_app.loading import ModelUnavailableError
    from cobra_app.serving.model_choice import choose_model, start_cpu_kernels

    start_cpu_kernels(args.device)  # the first reply never waits for a compile: PyTorch ops until the kernels are built
    source = args.model or DEFAULT_MODEL
    fallback = None if args.model else str(DEMO_MODEL_DIR)
    try:
        choice = choose_model(source, fallback, device=args.device, dtype=args.dtype, **model_file_options(args))
    except ModelUnavailableError as exc:
        print(f"error: model {source!r} is unavailable: {exc}", file=sys.stderr)
        return None
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: cannot load model {source!r}: {exc}", file=sys.stderr)
        return None
    if choice.is_fallback:
        print(f"Notice: the released model {source!r} could not be fetched ({choice.fallback_reason}).\n"
              f"Notice: falling back to the offline demo model in {choice.source} (a small model trained on "
              "synthetic scenes, not Cobra).", file=sys.stderr)
    return choice.cobra


def _open_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _read(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        print()
        return None


class _Chat:
    def __init__(self, manager, params, show_stats: bool):
        self.manager, self.params, self.show_stats = manager, params, show_stats
        self.sid = manager.open_session()

    def stream(self, reply) -> None:
        print("Cobra: ", end="", flush=True)
        try:
            for delta in reply:
                print(delta, end="", flush=True)
        except KeyboardInterrupt:
            reply.close()
            print(" [stopped]", end="")
        print()
        stats = reply.stats
        if stats is None:
            return
        if stats.finish_reason == "context":
            print("(The conversation has reached the model's context limit: /reset or /undo to go on.)")
        if self.show_stats:
            print(f"[{stats.finish_reason}: {stats.new_tokens} new tokens, {stats.prefill_tokens} prefilled, "
                  f"{stats.cached_tokens} of {stats.prompt_tokens} prompt tokens from the state store"
                  f"{f', {stats.rebuilt_tokens} rebuilt' if stats.rebuilt_tokens else ''}, "
                  f"first token {stats.ttft_s * 1000:.0f} ms, {stats.tokens_per_s:.1f} tok/s, "
                  f"context {stats.context_tokens}/{self.manager.max_context_tokens} tokens]")

    def set_image(self, arg: str) -> None:
        if not arg:
            print("usage: /image PATH  (or /image none for a text-only conversation)")
            return
        if arg.lower() == "none":
            self.manager.set_image(self.sid, None)
            print("New text-only conversation.")
            return
        try:
            image = _open_image(Path(arg).expanduser())
        except (OSError, ValueError) as exc:
            print(f"! Cannot open image {arg!r}: {exc}")
            return
        before = self.manager.history(self.sid)
        self.manager.set_image(self.sid, image)
        if before and self.manager.history(self.sid) == before:
            print("Same image: the conversation goes on.")
        else:
            print(f"New conversation about {arg}.")

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name, _, arg = line.partition(" ")
        name, arg = name.lower(), arg.strip()
        m, sid = self.manager, self.sid
        if name in ("/quit", "/exit", "/q"):
            return False
        if name == "/image":
            self.set_image(arg)
        elif name == "/regen":
            self.stream(m.regenerate(sid, self.params))
        elif name == "/undo":
            m.undo(sid)
            print(f"Removed the last exchange ({len(m.history(sid))} left).")
        elif name == "/reset":
            m.reset(sid)
            print("Conversation cleared (the image is kept).")
        elif name == "/history":
            for user, reply in m.history(sid) or [("(empty conversation)", None)]:
                print(f"You: {user}")
                if reply is not None:
                    print(f"Cobra: {reply}")
        elif name == "/stats":
            print(", ".join(f"{k}={v}" for k, v in m.stats().items()))
        elif name == "/help":
            print(COMMANDS_HELP)
        else:
            print(f"Unknown command {name}. {COMMANDS_HELP}")
        return True

    def run(self) -> None:
        from cobra_app.sessions import SessionError

        while True:
            try:
                line = _read("You: ")
            except KeyboardInterrupt:
                print()
                return
            if line is None:
                return
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/") and not line.startswith("//"):
                    if not self.command(line):
                        return
                else:
                    self.stream(self.manager.send(self.sid, line[1:] if line.startswith("//") else line,
                                                  self.params))
            except SessionError as exc:
                print(f"! {exc.user_message}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    params = _sampling(args, parser)
    image = None
    if args.image is not None:
        try:
            image = _open_image(args.image)
        except (OSError, ValueError) as exc:
            print(f"error: cannot open image {str(args.image)!r}: {exc}", file=sys.stderr)
            return 2
    cobra = _load_model(args)
    if cobra is None:
        return 1
    from cobra_app.serving.config import parse_bytes
    from cobra_app.sessions import SessionManager

    try:
        state_dir_bytes = parse_bytes(args.state_dir_size)
    except ValueError as exc:
        parser.error(f"--state-dir-size: {exc}")
    manager = SessionManager(cobra, max_context_tokens=args.max_context_tokens, history=args.history,
                             state_dir=args.state_dir, state_dir_bytes=state_dir_bytes)
    chat = _Chat(manager, params, args.stats)
    if image is not None:
        manager.set_image(chat.sid, image)
    info = cobra.info()
    kernels = f"; CPU kernels {info['cpu_kernels']}" if info["cpu_kernels"] else ""
    print(f"Cobra Chat - {info['model_id']} from {info['source']} ({info['device']}, {cobra.vlm.precision.label}, "
          f"{info['ops']} ops{kernels}); "
          f"{'image: ' + str(args.image) if image is not None else 'text only'}.")
    print(COMMANDS_HELP)
    try:
        chat.run()
    finally:
        manager.close()  # queued state files reach the disk
    return 0


if __name__ == "__main__":
    sys.exit(main())
