"""Cobra Chat, the web app: `python app.py [--model cobra+3b] [--device auto] [--port 7860] ...` (`--help` for all).

Every flag also reads an environment variable (COBRA_MODEL, COBRA_DEVICE, ...; see cobra_app/serving/config.py). This file
only wires the parts together: the model (with the offline fallback), the session manager, the handlers, the page,
and the OpenAI-compatible API at /v1 on the same port. It is also the Hugging Face Space's entry point
(`app_file: app.py`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home; the app works offline


def build(cfg):
    """(gr.Blocks, the API's route at /v1, ModelChoice) for an AppConfig."""
    from cobra_app.api.serve import api_mount
    from cobra_app.serving.model_choice import choose_model
    from cobra_app.serving.sessions import session_manager
    from cobra_app.serving.spaces import session_gpu_call

    choice = choose_model(cfg.model, cfg.fallback_model, device=cfg.device, dtype=cfg.dtype, llm=cfg.llm,
                          vision=cfg.vision_weights)
    manager = session_manager(cfg, choice.cobra, gpu_call=session_gpu_call())  # ZeroGPU: model calls on a GPU worker
    demo = build_page(cfg, manager, choice.cobra.info, choice.banner())  # read at each page load: the ops path changes
    return demo, api_mount(cfg, choice.cobra, manager), choice  # the API and the page share one state store


def build_on_ray(cfg):
    """(gr.Blocks, the API's route at /v1, ModelCard) in front of the model that `python -m cobra_app serve --ray`
    runs on the Ray cluster at cfg.ray_address (docs/SCALING.md)."""
    from cobra_app.scale.page import connect

    sessions, api, card = connect(cfg)
    return build_page(cfg, sessions, card.info, card.banner), api, card


def build_page(cfg, manager, info: dict | Callable[[], dict], banner: str):
    """The page over `manager`: a SessionManager, or the sessions of a model served on Ray (RemoteSessions); `info`:
    the model's `info()`, or a function returning it (read again at every page load)."""
    from cobra_app.images import ImageLimits
    from cobra_app.paths import EXAMPLES_DIR
    from cobra_app.ui.chat_view import model_info_markdown
    from cobra_app.ui.examples import load_examples
    from cobra_app.ui.handlers import ChatHandlers
    from cobra_app.ui.layout import GradioNotifier, build_demo
    from cobra_app.ui.params import ParamLimits

    handlers = ChatHandlers(manager, image_limits=ImageLimits(cfg.max_image_bytes, cfg.max_image_pixels),
                            param_limits=ParamLimits(max_new_tokens=cfg.max_new_tokens), notifier=GradioNotifier())

    def panel() -> str:
        return model_info_markdown(info() if callable(info) else info, cfg.model)

    demo = build_demo(handlers, model_info_md=panel, banner_md=banner, examples=load_examples(EXAMPLES_DIR),
                      concurrency=cfg.concurrency, max_new_tokens=cfg.max_new_tokens)
    demo.queue(default_concurrency_limit=cfg.concurrency, max_size=cfg.queue_size)
    return demo


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cobra_app.loading import ModelUnavailableError
    from cobra_app.serving.config import parse_config
    from cobra_app.serving.malloc import keep_releasing_free_memory, limit_malloc_arenas
    from cobra_app.serving.model_choice import start_cpu_kernels
    from cobra_app.ui.layout import CSS, THEME

    cfg = parse_config(argv)
    limit_malloc_arenas()  # before the server's worker threads exist
    keep_releasing_free_memory()
    if cfg.ray_address:
        demo, api, card = build_on_ray(cfg)
        info, where = card.info, f" [Ray Serve at {cfg.ray_address}]"
    else:
        start_cpu_kernels(cfg.device)  # never a compile before serving: PyTorch ops until the kernels are built
        try:
            demo, api, choice = build(cfg)
        except ModelUnavailableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        info, where = choice.cobra.info(), " [offline fallback]" if choice.is_fallback else ""
    logging.getLogger("app").info("serving %s on %s (%s weights, %s compute: %s; %s ops%s)%s; OpenAI-compatible API at "
                                  "/v1", info["model_id"], info["device"], info["dtype"], info.get("compute_dtype"),
                                  info.get("precision"), info["ops"],
                                  f", CPU kernels {info['cpu_kernels']}" if info.get("cpu_kernels") else "", where)
    # The API's routes go first in the server's route list (FastAPI's `routes`), so /v1 is matched before the page's.
    demo.launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share, theme=THEME, css=CSS,
                max_file_size=max(2 * cfg.max_image_bytes, 50 * 10**6), footer_links=["api"], show_error=False,
                app_kwargs={"routes": [api]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
