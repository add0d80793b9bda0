"""`python -m cobra_app serve [--model ...] [--port 8000] [--api-key ...]`: the OpenAI-compatible API without the page,
on uvicorn; with `--ray [--replicas N ...]`, on Ray Serve in front of N model replicas (`cobra_app.scale.launch`).
Takes the app's flags and variables (`python app.py --help`); the API is at http://HOST:PORT/v1."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.routing import Mount

from cobra_app.api.backend import ChatBackend
from cobra_app.api.configured import API_PREFIX, api_settings
from cobra_app.api.server import create_api


def api_mount(cfg, cobra, backend: ChatBackend) -> Mount:
    """The API as a route to put at /v1 of a server (the page's, or this command's)."""
    return Mount(API_PREFIX, app=create_api(backend, cobra.tokenizer, api_settings(cfg, cobra.config.model_id)))


@contextlib.contextmanager
def serving_in_thread(mount: Mount, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve `mount` with uvicorn from a thread of this process on a free loopback port; yield the API's base URL
    (http://127.0.0.1:PORT/v1). For the benchmark and the tests, which read the backend's own figures."""
    import uvicorn

    from cobra_app.serving.ports import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[mount]), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"api-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the API server on port {port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}{API_PREFIX}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from cobra_app.loading import ModelUnavailableError
    from cobra_app.serving.config import parse_config
    from cobra_app.serving.malloc import limit_malloc_arenas
    from cobra_app.serving.model_choice import choose_model, start_cpu_kernels
    from cobra_app.serving.sessions import session_manager

    cfg = parse_config(argv, prog="python -m cobra_app serve",
                       description="Cobra Chat's OpenAI-compatible API alone (no page), at /v1.")
    if cfg.share:
        print("error: --share opens a link to the page; `serve` has no page (use python app.py)", file=sys.stderr)
        return 2
    if cfg.ray:  # the model as replicas on Ray Serve, this API in front of them (docs/SCALING.md)
        from cobra_app.scale.launch import serve_on_ray

        return serve_on_ray(cfg)
    limit_malloc_arenas()
    start_cpu_kernels(cfg.device)
    try:
        choice = choose_model(cfg.model, cfg.fallback_model, device=cfg.device, dtype=cfg.dtype, llm=cfg.llm,
                              vision=cfg.vision_weights)
    except ModelUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    manager = session_manager(cfg, choice.cobra)
    info = choice.cobra.info()
    logging.getLogger("serve").info("API for %s on %s (%s, %s ops)%s at http://%s:%d%s", info["model_id"],
                                    info["device"], info["dtype"], info["ops"],
                                    " [offline fallback]" if choice.is_fallback else "", cfg.host, cfg.port, API_PREFIX)
    uvicorn.run(Starlette(routes=[api_mount(cfg, choice.cobra, manager)]), host=cfg.host, port=cfg.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
