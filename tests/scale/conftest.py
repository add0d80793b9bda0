"""Fixtures of the scale tests: a local Ray instance (2 CPUs, no dashboard; Serve's HTTP proxy on a free loopback
port), started once per test session (about 10-20 s) and shut down at the end; a tiny Cobra and an image for the tests
without Ray."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sessions.conftest import cobra, image  # noqa: F401 - the sessions' tiny Cobra and test image

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RayServe:
    port: int  # Serve's HTTP proxy

    def api_url(self, route: str) -> str:
        """The OpenAI-compatible API of the application deployed at `route` (e.g. "/scale")."""
        return f"http://127.0.0.1:{self.port}{route}/v1"


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from cobra_app.serving.ports import free_port

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield RayServe(port)
    serve.shutdown()
    ray.shutdown()
