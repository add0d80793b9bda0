"""The scale-out settings: flags and COBRA_* variables of `serve --ray` (checked as the other flags are), and the model
deployment's layout they give (replicas or autoscaling, resources per replica, router and its queue limit)."""

import pytest

from cobra_app.serving.config import AppConfig, parse_config


def test_the_scale_flags_and_variables_parse_and_default_to_one_cpu_replica():
    cfg = parse_config(["--ray", "--replicas", "3", "--num-cpus", "2", "--num-gpus", "0.5", "--routing", "random",
                        "--ray-address", "10.0.0.1:6379"], environ={})
    assert (cfg.ray, cfg.replicas, cfg.num_cpus, cfg.num_gpus, cfg.routing, cfg.ray_address) == (
        True, 3, 2.0, 0.5, "random", "10.0.0.1:6379")
    env = {"COBRA_RAY": "1", "COBRA_MIN_REPLICAS": "1", "COBRA_MAX_REPLICAS": "4",
           "COBRA_TARGET_ONGOING_REQUESTS": "3", "COBRA_AFFINITY_QUEUE_LIMIT": "6"}
    cfg = parse_config([], environ=env)
    assert (cfg.ray, cfg.min_replicas, cfg.max_replicas, cfg.target_ongoing_requests, cfg.affinity_queue_limit) == (
        True, 1, 4, 3.0, 6)
    default = parse_config([], environ={})
    assert (default.ray, default.replicas, default.num_cpus, default.num_gpus, default.routing) == (
        False, 1, 1.0, 0.0, "affinity")


@pytest.mark.parametrize("argv", [["--replicas", "0"], ["--num-cpus", "-1"], ["--num-gpus", "-0.5"],
                                  ["--routing", "round-robin"], ["--min-replicas", "1"], ["--max-replicas", "2"],
                                  ["--min-replicas", "3", "--max-replicas", "2"],
                                  ["--min-replicas", "0", "--max-replicas", "0"], ["--affinity-queue-limit", "-1"]])
def test_bad_scale_settings_are_refused_with_the_flags_name(argv, capsys):
    with pytest.raises(SystemExit):
        parse_config(argv, environ={})
    assert argv[0] in capsys.readouterr().err


def test_the_deployment_layout_follows_the_settings():
    pytest.importorskip("ray.serve")
    from cobra_app.scale.application import EXPORT_SLACK, model_options

    fixed = model_options(AppConfig(replicas=3, num_cpus=2, num_gpus=1, concurrency=4))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}
    assert fixed["max_ongoing_requests"] == 4 + EXPORT_SLACK  # room for state exports to other replicas
    router = fixed["request_router_config"]
    assert router.request_router_class.endswith(".ConversationRouter") and router.request_router_kwargs == {"queue_limit": 4}
    assert model_options(AppConfig(affinity_queue_limit=1))["request_router_config"].request_router_kwargs == {
        "queue_limit": 1}
    random = model_options(AppConfig(routing="random"))["request_router_config"]
    assert random.request_router_class.endswith(".RandomRouter") and random.request_router_kwargs == {}
    cfg = AppConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=3)
    scaled = model_options(cfg)
    assert "num_replicas" not in scaled and cfg.most_replicas == 4
    autoscaling = scaled["autoscaling_config"]
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.target_ongoing_requests) == (1, 4, 3)


def test_a_config_files_args_are_the_apps_settings_checked_as_flags():
    pytest.importorskip("ray.serve")
    from cobra_app.scale.application import settings_from_args

    cfg = settings_from_args({"model": "assets/demo-model", "replicas": 2, "num_cpus": 1, "ray": True,
                              "state_dir": None, "share": False})
    assert (cfg.model, cfg.replicas, cfg.num_cpus, cfg.ray, cfg.state_dir) == ("assets/demo-model", 2, 1.0, True, None)
    with pytest.raises(SystemExit):
        settings_from_args({"min_replicas": 1})  # autoscaling needs both bounds
    with pytest.raises(ValueError, match="replica"):
        settings_from_args({"replica": 2})  # a misspelt setting is an error, not ignored


def test_the_serve_run_config_file_is_valid_and_lays_out_the_replicas_it_says():
    pytest.importorskip("ray.serve")
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from cobra_app.scale.application import APP_NAME, app_builder, model_options, settings_from_args
    from tests.scale.conftest import REPO

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "serve_config.yaml").read_text()))
    [app] = config.applications
    assert app.name == APP_NAME and app.import_path == "cobra_app.scale.application:app_builder"
    cfg = settings_from_args(app.args)
    options = model_options(cfg)
    assert options["num_replicas"] == app.args["replicas"] == cfg.replicas
    assert options["ray_actor_options"] == {"num_cpus": app.args["num_cpus"], "num_gpus": app.args["num_gpus"]}
    app_builder(app.args)  # the application it names builds (not deployed here)
