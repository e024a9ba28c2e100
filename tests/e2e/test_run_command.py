"""The README's run command (``python app.py``, no model given) on a machine without the released 3B model
ends with the app serving the bundled model, and says so in the log and on the page."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import BUNDLED, REPO, _free_port

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not (BUNDLED / "config.json").exists(),
                                                  reason=f"the bundled model is not trained yet ({BUNDLED})")]


def test_default_run_command_serves_bundled_model(tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("GRADIO_SERVER_NAME", None)
    env.pop("UNIPIXEL_MODEL", None)
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as r:
                    config = r.read().decode()
                    break
            except OSError:
                assert time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        text = log.read_text()
        assert "serving model: bundled demo model" in text
        assert "bundled demo model — knows only coloured shapes" in config
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
