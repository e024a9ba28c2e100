"""Fast tests of the demo's UI helpers (``unipixel.ui``) and of the app's wiring, without a model."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from unipixel import limits, ui
from unipixel.processing.media import load_media
from unipixel.processing.prompts import BoxPrompt, MaskPrompt, PointPrompt
from unipixel.rendering import color_for, decode_coco_rle, prompt_color
from unipixel.session import GroundedObject

REPO = Path(__file__).resolve().parents[1]
GREY = REPO / "examples" / "shapes_grey.png"
VIDEO = REPO / "examples" / "moving_shapes.mp4"
SIZE = (300, 400)  # H, W


# ------------------------------------------------------------------------------------------------ progress
def test_stage_progress_is_monotonic_over_stages():
    order = ["decoding", "thinking", "segmenting", "tracking", "encoding"]
    points = [ui.stage_progress(s, f)[0] for s in order for f in (0.0, 0.5, 1.0)]
    assert points == sorted(points) and points[0] == 0.0 and points[-1] == 1.0
    assert ui.stage_progress("thinking", 0.3)[1] == "Thinking"
    assert ui.stage_progress("segmenting", 7)[0] == ui.stage_progress("segmenting", 1)[0]


# ------------------------------------------------------------------------------------------------ gestures
def test_click_is_a_point_and_drag_is_a_box():
    p = ui.gesture_to_prompt({"pts": [[0.25, 0.5], [0.25, 0.5]], "drag": 2}, ui.TOOL_CLICK, SIZE, 3)
    assert p == {"kind": "point", "frame": 3, "xy": (100.0, 150.0)}
    b = ui.gesture_to_prompt({"pts": [[0.75, 0.9], [0.25, 0.1]], "drag": 80}, ui.TOOL_CLICK, SIZE, 0)
    assert b["kind"] == "box" and b["xyxy"] == (100.0, 30.0, 300.0, 270.0)
    assert isinstance(ui.to_session_prompt(b), BoxPrompt) and isinstance(ui.to_session_prompt(p), PointPrompt)


def test_gesture_is_clamped_to_the_image_and_empty_gestures_are_ignored():
    p = ui.gesture_to_prompt({"pts": [[1.03, -0.02]], "drag": 0}, ui.TOOL_CLICK, SIZE, 0)
    assert p["xy"] == (400.0, 0.0)
    assert ui.gesture_to_prompt({"pts": [[3.0, 3.0]], "drag": 0}, ui.TOOL_CLICK, SIZE, 0) is None
    assert ui.gesture_to_prompt({"pts": []}, ui.TOOL_CLICK, SIZE, 0) is None


def test_scribble_becomes_a_mask_along_the_stroke():
    g = {"pts": [[0.1, 0.5], [0.2, 0.5], [0.3, 0.52]], "drag": 90}
    p = ui.gesture_to_prompt(g, ui.TOOL_SCRIBBLE, SIZE, 1)
    assert p["kind"] == "mask" and p["frame"] == 1 and p["mask"].shape == SIZE
    assert p["mask"][150, 40:90].all() and p["mask"][155, 118] and not p["mask"][:100].any()
    assert p["width"] == ui.brush_width(SIZE)
    prompt = ui.to_session_prompt(p)
    assert isinstance(prompt, MaskPrompt) and prompt.mask.sum() == p["mask"].sum()


def test_refine_tools_give_labelled_clicks():
    pos = ui.gesture_to_prompt({"pts": [[0.5, 0.5]], "drag": 0}, ui.TOOL_REFINE_POS, SIZE, 2)
    neg = ui.gesture_to_prompt({"pts": [[0.5, 0.5]], "drag": 0}, ui.TOOL_REFINE_NEG, SIZE, 2)
    assert (pos["kind"], pos["label"], neg["label"], pos["frame"]) == ("click", 1, 0, 2)


def test_scribble_mask_width():
    thin = ui.scribble_mask([[10, 10], [90, 10]], (40, 100), 3)
    thick = ui.scribble_mask([[10, 10], [90, 10]], (40, 100), 11)
    assert 2 <= thin[:, 50].sum() <= 4 and 10 <= thick[:, 50].sum() <= 12
    assert ui.scribble_mask([[50, 20]], (40, 100), 6).sum() > 20  # a single dab


# ------------------------------------------------------------------------------------------------ JSON
def test_prompts_json_round_trip():
    mask = np.zeros(SIZE, bool)
    mask[100:140, 200:260] = True
    items = [{"point": [10, 20], "frame": 0}, {"box": [50, 60, 10, 20], "frame": 2},
             {"scribble": [[5, 5], [40, 8]], "width": 5, "frame": 1}]
    parsed = ui.prompts_from_json(json.dumps(items), SIZE)
    assert parsed[0]["xy"] == (10.0, 20.0) and parsed[1]["xyxy"] == (10.0, 20.0, 50.0, 60.0)
    assert parsed[2]["mask"].any()
    parsed.append({"kind": "mask", "frame": 0, "mask": mask})
    back = ui.prompts_to_json(parsed)
    assert back[0] == {"point": [10, 20], "frame": 0}
    assert back[1] == {"box": [10, 20, 50, 60], "frame": 2}
    assert back[2] == items[2]
    assert set(back[3]) == {"mask", "frame"} and back[3]["mask"]["size"] == list(SIZE)
    again = ui.prompts_from_json(back, SIZE)
    assert (again[3]["mask"] == mask).all() and (again[2]["mask"] == parsed[2]["mask"]).all()
    assert ui.prompts_from_json("", SIZE) == [] and ui.prompts_from_json(None, SIZE) == []
    assert len(ui.prompts_from_json({"point": [1, 2]}, SIZE)) == 1


@pytest.mark.parametrize("text, message", [
    ("[{", "must be a JSON list"),
    ('"point"', "must be a JSON list"),
    ("[3]", "must be an object"),
    ('[{"point": [1, 2], "box": [1, 2, 3, 4]}]', "exactly one of"),
    ('[{"circle": [1, 2]}]', "exactly one of"),
    ('[{"point": [1]}]', "malformed point"),
    ('[{"point": [1, 2], "frame": "0"}]', "frame must be an integer"),
    ('[{"scribble": []}]', "malformed scribble"),
    ('[{"scribble": [[1, 2]], "width": 0}]', "width must be 1-200"),
    ('[{"mask": {"size": [2, 2], "counts": "04"}}]', "the media is 400×300"),
    ('[{"mask": "x.png"}]', "malformed mask"),
])
def test_prompts_json_errors_are_one_line(text, message):
    with pytest.raises(ValueError, match=message) as err:
        ui.prompts_from_json(text, SIZE)
    assert "\n" not in str(err.value)


def test_settings_defaults_and_validation():
    s = ui.settings_from_json("")
    assert (s["frames"], s["dense"], s["max_new_tokens"], s["start"], s["end"]) == (16, True, 512, None, None)
    s = ui.settings_from_json({"frames": 8, "dense": False, "max_new_tokens": 32, "start": 1.5, "end": 3})
    assert (s["frames"], s["dense"], s["start"], s["end"]) == (8, False, 1.5, 3.0)
    for bad, msg in [('{"frames": 0}', "between 1 and"), ('{"frames": 2.5}', "integer"), ('{"dense": "yes"}', "true or false"),
                     ('{"max_new_tokens": 99999}', "between 1 and"), ('{"speed": 1}', "unknown setting"),
                     ('{"start": 3, "end": 2}', "must come after"), ('{"start": -1}', "≥ 0"), ("[1]", "JSON object"),
                     ('{"previous_turns": [{"q": 1}]}', "previous_turns")]:
        with pytest.raises(ValueError, match=msg):
            ui.settings_from_json(bad)


def test_check_segment():
    assert ui.check_segment(None, None) == (None, None)
    assert ui.check_segment(0, 2) == (None, 2.0)  # 0 = from the start
    assert ui.check_segment("", 4.5) == (None, 4.5)
    with pytest.raises(ValueError):
        ui.check_segment(5, 5)
    with pytest.raises(ValueError):
        ui.check_segment(float("nan"), None)


# ------------------------------------------------------------------------------------------------ HTML
def test_chips_have_the_object_colour_and_escape_text():
    html = ui.chip_text("<b>x</b> [obj_2] and [obj_12] near [0] and [7] [no mask]", highlight="obj_2", regions=1)
    assert "<b>" not in html and "&lt;b&gt;" in html
    assert f'class="obj-chip obj_2 active" style="background:{color_for("obj_2")}' in html
    assert f'class="obj-chip obj_12" style="background:{color_for("obj_12")}' in html
    assert f'class="prompt-chip p0" style="background:{prompt_color(0)}' in html
    assert "[7]" in html and "prompt-chip p7" not in html  # not a prompt of this conversation
    assert "obj-chip none" in html
    assert "data-" not in ui.obj_chip("obj_1")  # the chat sanitiser strips data-* attributes


def _obj(tag, masks, presence=None, turn=1, region=None):
    t = len(masks)
    presence = np.full(t, 0.9) if presence is None else np.asarray(presence)
    return GroundedObject(tag, np.asarray(masks, bool), list(range(t)), turn, np.full(t, 0.8), presence, region=region)


def test_object_list_and_timeline():
    m = np.zeros((4, 10, 10), bool)
    m[1:3, 2:5, 2:5] = True
    objects = [_obj("obj_1", m, [0.1, 0.9, 0.95, 0.2]), _obj("obj_2", m, region=0)]
    html = ui.object_list_html(objects, ["obj_1"], "obj_1", 2, is_image=False)
    assert html.count('class="obj-row') == 2 and "hidden-obj" in html and "active-row" in html
    assert html.count("tl-cell") == 8 and 'data-frame="2"' in html and "tl-cell current" in html
    assert "from [0]" in html and "0.80" in html
    assert "tl-cell" not in ui.object_list_html(objects, [], None, 0, is_image=True)
    assert "appear here" in ui.object_list_html([], [], None, 0, True)


def test_model_badge():
    assert "bundled demo model — knows only coloured shapes" in ui.model_badge_html("bundled", "x", True)
    real = ui.model_badge_html("PolyU-ChenLab/UniPixel-3B", "", False)
    assert "PolyU-ChenLab/UniPixel-3B" in real and "real" in real


def test_copy_as_code_is_valid_python_with_json_arguments():
    code = ui.copy_as_code("http://127.0.0.1:7860/", "my img.png", 'What is "[0]"?',
                           [{"point": [1, 2], "frame": 0}], {"frames": 16, "dense": False, "max_new_tokens": 64, "start": None},
                           previous=[{"question": "Segment it.", "prompts": []}])
    tree = ast.parse(code)
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "predict")
    media, question, prompts, settings = call.args
    assert question.value == 'What is "[0]"?'
    assert json.loads(prompts.value) == [{"point": [1, 2], "frame": 0}]
    assert json.loads(settings.value) == {"frames": 16, "dense": False, "max_new_tokens": 64,
                                          "previous_turns": [{"question": "Segment it.", "prompts": []}]}
    assert {k.arg: k.value.value for k in call.keywords} == {"api_name": "/ask"}
    assert "my img.png" in ast.unparse(media)
    assert "The CLI answers single questions" in code


def test_copy_as_code_gives_the_cli_command_for_one_turn():
    prompts = [{"point": [1, 2], "frame": 0}, {"box": [1, 2, 30, 40.5], "frame": 3},
               {"scribble": [[1, 1], [5, 5]], "width": 4, "frame": 1}]
    code = ui.copy_as_code("http://h/", "clip one.mp4", "What is [0]?", prompts, {"frames": 8, "dense": True})
    cli = next(line for line in code.splitlines() if "python -m unipixel infer" in line)
    assert cli.endswith("infer 'clip one.mp4' 'What is [0]?' --point 1,2,0 --box 1,2,30,40.5,3 --mask prompt_2.png,1 "
                        "--frames 8 --dense --out out/")
    assert "prompt_2.png: the mask of [2]" in code
    image = ui.copy_as_code("http://h/", "a.png", "Segment it.", [], {"frames": 1, "dense": False})
    assert "infer a.png 'Segment it.' --out out/" in image


# ------------------------------------------------------------------------------------------------ images
def test_fit_display_and_clicks():
    img = np.zeros((2000, 1000, 3), np.uint8)
    small = ui.fit_display(img)
    assert max(small.shape[:2]) == ui.DISPLAY_MAX_SIDE and small.shape[1] == 512
    assert ui.fit_display(img[:100, :100]) is not None and ui.fit_display(img[:100, :100]).shape == (100, 100, 3)
    drawn = ui.draw_clicks(np.zeros((100, 100, 3), np.uint8), [(30, 30, 1), (70, 70, 0)])
    assert tuple(drawn[27, 27]) == (22, 163, 74) and tuple(drawn[67, 67]) == (220, 38, 38)


def test_object_at_prefers_the_smallest_mask_and_tolerates_near_misses():
    big = np.zeros((100, 100), bool)
    big[10:90, 10:90] = True
    small = np.zeros((100, 100), bool)
    small[40:50, 40:50] = True
    masks = {"obj_1": big, "obj_2": small}
    assert ui.object_at(masks, 45, 45) == "obj_2"
    assert ui.object_at(masks, 20, 20) == "obj_1"
    assert ui.object_at(masks, 8.5, 50) == "obj_1"  # 1.5 px outside
    assert ui.object_at(masks, 2, 2) is None


def test_frames_strip_cells_map_back_to_frames():
    frames = np.random.default_rng(0).integers(0, 255, (13, 30, 40, 3), dtype=np.uint8)
    sheet = ui.frames_strip(frames, 4, [k / 8 for k in range(13)])
    rows, cols = 2, ui.STRIP_COLS
    h, w = sheet.shape[:2]
    for k in range(13):
        u, v = ((k % cols) + 0.5) / cols, ((k // cols) + 0.5) / rows
        assert ui.strip_index(u, v, 13) == k
    assert ui.strip_index(0.99, 0.99, 13) is None  # empty cell
    assert ui.strip_index(1.2, 0.5, 13) is None
    assert w == cols * (120 + 12) and h == rows * (90 + 12)


# ------------------------------------------------------------------------------------------------ visitor
class FakeSession:
    """What Visitor reads from a ChatSession (no model)."""

    def __init__(self, path, num_frames=16):
        self.media = load_media(path, num_frames=num_frames)
        self.objects, self.regions = {}, []

    def reset(self):
        self.objects, self.regions = {}, []


def _visitor(tmp_path, path=GREY, **kw):
    v = ui.Visitor(root=str(tmp_path))
    v.session, v.media_path, v.media_name = FakeSession(path, **kw), Path(path), Path(path).name
    return v


def _red_circle(v):
    frames = v.media.frames
    return (np.abs(frames.astype(int) - (220, 30, 30)).sum(-1) < 5)


def test_visitor_sketch_shows_numbered_prompts_on_their_frame(tmp_path):
    v = _visitor(tmp_path)
    v.sent = [{"kind": "point", "frame": 0, "xy": (60.0, 150.0)}]
    v.pending = [{"kind": "box", "frame": 0, "xyxy": (195.0, 154.0, 283.0, 242.0)}]
    img = v.sketch_image(0)
    assert (np.abs(img.astype(int) - Image.new("RGB", (1, 1), prompt_color(1)).getpixel((0, 0))).sum(-1) == 0).sum() > 100
    assert "[1] box (195, 154)" in re.sub(r"<[^>]+>", "", v.prompt_list_html())
    v.pending = []
    assert "Earlier prompts [0]–[0]" in v.prompt_list_html()
    v.clicks = [(240.0, 200.0, 1, 0)]
    assert not (v.sketch_image(0) == img).all()


def test_visitor_results_exports_and_close(tmp_path):
    v = _visitor(tmp_path)
    target = _red_circle(v)
    v.session.objects["obj_1"] = _obj("obj_1", target)
    reply = SimpleNamespace(text="Sure, it is [obj_1].", objects=[v.session.objects["obj_1"]], timings={"total": 0.5},
                            to_dict=lambda: {"text": "Sure, it is [obj_1]."})
    v.turns.append(ui.Turn("Please segment the red circle.", [], 0, {"frames": 16}, reply=reply))
    result = v.result_image(0)
    outline = (np.abs(result.astype(int) - np.array(Image.new("RGB", (1, 1), color_for("obj_1")).getpixel((0, 0)))).sum(-1) == 0)
    assert outline.sum() > 50 and target[0][outline].mean() > 0.95
    msgs = v.chat_messages()
    assert [m["role"] for m in msgs] == ["user", "assistant"] and "obj-chip obj_1" in msgs[1]["content"]
    assert "confidence: obj_1 0.80" in msgs[1]["content"]
    files = v.exports(0)
    assert Image.open(files["overlay"]).format == "PNG"
    masks, frames = decode_coco_rle(files["rle"].read_text())
    assert frames == [0] and (masks["obj_1"][0] == target[0]).all()
    convo = json.loads(files["conversation"].read_text())
    assert convo["turns"][0]["tags"] == ["obj_1"] and convo["media"]["width"] == 436
    assert convo["objects"][0]["color"] == color_for("obj_1")
    v.visible = []
    assert v.exports(0)["masks"] is None
    workdir = v.workdir()
    assert workdir.exists() and workdir.parent == tmp_path
    v.close()
    assert not workdir.exists() and v.session is None


def test_visitor_video_overlay_and_info(tmp_path):
    v = _visitor(tmp_path, VIDEO, num_frames=8)
    masks = np.zeros((8, *v.media.size), bool)
    masks[:, 10:60, 10:60] = True
    v.session.objects["obj_1"] = _obj("obj_1", masks)
    assert v.is_video and v.segment_frames() == 24
    info = v.media_info()
    assert "24 frames @ 8 fps" in info and f"at most {limits.MAX_SAMPLE_FRAMES}" in info and str(limits.DENSE_FRAMES) in info
    path = v.result_video()
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in c.decode(video=0)) == 8
    # sampled frames play over the source's duration (3 s): 7 intervals
    assert v.overlay_fps(dense=False) == pytest.approx(7 / v.media.timestamps[-1])
    assert v.overlay_fps(dense=True) == 8
    assert v.clamp_frame(99) == 7 and v.clamp_frame(None) == 0


def test_visitor_prunes_old_files(tmp_path):
    v = ui.Visitor(root=str(tmp_path))
    paths = [v.new_file("x", ".txt") for _ in range(30)]
    for p in paths:
        p.write_text("x")
    v.prune_files(keep=5)
    assert sum(p.exists() for p in paths) == 5 and paths[-1].exists()


# ------------------------------------------------------------------------------------------------ app wiring
def test_app_builds_with_one_documented_endpoint(monkeypatch):
    import app

    monkeypatch.setattr(app, "ENGINE", SimpleNamespace(name="bundled", notice="bundled demo model — knows only coloured shapes",
                                                       is_bundled=True))
    demo = app.build()
    info = demo.get_api_info()
    assert list(info["named_endpoints"]) == ["/ask"]
    params = [p["parameter_name"] for p in info["named_endpoints"]["/ask"]["parameters"]]
    assert params == ["media", "question", "prompts_json", "settings_json"]
    badge = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model_badge")
    assert "bundled demo model — knows only coloured shapes" in badge.value
    chat = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "chat")
    assert "bundled demo model" in chat.label
    gallery = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "examples")
    captions = {ex["id"]: item["caption"] for ex, item in zip(app.EXAMPLES, gallery.value)}
    assert {i for i, c in captions.items() if c.endswith(" · real model")} == {"pixelqa", "video_pixelqa", "id_seg"}
    assert len(app.EXAMPLES) >= 8 and {ex["id"] for ex in app.EXAMPLES} >= {
        "image_seg", "video_seg", "point_caption", "box_caption", "scribble_caption", "pixelqa", "multi_turn"}


def test_examples_are_small_and_valid():
    total = sum(p.stat().st_size for p in (REPO / "examples").rglob("*") if p.is_file())
    assert total < 2 * 2**20
    for ex in json.loads((REPO / "examples" / "examples.json").read_text())["examples"]:
        media = load_media(REPO / "examples" / ex["media"], num_frames=16)
        prompts = [ui.to_session_prompt(p) for p in ui.prompts_from_json(ex["prompts"], media.size)]
        limits.check_prompts(prompts, 0, media.size, media.num_frames)
        limits.clean_question(ex["question"])
        assert (REPO / "examples" / ex.get("thumb", ex["media"])).exists()


def test_prompt_hint_only_for_points_and_boxes_on_the_bundled_model():
    point, box = {"kind": "point", "frame": 0, "xy": (1, 2)}, {"kind": "box", "frame": 0, "xyxy": (1, 2, 3, 4)}
    scribble = {"kind": "mask", "frame": 0, "mask": None}
    assert ui.prompt_hint([point], True) == ui.prompt_hint([scribble, box], True) == ui.BUNDLED_POINTS_HINT
    assert ui.prompt_hint([scribble], True) == ui.prompt_hint([], True) == ""
    assert ui.prompt_hint([point, box], False) == ""


def test_example_label_flags_what_only_the_real_model_answers():
    example = {"kind": "PixelQA", "real_model_only": True}
    assert ui.example_label(example, bundled=True) == "PixelQA · real model"
    assert ui.example_label(example, bundled=False) == "PixelQA"
    assert ui.example_label({"kind": "Image segmentation"}, bundled=True) == "Image segmentation"
