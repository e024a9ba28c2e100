"""End-to-end fixtures: a real ``python app.py`` server on 127.0.0.1 and Debian's Chromium through Playwright.

The model comes from ``UNIPIXEL_TEST_MODEL``; by default the bundled model when its recorded evaluation meets
its bars, else the golden tiny checkpoint (its masks are poor: tests that need a model that understands shapes
are marked :data:`needs_bundled`). Screenshots go to ``artifacts/screenshots/``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import GOLDEN, REPO

CHROMIUM = Path(os.environ.get("UNIPIXEL_CHROMIUM", "/usr/bin/chromium"))
BUNDLED = REPO / "assets" / "unipixel-shapes"
TINY = GOLDEN / "checkpoints" / "tiny-tied"
SCREENSHOTS = REPO / "artifacts" / "screenshots"
EXAMPLES = json.loads((REPO / "examples" / "examples.json").read_text())["examples"]
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STARTUP_S = float(os.environ.get("UNIPIXEL_TEST_STARTUP_S", 300))


def bundled_meets_bars() -> bool:
    """Whether the bundled model's recorded evaluation meets the bars of its model card (``meets_bars``)."""
    record = BUNDLED / "evaluation.json"
    return record.exists() and json.loads(record.read_text()).get("meets_bars") is True


def pick_model() -> tuple[str | None, str]:
    """(model path or None, why): env var > bundled model that meets its bars > golden tiny checkpoint >
    any bundled model. An undertrained bundled model would make answer-dependent UI checks flaky."""
    if os.environ.get("UNIPIXEL_TEST_MODEL"):
        return os.environ["UNIPIXEL_TEST_MODEL"], "UNIPIXEL_TEST_MODEL"
    if (BUNDLED / "config.json").exists() and bundled_meets_bars():
        return str(BUNDLED), "bundled"
    if (TINY / "config.json").exists():
        return str(TINY), "golden tiny checkpoint"
    if (BUNDLED / "config.json").exists():
        return str(BUNDLED), "bundled (below its bars)"
    return None, f"no model: set UNIPIXEL_TEST_MODEL, or train {BUNDLED}, or provide {TINY}"


def is_bundled(model: str | None) -> bool:
    return model is not None and Path(model).resolve() == BUNDLED.resolve()


MODEL, MODEL_WHY = pick_model()
needs_bundled = pytest.mark.skipif(
    not (is_bundled(MODEL) and bundled_meets_bars()),
    reason=f"needs a bundled shapes model that meets its bars (running {MODEL_WHY}: answers are not meaningful)",
)


def example(example_id: str) -> dict:
    return next(ex for ex in EXAMPLES if ex["id"] == example_id)


def example_index(example_id: str) -> int:
    return next(i for i, ex in enumerate(EXAMPLES) if ex["id"] == example_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """``python app.py --model M --port P`` in its own process group; yields the base URL; killed by PID."""
    if MODEL is None:
        pytest.skip(MODEL_WHY)
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "app.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("GRADIO_SERVER_NAME", None)
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", MODEL, "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + STARTUP_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "config", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"app.py did not serve within {STARTUP_S:.0f} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "log": log_path, "model": MODEL, "pid": proc.pid}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group we started (app.py and its children only)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        log.close()


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_server, request):
    """A fresh tab (its own visitor state) on the app; a screenshot is saved when the test ends."""
    context = browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(90_000)  # the machine may be busy (2 shared cores)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(app_server["url"], wait_until="load")
    pg.wait_for_selector("#examples img", timeout=90_000)
    pg.js_errors = errors
    yield pg
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        pg.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    finally:
        context.close()
