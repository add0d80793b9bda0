"""The Ray Serve application: the model deployment (N `ModelReplica`s routed by conversation, sharing a state
directory) behind the OpenAI-compatible ingress.

    build_app(settings, build_model) -> serve.Application      for `serve.run`, `python -m cobra_app serve --ray`
    app_builder(args)                                          for `serve run` with a config file (args: ScaleSettings
                                                               fields)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import ray
from ray import serve
from ray.serve.config import AutoscalingConfig, DeploymentActorConfig, RequestRouterConfig

from cobra_app.scale.mobility import DIRECTORY_ACTOR, StateDirectory
from cobra_app.scale.replica import ChatModel, ModelReplica
from cobra_app.scale.router import DEFAULT_QUEUE_LIMIT, ConversationRouter, RandomRouter

MODEL_DEPLOYMENT = "ModelReplica"
ROUTERS = {"affinity": ConversationRouter, "random": RandomRouter}


@dataclass(frozen=True)
class ScaleSettings:
    """How the model deployment is laid out. Resources are per replica; `min_replicas`/`max_replicas` switch on
    Serve's autoscaling (towards `target_ongoing_requests` per replica) instead of a fixed `replicas`."""

    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_ongoing_requests: int = 8  # Serve's per-replica cap; the router's affinity gives way before it
    queue_limit: int = DEFAULT_QUEUE_LIMIT  # a conversation's replica with more queued than this is passed over
    routing: str = "affinity"  # or "random" (the baseline)
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0

    def __post_init__(self) -> None:
        if self.routing not in ROUTERS:
            raise ValueError(f"routing must be one of {sorted(ROUTERS)}, got {self.routing!r}")
        if self.replicas < 1 or self.num_cpus < 0 or self.num_gpus < 0 or self.max_ongoing_requests < 1:
            raise ValueError(f"replicas >= 1, num_cpus/num_gpus >= 0 and max_ongoing_requests >= 1: got {self}")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("autoscaling needs both min_replicas and max_replicas")

    @property
    def torch_threads(self) -> int:
        """Intra-op threads of a CPU replica: its CPU share, at least one."""
        return max(1, int(self.num_cpus))

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> ScaleSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    def deployment_options(self) -> dict:
        """`serve.deployment` options of the model deployment."""
        scaling = ({"autoscaling_config": AutoscalingConfig(
            min_replicas=self.min_replicas, max_replicas=self.max_replicas,
            target_ongoing_requests=self.target_ongoing_requests)}
            if self.min_replicas is not None else {"num_replicas": self.replicas})
        return {
            "name": MODEL_DEPLOYMENT,
            **scaling,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "request_router_config": RequestRouterConfig(
                request_router_class=ROUTERS[self.routing],
                request_router_kwargs={"queue_limit": self.queue_limit} if self.routing == "affinity" else {}),
            "deployment_actors": [DeploymentActorConfig(
                name=DIRECTORY_ACTOR, actor_class=ray.remote(StateDirectory), actor_options={"num_cpus": 0})],
        }


def model_deployment(settings: ScaleSettings, build_model: Callable[[], ChatModel]) -> serve.Application:
    """The model replicas, bound to the function that builds each replica's model (called once per replica)."""
    deployment = serve.deployment(ModelReplica).options(**settings.deployment_options())
    return deployment.bind(build_model, worker_threads=settings.max_ongoing_requests)
