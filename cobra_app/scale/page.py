"""`python app.py --ray-address ADDR`: the page (and its /v1 API) in front of a model deployment that
`python -m cobra_app serve --ray` (or `serve run serve_config.yaml`) runs on that Ray cluster."""

from __future__ import annotations

from starlette.routing import Mount

from cobra_app.scale.application import APP_NAME, MODEL_DEPLOYMENT
from cobra_app.scale.client import RayChatBackend
from cobra_app.scale.ingress import api_route
from cobra_app.scale.messages import ModelCard
from cobra_app.scale.remote_sessions import RemoteSessions


def remote_model(cfg, model_handle) -> tuple[RemoteSessions, Mount, ModelCard]:
    """The page's sessions and its /v1 route over the model deployment's handle, and the model's card."""
    card = model_handle.card.remote().result()
    backend = RayChatBackend(model_handle)

    def score(image, question: str, answers: str) -> dict[str, float]:
        return model_handle.score.remote(image, question, answers).result()

    return RemoteSessions(backend, card, score, cfg.idle_timeout), api_route(cfg, card, backend), card


def connect(cfg) -> tuple[RemoteSessions, Mount, ModelCard]:
    """Join the Ray cluster at `cfg.ray_address` and reach the deployed model (RayServeException if none is)."""
    import ray
    from ray import serve

    ray.init(address=cfg.ray_address)
    return remote_model(cfg, serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=APP_NAME))
