"""The ways to start it as real processes joining a Ray cluster (here the tests' own): `python -m cobra_app serve
--ray`, and `python app.py --ray-address` in front of what it deployed (serve_config.yaml: tests/scale/test_settings)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("ray.serve")

import openai
import ray
from ray import serve

from cobra_app.api.image_urls import image_data_url
from cobra_app.bench.app_process import running_app, wait_until_answering
from cobra_app.bench.scale import first_message
from cobra_app.scale.application import APP_NAME
from tests.scale.conftest import REPO
from tests.ui.support import DEMO_MODEL


def ask(api_url: str) -> str:
    client = openai.OpenAI(base_url=api_url, api_key="unused", max_retries=0, timeout=120)
    image, [(_, question)] = first_message(0, shift=0)
    content = [{"type": "image_url", "image_url": {"url": image_data_url(image)}}, {"type": "text", "text": question}]
    model = client.models.list().data[0].id
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}]
                                          ).choices[0].message.content


@pytest.mark.slow
def test_serve_ray_and_the_page_in_front_of_it(ray_cluster, tmp_path):
    if not DEMO_MODEL.is_dir():
        pytest.skip("the offline demo model is not in assets/demo-model")
    address = ray.get_runtime_context().gcs_address
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "cobra_app", "serve", "--ray", "--ray-address", address, "--replicas", "1",
               "--num-cpus", "1", "--model", str(DEMO_MODEL), "--max-new-tokens", "32"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    try:
        api_url = ray_cluster.api_url("")  # the application sits at / of the cluster's Serve proxy
        wait_until_answering(f"{api_url}/models", proc, log, timeout_s=300)
        reply = ask(api_url)
        assert reply
        with running_app("--ray-address", address, timeout_s=300, log_path=tmp_path / "app.log") as page:
            assert ask(f"{page}v1") == reply  # the page's /v1 reaches the same deployment
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        serve.delete(APP_NAME)
