"""The documented ``/ask`` endpoint through gradio_client (what the README shows)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unipixel.rendering import color_for

from .conftest import REPO, example, needs_bundled

pytestmark = pytest.mark.e2e
GREY = REPO / "examples" / "shapes_grey.png"
VIDEO = REPO / "examples" / "moving_shapes.mp4"


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server["url"], verbose=False)


def test_only_ask_is_documented(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/ask"]
    params = [p["parameter_name"] for p in api["named_endpoints"]["/ask"]["parameters"]]
    assert params == ["media", "question", "prompts_json", "settings_json"]


def test_ask_image(client):
    from gradio_client import handle_file

    text, overlay, objects = client.predict(
        handle_file(str(GREY)), "Please segment the red circle in this image.", "[]",
        json.dumps({"frames": 16, "dense": False, "max_new_tokens": 64}), api_name="/ask")
    assert "[obj_1]" in text
    assert Image.open(overlay).format == "PNG"
    assert objects["text"] == text
    assert [o["tag"] for o in objects["objects"]] == ["obj_1"]
    assert objects["objects"][0]["color"] == color_for("obj_1")
    assert objects["media"]["width"] == 436 and objects["media"]["is_image"]


def test_ask_video_with_prompts(client):
    from gradio_client import handle_file

    ex = example("video_pixelqa")
    text, overlay, objects = client.predict(
        handle_file(str(VIDEO)), ex["question"], json.dumps(ex["prompts"]),
        json.dumps({"frames": 8, "dense": True, "max_new_tokens": 64}), api_name="/ask")
    assert Path(overlay).suffix == ".mp4" and Path(overlay).stat().st_size > 1000
    assert objects["media"]["sampled_frames"] == [0, 3, 7, 10, 13, 16, 20, 23]
    assert objects["reply"]["regions"] == [0]


def test_ask_replays_previous_turns(client):
    from gradio_client import handle_file

    settings = {"dense": False, "max_new_tokens": 64,
                "previous_turns": [{"question": "Please segment the red circle in this image.", "prompts": []}]}
    text, _, objects = client.predict(handle_file(str(GREY)), "What is [0]?", json.dumps([{"point": [60, 150]}]),
                                      json.dumps(settings), api_name="/ask")
    assert objects["turn"] == 2


@pytest.mark.parametrize("prompts, settings, message", [
    ('[{"point": [5000, 1]}]', "{}", "outside the 436×316 frame"),
    ("not json", "{}", "prompts must be a JSON list"),
    ('[{"point": [1, 1], "frame": 3}]', "{}", "only frames 0-0 were sampled"),
    ("[]", '{"frames": 99}', "between 1 and 32"),
    ("[]", '{"colour": 1}', "unknown setting"),
])
def test_ask_refuses_bad_input(client, prompts, settings, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(GREY)), "What is [0]?", prompts, settings, api_name="/ask")


def test_ask_refuses_empty_question_and_bad_media(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="type a question"):
        client.predict(handle_file(str(GREY)), "  ", "[]", "{}", api_name="/ask")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(AppError, match="could not read"):
        client.predict(handle_file(str(broken)), "What is this?", "[]", "{}", api_name="/ask")


@needs_bundled
def test_ask_mask_covers_target(client):
    from gradio_client import handle_file

    _, overlay, objects = client.predict(handle_file(str(GREY)), "Please segment the red circle in this image.", "[]",
                                         json.dumps({"dense": False}), api_name="/ask")
    circle = np.pi * 39 ** 2  # the red circle is 79 px across
    assert 0.7 * circle < objects["objects"][0]["area"][0] < 1.4 * circle
