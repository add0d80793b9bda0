"""Cobra Chat, the web app: `python app.py [--model cobra+3b] [--device auto] [--port 7860] ...` (`--help` for all).

Every flag also reads an environment variable (COBRA_MODEL, COBRA_DEVICE, ...; see cobra_app/serving/config.py). This file
only wires the parts together: the model (with the offline fallback), the session manager, the handlers, the page.
It is also the Hugging Face Space's entry point (`app_file: app.py`).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home; the app works offline


def build(cfg):
    """(gr.Blocks, ModelChoice) for an AppConfig."""
    from cobra_app.sessions import SessionManager
    from cobra_app.ui.spaces import session_gpu_call
    from cobra_app.paths import EXAMPLES_DIR
    from cobra_app.ui.examples import load_examples
    from cobra_app.ui.chat_view import model_info_markdown
    from cobra_app.ui.handlers import ChatHandlers
    from cobra_app.images import ImageLimits
    from cobra_app.ui.layout import GradioNotifier, build_demo
    from cobra_app.ui.params import ParamLimits
    from cobra_app.serving.model_choice import choose_model

    choice = choose_model(cfg.model, cfg.fallback_model, device=cfg.device, dtype=cfg.dtype, llm=cfg.llm,
                          vision=cfg.vision_weights)
    manager = SessionManager(choice.cobra, memory_budget_bytes=cfg.memory_budget, idle_timeout_s=cfg.idle_timeout,
                             history=cfg.history, state_dir=cfg.state_dir, state_dir_bytes=cfg.state_dir_size,
                             gpu_call=session_gpu_call())  # ZeroGPU: each model call on a GPU worker
    atexit.register(manager.close)  # queued state files reach the disk before the process ends
    handlers = ChatHandlers(manager, image_limits=ImageLimits(cfg.max_image_bytes, cfg.max_image_pixels),
                            param_limits=ParamLimits(max_new_tokens=cfg.max_new_tokens), notifier=GradioNotifier())
    demo = build_demo(handlers, model_info_md=model_info_markdown(choice.cobra.info(), cfg.model),
                      banner_md=choice.banner(), examples=load_examples(EXAMPLES_DIR), concurrency=cfg.concurrency,
                      max_new_tokens=cfg.max_new_tokens)
    demo.queue(default_concurrency_limit=cfg.concurrency, max_size=cfg.queue_size)
    return demo, choice


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cobra_app.loading import ModelUnavailableError
    from cobra_app.serving.config import parse_config
    from cobra_app.ui.layout import CSS, THEME
    from cobra_app.serving.malloc import limit_malloc_arenas

    cfg = parse_config(argv)
    limit_malloc_arenas()  # before the server's worker threads exist
    try:
        demo, choice = build(cfg)
    except ModelUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    info = choice.cobra.info()
    logging.getLogger("app").info("serving %s on %s (%s, %s ops)%s", info["model_id"], info["device"], info["dtype"],
                                  info["ops"], " [offline fallback]" if choice.is_fallback else "")
    demo.launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share, theme=THEME, css=CSS,
                max_file_size=max(2 * cfg.max_image_bytes, 50 * 10**6), footer_links=["api"], show_error=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
