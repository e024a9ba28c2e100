"""The app's model turn streams: a video turn's answer (chat, chips, image overlay) reaches the page before its
overlay video and downloads are encoded; an image turn arrives in one update."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.robustness.app_client import UIVisitor, running_app
from unipixel.engine import BUNDLED_MODEL, load_engine

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def live():
    with running_app(load_engine(str(BUNDLED_MODEL))) as app:
        yield app


def _updates(visitor: UIVisitor, question: str) -> list[dict]:
    """Every update ``on_ask`` sent, keyed by elem_id (``None``: the component was left unchanged)."""
    visitor.call("/on_submit", question, 32)
    job = visitor.client.submit(8, True, 32, 0, "Point / box", None, api_name="/on_ask")
    job.result()
    names = visitor.outputs["/on_ask"]
    updates = []
    for values in job.outputs():
        shown = {}
        for key, value in zip(names, values):
            if isinstance(value, dict) and value.get("__type__") == "update":
                value = value.get("value") if "value" in value else None
            shown[key] = value
        updates.append(shown)
    return updates


def test_video_answer_arrives_before_its_overlay_video(live):
    visitor = UIVisitor(live)
    visitor.upload(EXAMPLES / "moving_shapes.mp4")
    first, *rest = _updates(visitor, "Please segment the green square in this video.")
    assert rest, "a video turn with objects streams its answer first"
    assert "obj_1" in str(first["chat"]) and first["result_img"] is not None
    assert "Encoding the overlay video" in str(first["status"])
    assert first["result_video"] is None and first["dl_overlay"] is None
    last = rest[-1]
    assert str(last["result_video"]).endswith(".mp4") and last["dl_overlay"] is not None
    assert "Turn 1" in str(last["status"])


def test_image_answer_arrives_in_one_update(live):
    visitor = UIVisitor(live)
    visitor.upload(EXAMPLES / "shapes_grey.png")
    updates = _updates(visitor, "Please segment the red circle in this image.")
    assert len(updates) == 1 and "Turn 1" in str(updates[0]["status"])


def test_point_question_on_the_bundled_model_says_points_are_not_read(live):
    """The bundled model's reply to a point prompt must not pass for a reading of it (ui.prompt_hint)."""
    visitor = UIVisitor(live)
    visitor.upload(EXAMPLES / "shapes_grey.png")
    visitor.ask("What is in this image?")
    assert "Turn 1" in visitor.status and "points or boxes" not in visitor.status
    visitor.sketch({"type": "sketch", "pts": [[0.2, 0.5]], "drag": 0})
    visitor.ask("What is [0]?")
    assert "Turn 2" in visitor.status and "does not read points or boxes" in visitor.status


def test_ask_api_notice_for_points_on_the_bundled_model(live):
    """The documented /ask endpoint says the same thing to programs: a ``notice`` in its JSON."""
    from gradio_client import handle_file

    client = UIVisitor(live).client
    grey = handle_file(str(EXAMPLES / "shapes_grey.png"))
    _, _, plain = client.predict(grey, "Please segment the red circle.", "[]", "{}", api_name="/ask")
    _, _, pointed = client.predict(grey, "What is [0]?", '[{"point": [60, 150]}]', "{}", api_name="/ask")
    assert "notice" not in plain
    assert "does not read points or boxes" in pointed["notice"]
