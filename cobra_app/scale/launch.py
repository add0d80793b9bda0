"""`python -m cobra_app serve --ray [--replicas N] [--num-cpus C] [--num-gpus G] [--ray-address ADDR] ...`: the
OpenAI-compatible API on Ray Serve, on http://HOST:PORT/v1 (docs/SCALING.md)."""

from __future__ import annotations

import logging

from cobra_app.scale.application import APP_NAME, build_app

log = logging.getLogger(__name__)


def serve_on_ray(cfg) -> int:
    """Join the Ray cluster at `cfg.ray_address` (or start a local one), deploy the application, serve until
    interrupted."""
    import ray
    from ray import serve

    ray.init(address=cfg.ray_address)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    replicas = (f"{cfg.replicas}" if cfg.min_replicas is None else f"{cfg.min_replicas}-{cfg.max_replicas} (autoscaled)")
    log.info("serving %s on Ray Serve: %s replica(s), API at http://%s:%d/v1", cfg.model, replicas, cfg.host, cfg.port)
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=True)
    return 0
