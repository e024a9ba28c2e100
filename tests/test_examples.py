"""The example gallery keeps its promises: each example, run through a chat session on the bundled model, gets
an answer with the words and the masks its ``expect`` entries name (``examples/make_examples.py``)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from unipixel import ui
from unipixel.engine import BUNDLED_MODEL, load_engine
from unipixel.session import ChatSession, Reply
from unipixel.training.evaluate import iou
from unipixel.training.shapes import COLOURS, point_prompt

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GALLERY = json.loads((EXAMPLES / "examples.json").read_text())["examples"]
COLOUR_TOLERANCE = 60  # per-channel distance that still counts as the object's colour (H.264 shifts colours)
MIN_IOU = 0.5

# The bundled model ignores point and box prompts (its model card, "Why"): the examples that need one read are
# marked ``real_model_only`` (the app says so in the gallery) and expected to fail here.
POINTS_IGNORED = "issue 4: the bundled model does not read point/box prompts (`<|ref|>`), its answer is the same for any"

pytestmark = pytest.mark.skipif(not (BUNDLED_MODEL / "model.safetensors").exists(), reason="bundled model not found")


@pytest.fixture(scope="module")
def engine():
    return load_engine("bundled", device="cpu")


def colour_mask(frame: np.ndarray, colour: list[int]) -> np.ndarray:
    """Pixels of ``frame`` (H, W, 3) in ``colour``: the examples' objects each have their own colour."""
    return (np.abs(frame.astype(int) - np.array(colour)).max(-1) <= COLOUR_TOLERANCE)


def check(reply: Reply, expect: dict, frames: np.ndarray) -> list[str]:
    """What ``reply`` misses of ``expect``, as readable problems (empty: the answer is right)."""
    problems = [f"does not say {word!r}" for word in expect["says"]
                if not re.search(rf"\b{word}\b", reply.text, re.IGNORECASE)]
    if len(reply.objects) != len(expect["objects"]):
        return problems + [f"{len(reply.objects)} masks for {len(expect['objects'])} objects"]
    for obj, want in zip(reply.objects, expect["objects"]):
        score = iou(obj.masks[:1] > 0, colour_mask(frames[0], want["colour"])[None])
        if score < MIN_IOU:
            problems.append(f"{obj.tag}: IoU {score:.2f} with the {want['colour']} object")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("example", [
    pytest.param(ex, id=ex["id"], marks=pytest.mark.xfail(strict=True, reason=POINTS_IGNORED))
    if ex.get("real_model_only") else pytest.param(ex, id=ex["id"]) for ex in GALLERY])
def test_example_gets_its_answer(engine, example):
    session = ChatSession(engine)
    media = session.open(EXAMPLES / example["media"])
    prompts = [ui.to_session_prompt(p) for p in ui.prompts_from_json(example["prompts"], media.size)]
    questions = [example["question"], *example.get("followups", [])]
    assert len(example["expect"]) == len(questions), "one expect entry per turn"
    for turn, (question, expect) in enumerate(zip(questions, example["expect"])):
        reply = session.ask(question, prompts if turn == 0 else [])
        problems = check(reply, expect, media.frames)
        assert not problems, f"turn {turn} {question!r} -> {reply.text!r}: {'; '.join(problems)}"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=POINTS_IGNORED)
def test_point_prompt_changes_the_answer(engine):
    """A point on each object of an example image gets that object's colour named (not one answer for all)."""
    session = ChatSession(engine)
    media = session.open(EXAMPLES / "shapes_grey.png")
    named = 0
    for name in ("red", "blue", "yellow"):
        point = {"point": list(point_prompt(colour_mask(media.frames[0], list(COLOURS[name])))), "frame": 0}
        session.reset()
        reply = session.ask("What is [0]?", [ui.to_session_prompt(p) for p in ui.prompts_from_json([point], media.size)])
        named += bool(re.search(rf"\b{name}\b", reply.text, re.IGNORECASE))
    assert named == 3
