"""Faults inside the model, injected into the running app (in-process on 127.0.0.1, the golden tiny model,
driven with gradio_client): an exception mid-generation, CUDA out-of-memory, and a ZeroGPU time-out (the very
exception the ``spaces`` package raises when it aborts a GPU task).

Each gives the visitor a clear one-line message and no traceback, keeps their media, conversation, objects and
drawn prompts, and the next turn works: with the same answer a conversation that never failed gets, so a
failure leaves nothing behind in the shared model. A model that cannot be loaded at start falls back to the
bundled one with a visible notice.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.conftest import GOLDEN, REPO
from tests.robustness.app_client import UIVisitor, one_line, running_app
from tests.robustness.corpus import plain_media

pytestmark = pytest.mark.e2e
TINY = GOLDEN / "checkpoints" / "tiny-tied"
SEGMENT = "Please segment the red square."
SETTINGS = json.dumps({"frames": 4, "dense": False, "max_new_tokens": 24})

OOM_TEXT = "The GPU ran out of memory on this turn. Try fewer sampled frames, a shorter segment or a smaller file, then ask again."
TIMEOUT_TEXT = ("The GPU time limit ran out on this turn. Try fewer sampled frames, a shorter segment or no dense "
                "tracking, then ask again.")


def zerogpu_timeout() -> Exception:
    """What ``spaces`` raises when ZeroGPU aborts a task that ran past its duration."""
    from spaces.zero.gradio import error

    return error("ZeroGPU worker error", "GPU task aborted")


FAULTS = {
    "exception mid-generation": (lambda: RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"),
                                 "The model failed on this turn (RuntimeError: CUBLAS_STATUS_EXECUTION_FAILED when "
                                 "calling cublasGemmEx). Your conversation is kept; ask again."),
    "CUDA out of memory": (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; "
                                                          "79.19 GiB total capacity)"), OOM_TEXT),
    "ZeroGPU time-out": (zerogpu_timeout, TIMEOUT_TEXT),
}


@pytest.fixture(scope="module")
def engine():
    if not (TINY / "config.json").exists():
        pytest.skip(f"golden tiny checkpoint not found at {TINY}")
    from unipixel.engine import load_engine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: a second thread only adds contention
    yield load_engine(str(TINY))
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def live(engine):
    with running_app(engine) as app:
        yield app


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    return plain_media(tmp_path_factory.mktemp("media"))


@contextmanager
def failing(owner, name: str, exc: BaseException, at: int):
    """``owner.name`` raises ``exc`` on its ``at``-th call from now (earlier calls run normally)."""
    original = getattr(owner, name)
    calls = []

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls.append(name)
        if len(calls) == at:
            raise exc
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)
    try:
        yield calls
    finally:
        delattr(owner, name)  # the class's method again


def points(*xy) -> list[str]:
    return [json.dumps({"type": "sketch", "pts": [[x, y]], "drag": 0}) for x, y in xy]


def conversation_file(page: UIVisitor) -> dict:
    return json.loads(Path(page.last["dl_json"]).read_text())


def _visit(live, media: Path, fault=None) -> tuple[UIVisitor, dict]:
    """Upload, ask (turn 1), draw a point, then turn 2 (failing when ``fault`` is given), then turn 2 again."""
    page = UIVisitor(live)
    page.upload(media, frames=4)
    page.ask(SEGMENT, frames=4)
    assert page.status.startswith("Turn 1")
    page.sketch(points((0.3, 0.3))[0])
    seen = {"chat": page.chat_texts(), "media": page.media_info, "tags": page.object_tags(), "prompts": page.prompt_list}
    if fault is not None:
        with fault() as calls:
            page.ask("What is [0]? Please segment it.", frames=4)
        seen.update(failed_status=page.status, failed_chat=page.chat_texts(), failed_media=page.media_info,
                    failed_tags=page.object_tags(), failed_prompts=page.prompt_list, calls=len(calls))
    page.ask("What is [0]? Please segment it.", frames=4)
    seen.update(status=page.status, after_chat=page.chat_texts(), after_tags=page.object_tags())
    return page, seen


@pytest.mark.parametrize("kind", ["image", "video"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_mid_generation_keeps_the_conversation_and_the_next_turn_works(live, engine, media, kind, fault) -> None:
    make, message = FAULTS[fault]
    reference, expected = _visit(live, media[kind])  # the same visit with no fault
    page, seen = _visit(live, media[kind], lambda: failing(engine.model, "forward", make(), at=3))
    try:
        assert seen["calls"] >= 3, "the fault should hit a decoding step (after the prefill and one token)"
        assert seen["failed_status"] == f"⚠️ {message}" and one_line(seen["failed_status"])
        # what the visitor had is still there: media, earlier turns, objects, and the prompt drawn for this turn
        assert seen["failed_media"] == seen["media"] and seen["failed_tags"] == seen["tags"]
        assert seen["failed_prompts"] == seen["prompts"] and "[0] point" in seen["prompts"]
        assert seen["failed_chat"][:-2] == seen["chat"] and seen["failed_chat"][-1] == f"⚠️ {message}"
        # the next turn works, exactly as in a conversation that never failed
        assert seen["status"].startswith("Turn 3") and seen["after_tags"] == expected["after_tags"]
        turns, never_failed = conversation_file(page)["turns"], conversation_file(reference)["turns"]
        assert ["error" in t for t in turns] == [False, True, False]
        assert turns[1]["error"] == message and turns[2]["reply"]["regions"] == [0]
        for key in ("text", "raw_text", "objects"):
            assert turns[2]["reply"][key] == never_failed[1]["reply"][key]
    finally:
        page.close()
        reference.close()


def test_out_of_memory_in_sam2_keeps_the_conversation(live, engine, media) -> None:
    page = UIVisitor(live)
    page.upload(media["video"], frames=4)
    page.ask(SEGMENT, frames=4)
    tags = page.object_tags()
    with failing(engine.model.sam2, "track", FAULTS["CUDA out of memory"][0](), at=1):
        page.ask(SEGMENT, frames=4)
    assert page.status == f"⚠️ {OOM_TEXT}" and page.object_tags() == tags
    page.ask(SEGMENT, frames=4)
    assert page.status.startswith("Turn 3") and page.object_tags()[: len(tags)] == tags
    page.close()


def test_a_fault_in_dense_tracking_keeps_the_answer(live, engine, media) -> None:
    """The answer was given before dense tracking failed: the visitor keeps it (masks on the sampled frames)."""
    page = UIVisitor(live)
    page.upload(media["video"], frames=4)
    with failing(engine.model.sam2, "encode_frames", FAULTS["CUDA out of memory"][0](), at=2):  # 1: sampled frames
        page.ask(SEGMENT, frames=4, dense=True)
    assert page.status.startswith("⚠️ Dense tracking failed") and "ran out of memory" in page.status
    assert one_line(page.status) and page.object_tags(), "the answer and its objects are kept"
    assert "⚠️" not in page.chat_texts()[-1]
    page.ask(SEGMENT, frames=4, dense=True)
    assert page.status.startswith("Turn 2")
    page.close()


def test_a_fault_during_refinement_keeps_the_object(live, engine, media) -> None:
    page = UIVisitor(live)
    page.upload(media["image"])
    page.ask(SEGMENT)
    tag = page.object_tags()[0]
    page.call("/on_tool", "Refine +", 0, tag)
    page.call("/on_sink", points((0.2, 0.2))[0], "Refine +", 0, tag)
    with failing(engine.model.sam2, "refine", FAULTS["CUDA out of memory"][0](), at=1):
        page.call("/on_refine", tag, 0, "Refine +")
    assert page.status == f"⚠️ {OOM_TEXT}" and page.object_tags() == [tag]
    page.call("/on_refine", tag, 0, "Refine +")  # the click was kept: re-track again
    assert page.status == f"Re-tracked [{tag}]."
    page.close()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_ask_endpoint_reports_a_fault_clearly_and_serves_the_next_call(live, engine, media, fault) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    make, message = FAULTS[fault]
    client = Client(live.url, verbose=False)
    with failing(engine.model, "forward", make(), at=3):
        with pytest.raises(AppError) as refused:
            client.predict(handle_file(str(media["image"])), SEGMENT, "[]", SETTINGS, api_name="/ask")
    assert str(refused.value) == message
    text, overlay, objects = client.predict(handle_file(str(media["image"])), SEGMENT, "[]", SETTINGS, api_name="/ask")
    assert objects["text"] == text and Path(overlay).exists()


def test_zerogpu_refusals_reach_the_visitor_as_they_are(live, media, monkeypatch) -> None:
    """Quota messages from ``spaces`` are written for visitors: shown with their title, conversation kept."""
    import app
    from spaces.zero.gradio import error

    page = UIVisitor(live)
    page.upload(media["image"])
    page.ask(SEGMENT)
    chat = page.chat_texts()
    real = app.gpu_ask
    monkeypatch.setattr(app, "gpu_ask", lambda *a, **k: (_ for _ in ()).throw(
        error("ZeroGPU quota exceeded", "You have exceeded your GPU quota (60s requested vs. 12s left). Try again in 0:03:12")))
    page.ask(SEGMENT)
    assert page.status == ("⚠️ ZeroGPU quota exceeded: You have exceeded your GPU quota (60s requested vs. 12s left). "
                           "Try again in 0:03:12")
    assert page.chat_texts()[: len(chat)] == chat
    monkeypatch.setattr(app, "gpu_ask", real)
    page.ask(SEGMENT)
    assert page.status.startswith("Turn 3")
    page.close()


# ---------------------------------------------------------------------------------------------- loading
def test_a_model_that_cannot_be_loaded_falls_back_to_the_bundled_one(monkeypatch, tmp_path) -> None:
    """``--model`` that cannot be loaded: the bundled model serves, and the page says why (badge and status)."""
    if not (TINY / "config.json").exists():
        pytest.skip("golden tiny checkpoint needed as a stand-in for the bundled model")
    import gradio as gr

    import app
    from unipixel import engine as engine_module

    monkeypatch.setattr(engine_module, "BUNDLED_MODEL", TINY)  # stands in for assets/unipixel-shapes
    monkeypatch.setattr(app, "ENGINE", None)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    for model in (str(tmp_path / "missing"), str(broken)):
        loaded = app.load(model)
        assert loaded.is_bundled and app.ENGINE is loaded
        assert loaded.notice.startswith("bundled demo model — knows only coloured shapes (") and f"{model} unavailable" in loaded.notice
        demo = app.build()
        by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
        assert "bundled demo model — knows only coloured shapes" in by_id["model_badge"].value
        assert f"{model} unavailable" in by_id["model_badge"].value  # the badge's tooltip says why
        assert f"⚠️ Serving the bundled demo model — knows only coloured shapes ({model} unavailable" in by_id["status"].value
        assert isinstance(by_id["status"], gr.HTML)


def test_app_started_with_a_model_that_cannot_be_loaded(tmp_path) -> None:
    """``python app.py --model <missing>``: serves the bundled model and says why on the page; without a bundled
    model either, exits with one line that says why (no traceback)."""
    import time
    import urllib.request

    from tests.robustness.app_client import free_port

    missing = tmp_path / "missing-model"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    env.pop("GRADIO_SERVER_NAME", None)
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", str(missing), "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, config = time.time() + 300, None
        while proc.poll() is None and config is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as r:
                    config = r.read().decode()
            except OSError:
                time.sleep(0.5)
        text = log.read_text()
        if (REPO / "assets" / "unipixel-shapes" / "config.json").exists():
            assert config is not None, text[-3000:]
            assert "falling back to the bundled demo model" in text and "serving model: bundled demo model" in text
            assert f"Serving the bundled demo model — knows only coloured shapes ({missing} unavailable" in config
        else:
            assert proc.wait(timeout=60) != 0
            last = text.strip().splitlines()[-1]
            assert last.startswith("could not load the model: ") and "bundled model too" in last, text[-3000:]
            assert "Traceback" not in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group we started
            proc.wait(timeout=30)
