"""Fixtures of the scale tests: a local Ray instance (2 CPUs, no dashboard, no HTTP proxy), started once per test
session (about 10-20 s) and shut down at the end; a tiny Cobra and an image for the tests without Ray."""

from pathlib import Path

import pytest

from tests.sessions.conftest import cobra, image  # noqa: F401 - the sessions' tiny Cobra and test image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}})
    serve.start(proxy_location="Disabled")
    yield ray
    serve.shutdown()
    ray.shutdown()

