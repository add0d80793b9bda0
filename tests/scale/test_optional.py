"""Ray is an optional extra: nothing outside `cobra_app.scale` imports it, so the app, the API and the command line
start without it."""

import subprocess
import sys

from tests.scale.conftest import REPO

WITHOUT_RAY = ("app", "cobra_app.__main__", "cobra_app.pipeline", "cobra_app.sessions", "cobra_app.ui.handlers",
               "cobra_app.api.serve", "cobra_app.serving.config", "cobra_app.scale", "cobra_app.scale.hashring",
               "cobra_app.scale.sizing")


def test_the_app_and_its_parts_import_without_ray():
    code = ("import sys\n"
            f"for name in {WITHOUT_RAY!r}:\n"
            "    __import__(name)\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
