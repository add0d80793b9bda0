"""Spec: the launched app on a machine whose CPU kernels are not built yet serves at once on the PyTorch operators,
builds the kernels in the background, and switches to them (no compile on the request path)."""

import time

import pytest
from gradio_client import Client, handle_file

from tests.ui.support import DEMO_MODEL, EXAMPLES, running_app

pytestmark = pytest.mark.slow
GREEDY = [16, 1.0, 1.0, 0, 1.0, True]  # max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy
BUILD_TIMEOUT_S = 900  # a build takes about a minute on an idle 2-core machine, several on a busy one


def test_a_fresh_machine_serves_while_the_cpu_kernels_build_then_switches(tmp_path):
    with running_app("--model", str(DEMO_MODEL), env={"TORCH_EXTENSIONS_DIR": str(tmp_path)}) as url:
        client = Client(url, verbose=False)
        assert "building them in the background" in url.log.read_text()
        image = handle_file(str(EXAMPLES / "scene-1.png"))
        chat, _ = client.predict(image, "How many objects are in the image?", *GREEDY, api_name="/chat")
        assert [m for m in chat if m["role"] == "assistant"]  # a reply, whichever operators served it
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while "switching from PyTorch ops" not in url.log.read_text():
            assert time.monotonic() < deadline, url.log.read_text()[-3000:]
            time.sleep(2)
        info = client.predict(api_name="/model_info")
        assert "`cpu-kernel`" in info and "CPU kernels ready" in info
        chat, _ = client.predict(image, "Is there a blue diamond in the image?", *GREEDY, api_name="/chat")
        assert len([m for m in chat if m["role"] == "user"]) == 2
