"""The demo in a real browser: Debian's Chromium driven by Playwright against ``python app.py`` on 127.0.0.1.

Each test leaves a full-page screenshot in ``artifacts/screenshots/<test name>.png``.
"""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from unipixel.rendering import color_for, decode_coco_rle, prompt_color

from .conftest import REPO, is_bundled, needs_bundled
from .helpers import (
    TIMEOUT_MS,
    UI_TIMEOUT_MS,
    ask,
    bot_messages,
    chip_rgb,
    click_at,
    colour_mask,
    drag,
    image_of,
    load_example,
    rgb,
    toast_text,
    upload,
    user_messages,
    wait_new_image,
)

pytestmark = pytest.mark.e2e
GREY = REPO / "examples" / "shapes_grey.png"


def _box_of(colour, path=GREY) -> tuple[int, int, int, int]:
    img = np.asarray(Image.open(path).convert("RGB"))
    ys, xs = np.nonzero(colour_mask(img, colour))
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _segment_red_circle(page) -> None:
    load_example(page, "image_seg")
    ask(page)
    page.wait_for_selector("#chat .obj-chip.obj_1", timeout=TIMEOUT_MS)
    page.wait_for_selector("#result_img img", timeout=TIMEOUT_MS)


def test_page_shows_model_and_examples(page, app_server):
    badge = page.locator("#model_badge").inner_text()
    assert "Model:" in badge
    if is_bundled(app_server["model"]):
        assert "bundled demo model — knows only coloured shapes" in badge
    assert page.locator("#examples img").count() >= 8
    assert not page.js_errors


def test_image_segmentation_chip_matches_overlay(page):
    _segment_red_circle(page)
    # the chip is exactly the object's colour, and the overlay draws the object in that colour
    assert chip_rgb(page, "obj_1") == rgb(color_for("obj_1"))
    overlay = image_of(page, "#result_img")
    outline = colour_mask(overlay, chip_rgb(page, "obj_1"))
    assert outline.sum() >= 20, "no pixel of the overlay has the chip's colour"
    # the legend / object list uses the same chip
    assert chip_rgb(page, "obj_1", "#objects") == rgb(color_for("obj_1"))
    assert "turn 1" in page.locator("#objects").inner_text()
    assert not page.js_errors


@needs_bundled
def test_image_segmentation_covers_target(page):
    _segment_red_circle(page)
    original = np.asarray(Image.open(GREY).convert("RGB"))
    overlay = image_of(page, "#result_img")
    assert overlay.shape == original.shape
    masked = np.abs(overlay.astype(int) - original.astype(int)).sum(-1) > 12
    target = colour_mask(original, (220, 30, 30))
    coverage = (masked & target).sum() / target.sum()
    iou = (masked & target).sum() / (masked | target).sum()
    assert coverage > 0.85 and iou > 0.6, (coverage, iou)


def test_downloads_and_copy_as_code(page, app_server, tmp_path):
    _segment_red_circle(page)
    got = {}
    for elem in ("dl_overlay", "dl_masks", "dl_rle", "dl_json"):
        page.wait_for_function(f"() => !document.querySelector('#{elem}').disabled", timeout=UI_TIMEOUT_MS)
        with page.expect_download(timeout=UI_TIMEOUT_MS) as dl:
            page.locator(f"#{elem}").click()
        path = tmp_path / dl.value.suggested_filename
        dl.value.save_as(path)
        got[elem] = path
    assert Image.open(got["dl_overlay"]).format == "PNG"
    with zipfile.ZipFile(got["dl_masks"]) as zf:
        assert "obj_1_f000.png" in zf.namelist()
        mask = np.asarray(Image.open(io.BytesIO(zf.read("obj_1_f000.png"))))
        assert mask.shape == (316, 436) and set(np.unique(mask)) <= {0, 255}
    masks, frames = decode_coco_rle(got["dl_rle"].read_text())
    assert frames == [0] and masks["obj_1"].shape == (1, 316, 436)
    assert (masks["obj_1"][0] == (mask > 0)).all()
    conversation = json.loads(got["dl_json"].read_text())
    assert conversation["turns"][0]["question"] == "Please segment the red circle in this image."
    assert conversation["turns"][0]["tags"] == ["obj_1"]
    assert conversation["objects"][0]["color"] == color_for("obj_1")
    # "copy as code" reproduces the turn through the API
    page.locator("#code_acc").click()
    code = page.locator("#code").inner_text()
    assert 'api_name="/ask"' in code and "Please segment the red circle" in code
    snippet = page.evaluate("() => document.querySelector('#code .cm-content').innerText")
    snippet = snippet.replace("handle_file('shapes_grey.png')", f"handle_file({str(GREY)!r})")
    scope: dict = {}
    exec(compile(snippet, "copy_as_code", "exec"), scope)  # noqa: S102 - our own generated snippet
    assert scope["objects"]["objects"][0]["tag"] == "obj_1"
    assert scope["text"] == bot_messages(page).first.inner_text().splitlines()[0].strip()


def test_box_prompt_question(page):
    upload(page, GREY)
    page.wait_for_selector("#sketch img", timeout=UI_TIMEOUT_MS)
    before = page.locator("#sketch img").get_attribute("src")
    x0, y0, x1, y1 = _box_of((30, 80, 220))  # the blue star
    drag(page, "#sketch", (x0 - 4, y0 - 4), (x1 + 4, y1 + 4))
    wait_new_image(page, "#sketch", before)
    assert "[0] box" in page.locator("#prompt_list").inner_text()
    sketch = image_of(page, "#sketch")
    assert colour_mask(sketch, rgb(prompt_color(0))).sum() > 50, "the box is not drawn in prompt colour [0]"
    text = ask(page, "What is [0]?")
    assert text.strip()
    user = user_messages(page).first
    assert user.locator(".prompt-chip.p0").count() >= 1
    assert "box" in user.inner_text()
    # the prompt stays on the canvas, numbered, for follow-ups
    assert "Earlier prompts [0]" in page.locator("#prompt_list").inner_text()
    assert not page.js_errors


@needs_bundled
def test_box_prompt_answer_names_the_shape(page):
    upload(page, GREY)
    page.wait_for_selector("#sketch img", timeout=UI_TIMEOUT_MS)
    before = page.locator("#sketch img").get_attribute("src")
    x0, y0, x1, y1 = _box_of((30, 80, 220))
    drag(page, "#sketch", (x0 - 4, y0 - 4), (x1 + 4, y1 + 4))
    wait_new_image(page, "#sketch", before)
    text = ask(page, "What is [0]?").lower()
    assert "star" in text and "blue" in text, text


def test_video_question_plays(page):
    load_example(page, "video_seg")
    assert page.locator("#frame").is_visible()
    # the sampled-frames preview: 16 numbered thumbnails, 8 per row; clicking one jumps to it
    strip = page.locator("#frames_strip img")
    w, h = strip.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    click_at(page, "#frames_strip", w * 1.5 / 8, h * 0.75)
    page.wait_for_function("() => document.querySelector('#frame input[type=number]').value === '9'", timeout=UI_TIMEOUT_MS)
    assert "24 frames" in page.locator("#media_info").inner_text()
    ask(page)
    page.wait_for_selector("#chat .obj-chip.obj_1", timeout=TIMEOUT_MS)
    page.wait_for_selector("#result_video video", timeout=TIMEOUT_MS)
    video = page.locator("#result_video video")
    page.wait_for_function("() => document.querySelector('#result_video video').readyState >= 2", timeout=UI_TIMEOUT_MS)
    state = video.evaluate("v => ({ready: v.readyState, w: v.videoWidth, h: v.videoHeight, error: v.error && v.error.code, duration: v.duration})")
    assert state["error"] is None and state["w"] >= 400 and state["h"] >= 320, state
    assert abs(state["duration"] - 3.0) < 0.2, f"dense overlay should last as long as the source (3 s): {state}"
    video.evaluate("v => { v.muted = true; v.currentTime = 0; return v.play(); }")
    page.wait_for_function("() => document.querySelector('#result_video video').currentTime > 0.2", timeout=UI_TIMEOUT_MS)
    # presence timeline: one cell per sampled frame; clicking one moves the frame slider
    cells = page.locator("#objects .tl-cell")
    assert cells.count() == 16
    cells.nth(7).click()
    page.wait_for_function("() => document.querySelector('#frame input[type=number]').value === '7'", timeout=UI_TIMEOUT_MS)
    assert not page.js_errors


def test_follow_up_turn_keeps_earlier_results(page):
    ex = load_example(page, "multi_turn")
    ask(page, expect_bot=1)
    page.wait_for_selector("#chat .obj-chip.obj_1", timeout=TIMEOUT_MS)
    first_reply = bot_messages(page).first.inner_text()
    # the example's follow-up is pre-filled after the first answer
    page.wait_for_function("q => document.querySelector('#question textarea').value === q", arg=ex["followups"][0], timeout=UI_TIMEOUT_MS)
    ask(page, expect_bot=2)
    assert user_messages(page).count() == 2
    assert bot_messages(page).first.inner_text() == first_reply, "the first turn changed"
    assert bot_messages(page).first.locator(".obj-chip.obj_1").count() == 1
    assert page.locator("#chat .obj-chip.obj_1").count() >= 1
    assert page.locator("#objects .obj-chip.obj_1").count() == 1
    assert "obj_1" in page.locator("#visible").inner_text()
    assert not page.js_errors


def test_bad_upload_shows_error_and_page_keeps_working(page, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    upload(page, broken)
    assert "Could not open broken.png" in toast_text(page)
    page.wait_for_selector("#status .warn", timeout=UI_TIMEOUT_MS)
    assert "broken.png" in page.locator("#status").inner_text()
    # asking without media is refused before any model call
    page.locator("#question textarea").fill("What is this?")
    page.locator("#send").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('Upload an image')", timeout=UI_TIMEOUT_MS)
    assert bot_messages(page).count() == 0
    # the page still works: an empty question is refused, then a real one is answered
    load_example(page, "image_seg")
    page.locator("#question textarea").fill("   ")
    page.locator("#send").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.toLowerCase().includes('type a question')", timeout=UI_TIMEOUT_MS)
    assert bot_messages(page).count() == 0
    ask(page, "Please segment the red circle in this image.")
    page.wait_for_selector("#chat .obj-chip.obj_1", timeout=TIMEOUT_MS)
    assert not page.js_errors


def test_tag_and_mask_highlight_each_other(page):
    _segment_red_circle(page)
    # chip -> highlight (chat chip, object row)
    page.locator("#chat .obj-chip.obj_1").first.click()
    page.wait_for_selector("#chat .obj-chip.obj_1.active", timeout=UI_TIMEOUT_MS)
    assert page.locator("#objects .active-row").count() == 1
    # clicking the chip again clears it
    page.locator("#chat .obj-chip.obj_1").first.click()
    page.wait_for_selector("#chat .obj-chip.active", state="detached", timeout=UI_TIMEOUT_MS)
    # mask -> tag: click a pixel of obj_1's mask in the result view
    overlay = image_of(page, "#result_img")
    ys, xs = np.nonzero(colour_mask(overlay, rgb(color_for("obj_1"))))
    k = len(xs) // 2
    click_at(page, "#result_img", xs[k] + 0.5, ys[k] + 0.5)
    page.wait_for_selector("#chat .obj-chip.obj_1.active", timeout=UI_TIMEOUT_MS)
    assert not page.js_errors


def test_scribble_then_refine_keeps_tag_and_colour(page):
    upload(page, GREY)
    page.wait_for_selector("#sketch img", timeout=UI_TIMEOUT_MS)
    page.locator("#tool label", has_text="Scribble").click()
    before = page.locator("#sketch img").get_attribute("src")
    x0, y0, x1, y1 = _box_of((220, 30, 30))  # red circle
    cy = (y0 + y1) / 2
    drag(page, "#sketch", (x0 + 12, cy), (x1 - 12, cy + 3), steps=12)
    wait_new_image(page, "#sketch", before)
    assert "[0] scribble" in page.locator("#prompt_list").inner_text()
    # undo removes it, a second stroke adds it back
    page.locator("#undo").click()
    page.wait_for_function("() => !document.querySelector('#prompt_list').innerText.includes('[0] scribble')", timeout=UI_TIMEOUT_MS)
    drag(page, "#sketch", (x0 + 12, cy), (x1 - 12, cy + 3), steps=12)
    page.wait_for_function("() => document.querySelector('#prompt_list').innerText.includes('[0] scribble')", timeout=UI_TIMEOUT_MS)
    ask(page, "Please segment [0].")
    page.wait_for_selector("#chat .obj-chip.obj_1", timeout=TIMEOUT_MS)
    colour = chip_rgb(page, "obj_1")
    # refine: positive click on the circle, re-track
    page.locator("#tool label", has_text="Refine +").click()
    page.wait_for_selector("#refine_box", state="visible", timeout=UI_TIMEOUT_MS)
    before = page.locator("#sketch img").get_attribute("src")
    click_at(page, "#sketch", (x0 + x1) / 2, cy)
    wait_new_image(page, "#sketch", before)
    page.locator("#refine_apply").click()
    page.wait_for_function("() => document.querySelector('#chat').innerText.includes('Refined')", timeout=TIMEOUT_MS)
    assert "Refined [obj_1]" in page.locator("#chat").inner_text().replace("\n", "")
    assert page.locator("#objects .obj-chip").count() == 1
    assert chip_rgb(page, "obj_1", "#objects") == colour
    assert not page.js_errors
