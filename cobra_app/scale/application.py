"""The Ray Serve application: the OpenAI-compatible ingress in front of the model deployment (N `ModelReplica`s
routed by conversation, sharing a state directory), laid out by the app's settings (an `AppConfig`: --replicas,
--num-cpus, --num-gpus, --min/--max-replicas, --target-ongoing-requests, --routing, --concurrency per replica).

    build_app(cfg, build_model=None) -> serve.Application      `python -m cobra_app serve --ray`, tests, the bench
    app_builder(args) -> serve.Application                     `serve run serve_config.yaml` (args: the app's settings)
    model_deployment(cfg, build_model=None)                    the replicas alone, each loading `cfg.model`
    model_options(cfg) -> dict                                 the deployment's `serve.deployment` options
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from functools import partial

import ray
from ray import serve
from ray.serve.config import AutoscalingConfig, DeploymentActorConfig, RequestRouterConfig

from cobra_app.scale.ingress import OpenAIIngress
from cobra_app.scale.mobility import DIRECTORY_ACTOR, StateDirectory
from cobra_app.scale.replica import ChatModel, ModelReplica
from cobra_app.scale.router import ConversationRouter, RandomRouter
from cobra_app.scale.served import build_served_model
from cobra_app.serving.config import AppConfig, parse_config

APP_NAME = "cobra"
MODEL_DEPLOYMENT = "ModelReplica"
INGRESS_DEPLOYMENT = "OpenAIIngress"
ROUTERS = {"affinity": ConversationRouter, "random": RandomRouter}
EXPORT_SLACK = 2  # requests a busy replica still takes beyond --concurrency: other replicas' state fetches


def model_options(cfg: AppConfig) -> dict:
    """`serve.deployment` options of the model deployment: a fixed number of replicas, or Serve's autoscaling between
    min and max replicas; resources per replica; the router; the state directory as a deployment-scoped actor."""
    if cfg.min_replicas is not None:
        scaling = {"autoscaling_config": AutoscalingConfig(min_replicas=cfg.min_replicas, max_replicas=cfg.max_replicas,
                                                           target_ongoing_requests=cfg.target_ongoing_requests)}
    else:
        scaling = {"num_replicas": cfg.replicas}
    router_kwargs = {}
    if cfg.routing == "affinity":
        limit = cfg.affinity_queue_limit
        router_kwargs = {"queue_limit": cfg.concurrency if limit is None else limit}
    return {
        "name": MODEL_DEPLOYMENT,
        **scaling,
        "max_ongoing_requests": cfg.concurrency + EXPORT_SLACK,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        "request_router_config": RequestRouterConfig(request_router_class=ROUTERS[cfg.routing],
                                                     request_router_kwargs=router_kwargs),
        "deployment_actors": [DeploymentActorConfig(name=DIRECTORY_ACTOR, actor_class=ray.remote(StateDirectory),
                                                    actor_options={"num_cpus": 0})],
    }


def model_deployment(cfg: AppConfig, build_model: Callable[[], ChatModel] | None = None) -> serve.Application:
    """The model replicas; each calls `build_model` once (default: load `cfg.model` with `cfg.num_cpus` threads)."""
    if build_model is None:
        build_model = partial(build_served_model, cfg, max(1, int(cfg.num_cpus)))
    deployment = serve.deployment(ModelReplica).options(**model_options(cfg))
    return deployment.bind(build_model, worker_threads=cfg.concurrency + EXPORT_SLACK)


def build_app(cfg: AppConfig, build_model: Callable[[], ChatModel] | None = None) -> serve.Application:
    """The whole application: the ingress (one replica, no CPU reserved: it parses and forwards) and the model."""
    ingress = serve.deployment(OpenAIIngress).options(
        name=INGRESS_DEPLOYMENT, num_replicas=1, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=cfg.queue_size + cfg.concurrency * cfg.most_replicas)
    return ingress.bind(model_deployment(cfg, build_model), cfg)


def settings_from_args(args: Mapping[str, object]) -> AppConfig:
    """A config file's `args` (the app's settings by field name: model, replicas, num_cpus, ...) -> AppConfig, checked
    as the command line checks them (SystemExit with the flag's message); the COBRA_* variables fill the others."""
    unknown = sorted(set(args) - {f.name for f in fields(AppConfig)})
    if unknown:
        raise ValueError(f"unknown settings {unknown} in the config file's args (python -m cobra_app serve --help)")
    argv = []
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    return parse_config(argv, prog="serve run")


def app_builder(args: Mapping[str, object]) -> serve.Application:
    """The application of `serve run serve_config.yaml` (Ray Serve's application builder)."""
    return build_app(settings_from_args(args))
