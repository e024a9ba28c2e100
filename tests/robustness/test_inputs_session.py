"""The corpus through ``ChatSession`` (the library path the CLI and the app share): odd but valid media, questions and
prompts are answered, correctly sized and oriented; bad ones are refused with a one-line ``ValueError`` that
leaves the conversation as it was; and the next request on the same session works."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tests.robustness.corpus import QUESTIONS, Case, Prompts, prompt_cases
from tests.robustness.report import tally
from unipixel import limits, ui
from unipixel.processing.prompts import BoxPrompt, MaskPrompt, PointPrompt
from unipixel.session import ChatSession, Settings

SEGMENT = "Please segment the red square."


def session_prompts(items: list[dict], size: tuple[int, int]) -> list:
    """API-convention prompts as the session's types (boxes as given: the session sees the raw corners)."""
    out = []
    for item in items:
        frame = item.get("frame", 0)
        if "point" in item:
            out.append(PointPrompt(*item["point"], frame=frame))
        elif "box" in item:
            out.append(BoxPrompt(*item["box"], frame=frame))
        else:
            line = item["scribble"]
            mask = ui.scribble_mask(line, size, item.get("width", 5)) if line else np.zeros(size, bool)
            out.append(MaskPrompt(mask, frame=frame))
    return out


def state(session: ChatSession) -> tuple:
    return len(session.regions), len(session.history), list(session.objects), session.turn


def one_line(err: BaseException) -> bool:
    text = str(err)
    return bool(text.strip()) and "\n" not in text and "Traceback" not in text


def check_reply(session: ChatSession, reply, failures: list[str], name: str) -> None:
    media = session.media
    for obj in reply.objects:
        if obj.masks.shape != (media.num_frames, *media.size) or obj.frame_indices != media.frame_indices:
            failures.append(f"{name}: object {obj.tag} masks {obj.masks.shape} do not fit the media {media.size}")
    if re.findall(r"\[(obj_\d+)\]", reply.text) != [o.tag for o in reply.objects]:
        failures.append(f"{name}: reply tags {reply.text!r} do not match its objects")


# ---------------------------------------------------------------------------------------------- media
def test_every_media_case_through_one_session(engine, corpus: list[Case]) -> None:
    """One session meets every file in turn: good ones replace the media, bad ones leave the last good media and
    its conversation in place, and the next question is answered."""
    session = ChatSession(engine, Settings(max_new_tokens=24))
    failures: list[str] = []
    for case in corpus:
        before, media_before = state(session), session.media
        try:
            media = session.open(case.path, num_frames=16)
        except ValueError as err:
            good = not case.ok and one_line(err) and session.media is media_before and state(session) == before
            if not good:
                failures.append(f"{case.name}: refused with {err!r} (ok={case.ok}), or the session changed")
        except Exception as err:  # noqa: BLE001 - anything else would be a traceback for a visitor
            good = False
            failures.append(f"{case.name}: {type(err).__name__}: {err}")
        else:
            good = case.ok
            if not case.ok:
                failures.append(f"{case.name}: loaded, should have been refused")
            elif (case.frames and media.num_frames != case.frames) or (case.size and media.size != case.size):
                good = False
                failures.append(f"{case.name}: {media.num_frames} frames of {media.size}")
            elif case.check is not None and not case.check(media.frames[0]):
                good = False
                failures.append(f"{case.name}: wrong orientation or colours")
        if session.media is not None:  # the next request works, on whatever media is loaded
            count = len(failures)
            check_reply(session, session.ask(SEGMENT), failures, case.name)
            good = good and len(failures) == count
        tally("session: media files", good)
    assert failures == []


# ---------------------------------------------------------------------------------------------- questions
def test_every_question_case(engine, plain) -> None:
    session = ChatSession(engine, Settings(max_new_tokens=24))
    session.open(plain["image"])
    failures: list[str] = []
    for case in QUESTIONS:
        before = state(session)
        try:
            reply = session.ask(case.text)
        except ValueError as err:
            good = case.error is not None and re.search(case.error, str(err)) and one_line(err) and state(session) == before
            if not good:
                failures.append(f"{case.name}: {err!r}")
        else:
            sent = session.history[-2]["content"]
            good = case.error is None and not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]", sent)
            if not good:
                failures.append(f"{case.name}: answered {reply.text!r}; sent {sent!r}")
            check_reply(session, reply, failures, case.name)
        count = len(failures)
        check_reply(session, session.ask(SEGMENT), failures, f"after {case.name}")
        tally("session: questions", bool(good) and len(failures) == count)
    assert failures == []


def test_unicode_reaches_the_model_intact(engine, plain) -> None:
    session = ChatSession(engine, Settings(max_new_tokens=8))
    session.open(plain["image"])
    session.ask("Please segment the 红色 circle 🟥 e\u0301, ¿qué?")
    assert "Please segment the 红色 circle 🟥 é, ¿qué?" in session.history[-2]["content"]  # NFC: e + ◌́ -> é


# ---------------------------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("kind", ["image", "video"])
def test_every_prompt_case(engine, plain, kind) -> None:
    session = ChatSession(engine, Settings(max_new_tokens=24))
    media = session.open(plain[kind], num_frames=4)
    failures: list[str] = []
    for case in prompt_cases(media.size, media.num_frames):
        session.reset()
        good = _prompt_case(session, case, failures)
        count = len(failures)
        check_reply(session, session.ask(SEGMENT), failures, f"after {case.name}")
        tally(f"session: prompts ({kind})", good and len(failures) == count)
    assert failures == []


def _prompt_case(session: ChatSession, case: Prompts, failures: list[str]) -> bool:
    prompts = session_prompts(case.prompts, session.media.size)
    try:
        reply = session.ask(case.question, prompts)
    except ValueError as err:
        if case.error is not None and re.search(case.error, str(err)) and one_line(err) and state(session) == (0, 0, [], 0):
            return True
        failures.append(f"{case.name}: refused with {err!r}")
        return False
    if case.error is not None:
        failures.append(f"{case.name}: answered, expected an error like {case.error!r}")
        return False
    if reply.regions != list(range(len(prompts))):
        failures.append(f"{case.name}: regions {reply.regions}")
        return False
    check_reply(session, reply, failures, case.name)
    return True


# ---------------------------------------------------------------------------------------------- caps and switching
def test_objects_beyond_the_cap_are_refused_until_a_new_conversation(engine, plain, monkeypatch) -> None:
    monkeypatch.setattr(limits, "MAX_OBJECTS", 2)
    session = ChatSession(engine, Settings(max_new_tokens=24))
    session.open(plain["image"])
    while len(session.objects) < 2:
        session.ask(SEGMENT)
        assert session.turn < 10, "the tiny model should ground objects"
    turns = session.turn
    with pytest.raises(ValueError, match=r"already has \d+ objects .*start a new conversation"):
        session.ask(SEGMENT)
    assert session.turn == turns
    session.reset()
    assert session.ask(SEGMENT).turn == 1
    tally("session: caps", True)


def test_switching_media_mid_conversation(engine, plain) -> None:
    session = ChatSession(engine, Settings(max_new_tokens=24))
    image = session.open(plain["image"])
    first = session.ask("What is [0]?", [PointPrompt(40, 30)])
    assert first.regions == [0]
    video = session.open(plain["video"], num_frames=4)
    assert (session.regions, session.history, session.objects) == ([], [], {})
    with pytest.raises(ValueError, match=r"refers to \[0\], but there are no visual prompts yet"):
        session.ask("What is [0]?")  # the prompt belonged to the image's conversation
    reply = session.ask("Please segment the red square in this video.")
    for obj in reply.objects:
        assert obj.masks.shape == (4, *video.size) and obj.frame_indices == video.frame_indices
    assert session.media is video and session.media is not image
    tally("session: caps", True)
