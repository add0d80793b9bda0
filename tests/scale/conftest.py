"""A local Ray instance for the scale tests: 2 CPUs, no dashboard, no HTTP proxy unless a test deploys the ingress;
started once per test session (about 10 s) and shut down at the end."""

from pathlib import Path

import pytest

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
