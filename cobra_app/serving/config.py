"""The app's settings: command-line flags, each with an environment variable (flag > variable > default).

    python app.py --model cobra+3b --device auto --dtype auto --host 127.0.0.1 --port 7860 --share \
                  --memory-budget 2GB --concurrency 2 --state-dir /data/cobra-states
    python app.py --model runs/my-run --llm models/mamba-2.8b-zephyr --vision-weights models/vision   # offline run

On Hugging Face Spaces the platform sets GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; they are honoured when neither the
flag nor COBRA_HOST / COBRA_PORT is given.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from cobra_app.paths import DEMO_MODEL_DIR

ROUTING_POLICIES = ("affinity", "random")

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(text: str | int) -> int:
    """'2GB', '512 MiB', '1e9', 3000 -> bytes (decimal units: 1 GB = 10**9 B; binary with 'iB')."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
        if not m or m.group(2) not in _UNITS:
            raise ValueError(f"not a size: {text!r} (examples: 2GB, 512MiB, 1500000000)")
        value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return value


def _history(text: str) -> str:
    from cobra_app.sessions import HISTORY_MODES

    if text not in HISTORY_MODES:
        raise ValueError(f"must be one of {', '.join(HISTORY_MODES)}, got {text!r}")
    return text


def _routing(text: str) -> str:
    if text not in ROUTING_POLICIES:
        raise ValueError(f"must be one of {', '.join(ROUTING_POLICIES)}, got {text!r}")
    return text


def _truthy(text: str) -> bool:
    return str(text).strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class AppConfig:
    model: str = "cobra+3b"  # registry id, hub path or local directory
    llm: str | None = None  # a release-layout run's LLM config + tokenizer: local directory or hub repo
    vision_weights: str | None = None  # a release-layout run's frozen vision weights: local directory or hub cache
    device: str = "auto"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    memory_budget: int = 2 * 10**9  # bytes the sessions may keep (state snapshots, image embeddings)
    concurrency: int = 4  # replies and probes in progress at once (they interleave token by token); the rest queue
    queue_size: int = 64  # waiting events beyond this are refused with "queue full"
    idle_timeout: float = 1800.0  # seconds before an idle conversation is closed
    max_new_tokens: int = 512  # ceiling for the "max new tokens" parameter (UI and API)
    max_image_bytes: int = 20 * 10**6  # uploads larger than this are refused before decoding
    max_image_pixels: int = 40 * 10**6  # images with more pixels than this are refused before decoding
    fallback_model: str = str(DEMO_MODEL_DIR)  # used (with a banner) when `model` cannot be fetched
    history: str = "release"  # how replies enter the history: as the release keeps them, or the generated ids
    state_dir: str | None = None  # folder of the disk tier of the state store (None: states in memory only)
    state_dir_size: int = 10 * 10**9  # most bytes of state files kept there
    api_key: str | None = field(default=None, repr=False)  # the OpenAI-compatible API's key (None: open)
    allow_image_urls: bool = False  # API requests may name http(s) images for the server to fetch
    ray: bool = False  # `serve`: run the model as replicas on Ray Serve (docs/SCALING.md)
    ray_address: str | None = None  # the Ray cluster to join ("auto": this node's; None: `serve --ray` starts one)
    replicas: int = 1  # model replicas on Ray Serve (a fixed number; min/max_replicas switch on autoscaling)
    num_cpus: float = 1.0  # CPUs per replica (its torch threads: at least one)
    num_gpus: float = 0.0  # GPUs per replica
    min_replicas: int | None = None  # with max_replicas: Serve's autoscaling between them instead of `replicas`
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0  # autoscaling aims at this many requests in progress per replica
    routing: str = "affinity"  # affinity (a conversation goes where its state is) or random (the baseline)
    affinity_queue_limit: int | None = None  # a conversation's replica with more requests is passed over (None:
    # --concurrency)

    @property
    def most_replicas(self) -> int:
        """The most model replicas on Ray Serve (autoscaled: the upper bound)."""
        return self.max_replicas if self.max_replicas is not None else self.replicas


# field -> (flag, env var, parser, help)
OPTIONS: dict[str, tuple[str, str, object, str]] = {
    "model": ("--model", "COBRA_MODEL", str, "registry id (cobra+3b), hub path owner/repo[/sub] or local model dir"),
    "llm": ("--llm", "COBRA_LLM", str, ("LLM files of a release-layout run: a local mamba_ssm-format directory "
                                        "(config.json + tokenizer files) or a hub repo (default: the run's LLM "
                                        "backbone repo on the hub)")),
    "vision_weights": ("--vision-weights", "COBRA_VISION", str, ("frozen vision weights of a release-layout run: a "
                                                                 "directory holding <timm model name>.safetensors per "
                                                                 "tower, or a hub cache holding timm's repos "
                                                                 "(default: timm's hub weights)")),
    "device": ("--device", "COBRA_DEVICE", str, "auto, cpu, cuda or cuda:N"),
    "dtype": ("--dtype", "COBRA_DTYPE", str, "auto, float32, bfloat16, float16 or int8 (CPU)"),
    "host": ("--host", "COBRA_HOST", str, "address to listen on (0.0.0.0 for every interface)"),
    "port": ("--port", "COBRA_PORT", int, "port to listen on"),
    "share": ("--share", "COBRA_SHARE", _truthy, "also open a public gradio.live link"),
    "memory_budget": ("--memory-budget", "COBRA_MEMORY_BUDGET", parse_bytes,
                      "bytes for cached conversation states and image embeddings, e.g. 2GB"),
    "concurrency": ("--concurrency", "COBRA_CONCURRENCY", int, "model calls (replies, probes) served at once"),
    "queue_size": ("--queue-size", "COBRA_QUEUE_SIZE", int, "most requests waiting in the queue"),
    "idle_timeout": ("--idle-timeout", "COBRA_IDLE_TIMEOUT", float, "seconds before an idle conversation is closed"),
    "max_new_tokens": ("--max-new-tokens", "COBRA_MAX_NEW_TOKENS", int, "largest reply length a user may ask for"),
    "max_image_bytes": ("--max-image-bytes", "COBRA_MAX_IMAGE_BYTES", parse_bytes, "largest image file accepted"),
    "max_image_pixels": ("--max-image-pixels", "COBRA_MAX_IMAGE_PIXELS", int, "most pixels an image may have"),
    "fallback_model": ("--fallback-model", "COBRA_FALLBACK_MODEL", str,
                       "model used when --model cannot be fetched (default: the bundled offline demo model)"),
    "history": ("--history", "COBRA_HISTORY", _history,
                ("release: replies kept as the release keeps them (decoded, stripped, re-tokenized); generated: "
                 "the generated token ids")),
    "state_dir": ("--state-dir", "COBRA_STATE_DIR", str,
                  "folder where conversation states are also kept on disk, so they survive restarts"),
    "state_dir_size": ("--state-dir-size", "COBRA_STATE_DIR_SIZE", parse_bytes,
                       "most bytes of state files in --state-dir, least recently used removed first"),
    "api_key": ("--api-key", "COBRA_API_KEY", str,
                ("key the OpenAI-compatible API (/v1) requires as 'Authorization: Bearer KEY' (prefer the variable: "
                 "a flag shows in the process list)")),
    "allow_image_urls": ("--allow-image-urls", "COBRA_ALLOW_IMAGE_URLS", _truthy,
                         ("let API requests give http(s) image URLs for the server to fetch (it then fetches any "
                          "address its callers name)")),
    "ray": ("--ray", "COBRA_RAY", _truthy, "serve: run the model as replicas on Ray Serve (needs requirements-ray.txt)"),
    "ray_address": ("--ray-address", "COBRA_RAY_ADDRESS", str,
                    ("Ray cluster to join ('auto' for this node's, or HOST:PORT); serve --ray starts a local one "
                     "without it; app.py: the cluster where serve --ray runs the model")),
    "replicas": ("--replicas", "COBRA_REPLICAS", int, "model replicas (serve --ray)"),
    "num_cpus": ("--num-cpus", "COBRA_NUM_CPUS", float, "CPUs per model replica, its torch threads (serve --ray)"),
    "num_gpus": ("--num-gpus", "COBRA_NUM_GPUS", float, "GPUs per model replica (serve --ray)"),
    "min_replicas": ("--min-replicas", "COBRA_MIN_REPLICAS", int, "autoscaling: fewest model replicas (serve --ray)"),
    "max_replicas": ("--max-replicas", "COBRA_MAX_REPLICAS", int, "autoscaling: most model replicas (serve --ray)"),
    "target_ongoing_requests": ("--target-ongoing-requests", "COBRA_TARGET_ONGOING_REQUESTS", float,
                                "autoscaling: requests in progress per replica to aim at (serve --ray)"),
    "routing": ("--routing", "COBRA_ROUTING", _routing,
                "affinity: each conversation to the replica holding its state; random: a baseline (serve --ray)"),
    "affinity_queue_limit": ("--affinity-queue-limit", "COBRA_AFFINITY_QUEUE_LIMIT", int,
                             ("a conversation's replica with more requests than this in progress or waiting is "
                              "passed over for the least loaded one (serve --ray; default --concurrency)")),
}


def parse_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, *,
                 prog: str = "app.py", description: str = "Cobra Chat: chat with Cobra about an image.") -> AppConfig:
    """Flags > COBRA_* environment variables > (for host/port) GRADIO_SERVER_NAME/PORT > defaults."""
    import os

    environ = os.environ if environ is None else environ
    defaults = AppConfig()
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for name, (flag, env, convert, help_text) in OPTIONS.items():
        default = getattr(defaults, name)
        if convert is _truthy:  # a switch
            parser.add_argument(flag, action="store_true", default=None, help=f"{help_text} (env {env})")
        else:
            parser.add_argument(flag, default=None, help=f"{help_text} (env {env}; default {default})")
    args = parser.parse_args(argv)
    values = {}
    fallbacks = {"host": "GRADIO_SERVER_NAME", "port": "GRADIO_SERVER_PORT"}
    for f in fields(AppConfig):
        flag, env, convert, _ = OPTIONS[f.name]
        raw = getattr(args, f.name)
        if raw is None:
            raw = environ.get(env) or (environ.get(fallbacks[f.name]) if f.name in fallbacks else None)
        if raw is None or raw == "":
            continue
        try:
            values[f.name] = raw if isinstance(raw, bool) else convert(raw)
        except ValueError as exc:
            parser.error(f"{flag} / {env}: {exc}")
    cfg = AppConfig(**values)
    for name in ("port", "concurrency", "queue_size", "max_new_tokens", "max_image_pixels", "replicas"):
        if getattr(cfg, name) < 1:
            parser.error(f"{OPTIONS[name][0]} must be at least 1, got {getattr(cfg, name)}")
    for name in ("num_cpus", "num_gpus"):
        if getattr(cfg, name) < 0:
            parser.error(f"{OPTIONS[name][0]} must be at least 0, got {getattr(cfg, name)}")
    if (cfg.min_replicas is None) != (cfg.max_replicas is None):
        parser.error("--min-replicas and --max-replicas go together (autoscaling between them)")
    if cfg.min_replicas is not None and not 0 <= cfg.min_replicas <= cfg.max_replicas >= 1:
        parser.error(f"need 0 <= --min-replicas <= --max-replicas >= 1, got {cfg.min_replicas} and {cfg.max_replicas}")
    if cfg.affinity_queue_limit is not None and cfg.affinity_queue_limit < 0:
        parser.error(f"--affinity-queue-limit must be at least 0, got {cfg.affinity_queue_limit}")
    if cfg.idle_timeout <= 0:
        parser.error(f"--idle-timeout must be positive, got {cfg.idle_timeout}")
    return cfg
