"""The corpus through the running app (in-process on 127.0.0.1, the tiny model): the ``/ask`` endpoint with
``gradio_client``, and the page's own events (upload, sketch, send) as one visitor with its own state.

Odd but valid input is answered about the right media; bad input gets a one-line message that says what to do
(``/ask``: an error; the page: a warning in the status line) and never a traceback; the visitor's media and
conversation survive a refused request, and the next request works.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.robustness.app_client import UIVisitor, one_line, raw_call, raw_upload, running_app
from tests.robustness.corpus import QUESTIONS, Case, prompt_cases
from tests.robustness.report import tally
from unipixel import limits

SEGMENT = "Please segment the red square."
SETTINGS = {"frames": 8, "dense": False, "max_new_tokens": 24}


@pytest.fixture(scope="module")
def live(engine):
    with running_app(engine) as app:
        yield app


@pytest.fixture(scope="module")
def client(live):
    from gradio_client import Client

    return Client(live.url, verbose=False)


@pytest.fixture
def page(live):
    visitor = UIVisitor(live)
    yield visitor
    visitor.close()


def ask_api(client, media: Path, question: str, prompts="[]", **settings):
    from gradio_client import handle_file

    return client.predict(handle_file(str(media)), question, prompts if isinstance(prompts, str) else json.dumps(prompts),
                          json.dumps({**SETTINGS, **settings}), api_name="/ask")


def attempt(call) -> tuple[object, str | None]:
    """``(result, None)`` for a call that succeeded, ``(None, message)`` for a refused one."""
    from gradio_client.exceptions import AppError

    try:
        return call(), None
    except AppError as err:
        return None, str(err)


def api_error(call) -> str | None:
    return attempt(call)[1]


def answered_on(result, size: tuple[int, int], frames: int | None) -> bool:
    """``/ask``'s result is about a media of ``size`` (H, W) with ``frames`` sampled frames, overlay included."""
    text, overlay, objects = result
    media = objects["media"]
    if media["is_image"]:
        with Image.open(overlay) as im:  # the media, with the legend beside or below it when there are objects
            (w, h), (mh, mw) = im.size, size
            overlay_ok = im.format == "PNG" and w >= mw and h >= mh and (w == mw or h == mh)
    else:
        overlay_ok = Path(overlay).suffix == ".mp4" and Path(overlay).stat().st_size > 0
    return ((media["height"], media["width"]) == size and (frames is None or len(media["sampled_frames"]) == frames)
            and all(o["frames"] == media["sampled_frames"] and max(o["area"]) <= size[0] * size[1] for o in objects["objects"])
            and overlay_ok and objects["text"] == text)


def client_file(url: str, data: dict) -> Path:
    """Download a FileData output of a raw call (what gradio_client does for its callers)."""
    import tempfile

    import httpx

    target = Path(tempfile.mkdtemp()) / Path(data["path"]).name
    target.write_bytes(httpx.get(data["url"] or f"{url}gradio_api/file={data['path']}", timeout=60).content)
    return target


# ---------------------------------------------------------------------------------------------- /ask
def test_every_media_case_through_ask(client, corpus: list[Case], plain) -> None:
    failures = []
    for case in corpus:
        video = case.ok and (case.frames or 1) > 1
        message = api_error(lambda: ask_api(client, case.path, SEGMENT, frames=16, dense=video))
        if case.ok:
            good = message is None and answered_on(ask_api(client, case.path, SEGMENT, frames=16), case.size, case.frames)
        else:
            good = message is not None and one_line(message)
            good = good and answered_on(ask_api(client, plain["image"], SEGMENT), (120, 160), 1)  # the next request
        if not good:
            failures.append(f"{case.name}: {message!r}")
        tally("app /ask: media files", good)
    assert failures == []


def has_surrogates(text: str) -> bool:
    return re.search("[\ud800-\udfff]", text) is not None


def test_every_question_case_through_ask(live, client, plain) -> None:
    failures = []
    for case in QUESTIONS:
        if has_surrogates(case.text):  # gradio_client cannot encode them; a browser sends them as JSON escapes
            event, data = raw_call(live.url, "/ask", [raw_upload(live.url, plain["image"]), case.text, "[]", json.dumps(SETTINGS)])
            result, message = (data, None) if event == "complete" else (None, str(data))
            result = result and (result[0], client_file(live.url, result[1]), result[2])
        else:
            result, message = attempt(lambda: ask_api(client, plain["image"], case.text))  # noqa: B023
        if case.error is not None:
            good = message is not None and one_line(message) and re.search(case.error, message) is not None
        else:
            good = message is None and answered_on(result, (120, 160), 1)
        if not good:
            failures.append(f"{case.name}: {message!r} {result!r}")
        tally("app /ask: questions", good)
    assert failures == []


@pytest.mark.parametrize("kind", ["image", "video"])
def test_every_prompt_case_through_ask(client, plain, kind) -> None:
    failures = []
    for case in prompt_cases((120, 160), 4):
        result, message = attempt(lambda: ask_api(client, plain[kind], case.question, case.prompts, frames=4))  # noqa: B023
        if case.error is not None:
            good = message is not None and one_line(message) and re.search(case.error, message) is not None
        else:
            good = message is None and result[2]["reply"]["regions"] == list(range(len(case.prompts)))
        if not good:
            failures.append(f"{case.name}: {message!r}")
        tally(f"app /ask: prompts ({kind})", good)
    assert failures == []


def test_ask_caps_turns_and_objects(client, plain, monkeypatch) -> None:
    earlier = [{"question": SEGMENT, "prompts": []}] * (limits.MAX_TURNS - 1)
    assert answered_on(ask_api(client, plain["image"], SEGMENT, previous_turns=earlier[:3]), (120, 160), 1)
    message = api_error(lambda: ask_api(client, plain["image"], SEGMENT, previous_turns=earlier + earlier[:1]))
    assert message and re.search(rf"at most {limits.MAX_TURNS - 1} previous turns; start a new conversation", message)
    monkeypatch.setattr(limits, "MAX_OBJECTS", 1)
    message = api_error(lambda: ask_api(client, plain["image"], SEGMENT, previous_turns=earlier[:3]))
    assert message and "already has 1 objects" in message and one_line(message)
    tally("app /ask: caps", True)


# ---------------------------------------------------------------------------------------------- the page
def test_every_media_case_through_the_page(page: UIVisitor, corpus: list[Case], plain) -> None:
    """One visitor uploads every file in turn, asking after each: a refused file leaves the loaded media and the
    conversation as they were."""
    page.upload(plain["image"])
    page.ask(SEGMENT)
    failures = []
    for case in corpus:
        info, chat = page.media_info, len(page.chat)
        page.upload(case.path, frames=16)
        status = page.status
        if case.ok:
            kind = "Image" if case.frames == 1 and case.path.suffix not in (".mp4", ".gif") else "Video"
            good = status.startswith(f"Loaded {case.path.name}") and f"{kind} · {case.size[1]}×{case.size[0]}" in page.media_info
            good = good and page.chat == []
            chat = 0
        else:
            good = (status.startswith(f"⚠️ Could not open {case.path.name}: ") and one_line(status)
                    and page.media_info == info and len(page.chat) == chat)
        page.ask(SEGMENT, frames=16, dense=True)
        good = good and page.status.startswith("Turn ") and len(page.chat) == chat + 2 and "⚠️" not in page.chat_texts()[-1]
        if not good:
            failures.append(f"{case.name}: {status!r} then {page.status!r}")
        tally("app page: media files", good)
    assert failures == []


def test_every_question_case_through_the_page(page: UIVisitor, plain) -> None:
    page.upload(plain["image"])
    failures = []
    for case in QUESTIONS:
        chat = len(page.chat)
        if has_surrogates(case.text):  # as a browser sends them (gradio_client cannot encode them)
            event, _ = raw_call(page.url, "/on_submit", [case.text, 32], page.client.session_hash)
            assert event == "complete"
            page.call("/on_ask", 8, False, 32, 0, "Point / box", None)  # shares the state: same session hash
        else:
            page.ask(case.text)
        if case.error is not None:
            good = page.status.startswith("⚠️") and re.search(case.error, page.status, re.I) and one_line(page.status)
            good = good and len(page.chat) == chat
        else:
            shown = page.chat_html("user")[-1]
            good = (page.status.startswith("Turn ") and len(page.chat) == chat + 2 and "<script" not in shown
                    and "<img" not in shown and not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]", shown))
        if not good:
            failures.append(f"{case.name}: {page.status!r}")
        tally("app page: questions", bool(good))
    assert failures == []


def sketch(x: float, y: float, x1: float | None = None, y1: float | None = None) -> dict:
    """A click at (x, y) or a drag to (x1, y1), in [0, 1] of the displayed image."""
    if x1 is None:
        return {"type": "sketch", "pts": [[x, y]], "drag": 0}
    return {"type": "sketch", "pts": [[x, y], [x1, y1]], "drag": 50}


def test_odd_sketch_events_never_break_the_page(page: UIVisitor, plain) -> None:
    """The page's sketch channel: malformed or out-of-range gestures are ignored, prompts stop at the cap with a
    message, and asking still works."""
    page.upload(plain["video"], frames=4)
    ignored = ["{not json", "[1, 2]", json.dumps({"type": "sketch", "pts": [[2.5, 3.0]], "drag": 0}),
               json.dumps({"type": "sketch", "pts": [[None, 0.5]], "drag": 0}), json.dumps({"type": "sketch"}),
               json.dumps({"type": "strip", "x": "left"}), json.dumps({"type": "warp"}), json.dumps({"type": "mask"}),
               json.dumps({"type": "sketch", "pts": "everywhere"}), json.dumps({"type": "frame", "frame": 10**9})]
    for payload in ignored:
        page.sketch(payload)
        assert page.prompt_list.startswith("Click the image"), payload
        assert "⚠️" not in page.status and "Something went wrong" not in page.status, payload
        tally("app page: sketch events", True)
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="greater than maximum value 3"):  # Gradio checks the frame slider's range
        page.sketch(sketch(0.5, 0.5), frame=999)
    page.sketch(sketch(0.5, 0.5), frame=3)
    assert "[0] point (80, 60) · frame 3" in page.prompt_list
    page.sketch(sketch(0.1, 0.1, 0.1, 0.9))  # a box with no width becomes a point
    assert "[1] point" in page.prompt_list
    page.sketch({**sketch(0.4, 0.4), "type": "sketch"}, tool="Refine +")
    assert "no object to refine yet" in page.status
    for i in range(limits.MAX_PROMPTS - 2):
        page.sketch(sketch(0.1 + 0.05 * i, 0.2, 0.2 + 0.05 * i, 0.5))
    assert f"[{limits.MAX_PROMPTS - 1}] box" in page.prompt_list
    page.sketch(sketch(0.9, 0.9))
    assert f"At most {limits.MAX_PROMPTS} prompts per conversation" in page.status
    page.ask("What is [0]? Compare [15].")
    assert page.status.startswith("Turn 1") and page.prompt_list.startswith("Click the image")
    tally("app page: sketch events", True)


def test_switching_media_mid_conversation_on_the_page(page: UIVisitor, plain, corpus) -> None:
    page.upload(plain["image"])
    page.sketch(sketch(0.25, 0.25))
    page.ask("What is [0]?")
    assert page.status.startswith("Turn 1") and page.object_tags() is not None
    page.sketch(sketch(0.5, 0.5))  # drawn on the image, not sent yet
    hour = next(c for c in corpus if c.name == "hour-long video")
    page.upload(hour.path, frames=8)
    assert page.chat == [] and page.object_tags() == [] and page.prompt_list.startswith("Click the image")
    assert "Video · 48×32" in page.media_info
    page.ask("What is [0]?")
    assert re.search(r"refers to \[0\], but there are no visual prompts yet", page.status)
    page.ask("Please segment the square in this video.", frames=8)
    assert page.status.startswith("Turn 1") and len(page.chat) == 2
    tally("app page: switching media", True)


def test_caps_on_the_page(page: UIVisitor, plain, monkeypatch) -> None:
    monkeypatch.setattr(limits, "MAX_OBJECTS", 1)
    monkeypatch.setattr(limits, "MAX_TURNS", 3)
    page.upload(plain["image"])
    for _ in range(3):
        page.ask(SEGMENT)
        if page.object_tags():
            break
    assert page.object_tags(), "the tiny model should ground an object"
    turns = len(page.chat)
    page.ask(SEGMENT)
    assert "has 1 objects; start a new conversation" in page.status and len(page.chat) == turns
    page.new_chat()
    for k in range(3):
        monkeypatch.setattr(limits, "MAX_OBJECTS", 99)
        page.ask(SEGMENT)
        assert page.status.startswith(f"Turn {k + 1}")
    page.ask(SEGMENT)
    assert "reached 3 turns; start a new conversation" in page.status
    tally("app page: caps", True)


def test_a_file_over_the_upload_limit_is_refused_on_the_page(page: UIVisitor, plain, tmp_path, monkeypatch) -> None:
    """Gradio refuses uploads over the limit (tests/test_security.py); the app checks the size again."""
    monkeypatch.setattr(limits, "MAX_UPLOAD_BYTES", 2**20)
    big = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 2**20
    page.upload(plain["image"])
    page.upload(big)
    assert page.status == "⚠️ Could not open noise.png: the file is larger than 1 MB; upload a smaller or shorter one"
    assert "Image · 160×120" in page.media_info
    tally("app page: upload size", True)
