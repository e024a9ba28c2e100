"""What the app holds per visitor is bounded and let go: a closed tab frees its session and deletes its files, the
number of decoded media held at once is capped (least recently used first, with a clear message for that
visitor), and an expired state is closed. In-process app on 127.0.0.1, the golden tiny model."""
from __future__ import annotations

import time

import gradio as gr
import pytest

from tests.robustness.app_client import UIVisitor, running_app
from tests.robustness.report import tally
from unipixel import limits, ui

SEGMENT = "Please segment the red square."


@pytest.fixture(scope="module")
def live(engine):
    with running_app(engine) as app:
        yield app


def visitor_of(page: UIVisitor) -> ui.Visitor:
    import app

    return app.VISITORS[page.client.session_hash]


def wait_for(condition, seconds: float = 90.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return condition()


def test_closing_the_tab_frees_the_session_and_deletes_its_files(live, plain) -> None:
    page = UIVisitor(live)
    page.upload(plain["video"], frames=4)
    page.ask(SEGMENT, frames=4)
    v = visitor_of(page)
    folder = v.workdir()
    assert v.session is not None and any(folder.iterdir())
    page.close()  # the tab goes: its heartbeat stops, Gradio runs the unload event
    assert wait_for(lambda: v.session is None and not folder.exists()), "the closed tab's visitor was not freed"
    tally("app page: memory and files", True)


def test_decoded_media_held_at_once_are_capped(live, plain, monkeypatch) -> None:
    monkeypatch.setattr(limits, "MAX_LIVE_SESSIONS", 2)
    pages = [UIVisitor(live) for _ in range(3)]
    try:
        for page in pages:
            page.upload(plain["image"])
            time.sleep(0.05)  # distinct last-used times
        first = visitor_of(pages[0])
        assert first.session is None, "the least recently used visitor's media should be let go"
        assert all(visitor_of(p).session is not None for p in pages[1:])
        pages[0].ask(SEGMENT)
        assert pages[0].status == "⚠️ Upload an image or a video first (or pick an example)."
        pages[0].upload(plain["image"])
        pages[0].ask(SEGMENT)
        assert pages[0].status.startswith("Turn 1")
        assert sum(visitor_of(p).session is not None for p in pages) == 2
    finally:
        for page in pages:
            page.close()
    tally("app page: memory and files", True)


def test_an_expired_state_is_closed(live, tmp_path) -> None:
    """Gradio deletes a visitor's state ``STATE_TTL_S`` after last use and calls its delete callback."""
    state = next(b for b in live.demo.blocks.values() if isinstance(b, gr.State))
    assert state.time_to_live == limits.STATE_TTL_S
    v = ui.Visitor(root=str(tmp_path))
    kept = v.new_file("overlay", ".png")
    kept.write_bytes(b"x")
    v.session = object()
    state.delete_callback(v)
    assert v.session is None and not kept.exists() and not kept.parent.exists()
    assert live.demo.delete_cache == (limits.CACHE_SWEEP_S, limits.CACHE_MAX_AGE_S)
    tally("app page: memory and files", True)
