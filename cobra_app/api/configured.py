"""Where the API is mounted and its settings from the app's flags: shared by `python -m cobra_app serve`, the page's
port and the Ray Serve ingress."""

from __future__ import annotations

import time

from cobra_app.api.conversation import ApiLimits
from cobra_app.api.image_urls import read_image_url
from cobra_app.api.server import BODY_OVERHEAD, ApiSettings
from cobra_app.images import ImageLimits

API_PREFIX = "/v1"


def api_settings(cfg, model_id: str) -> ApiSettings:
    """The API's settings from the app's (an `AppConfig`)."""
    image_limits = ImageLimits(cfg.max_image_bytes, cfg.max_image_pixels)
    limits = ApiLimits(cfg.max_new_tokens, lambda url: read_image_url(url, image_limits, cfg.allow_image_urls))
    return ApiSettings(model_id=model_id, limits=limits, max_body_bytes=cfg.max_image_bytes * 4 // 3 + BODY_OVERHEAD,
                       api_key=cfg.api_key, concurrency=cfg.concurrency, queue_size=cfg.queue_size,
                       created=int(time.time()))
