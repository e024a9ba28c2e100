"""Tests for unipixel.rendering: colours, overlays, prompts, legends, video writers and mask exports."""
from __future__ import annotations

import itertools
import json
import re
import struct
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageColor, ImageSequence
from pycocotools import mask as mask_utils
from scipy import ndimage

from unipixel import rendering as r

HEX = re.compile(r"^#[0-9a-f]{6}$")


def rgb(color: str) -> np.ndarray:
    return np.array(ImageColor.getrgb(color), dtype=float)


def smooth_video(t: int, h: int, w: int) -> np.ndarray:
    """Gradients that move per frame: compressible, so codec error stays small and measurable."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [
        np.stack([(x * 255 // max(w - 1, 1) + 8 * k) % 256,
                  (y * 255 // max(h - 1, 1)),
                  np.full_like(x, (40 + 20 * k) % 256)], axis=-1)
        for k in range(t)
    ]
    return np.asarray(frames, dtype=np.uint8)


def box_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# --- colours -----------------------------------------------------------------------------------

def test_palettes_are_hex_unique_and_disjoint():
    assert len(r.OBJECT_PALETTE) >= 20
    for c in r.OBJECT_PALETTE + r.PROMPT_PALETTE:
        assert HEX.match(c), c
    assert len(set(r.OBJECT_PALETTE)) == len(r.OBJECT_PALETTE)
    assert not set(r.OBJECT_PALETTE) & set(r.PROMPT_PALETTE)


def test_color_for_is_deterministic_and_cycles():
    n = len(r.OBJECT_PALETTE)
    assert r.color_for("obj_1") == r.OBJECT_PALETTE[0] == "#e6194b"
    assert r.color_for("obj_2") == r.OBJECT_PALETTE[1]
    assert r.color_for("[obj_3]") == r.color_for("obj_3")
    assert r.color_for(f"obj_{n + 1}") == r.color_for("obj_1")
    assert r.color_map(["obj_1", "obj_2"]) == {"obj_1": r.OBJECT_PALETTE[0], "obj_2": r.OBJECT_PALETTE[1]}
    # Non-standard tags still get a fixed palette colour (CRC32, not the salted hash()).
    assert r.color_for("person") == r.color_for("person") in r.OBJECT_PALETTE


def test_first_twelve_colours_are_far_apart():
    first = [rgb(r.color_for(f"obj_{k}")) for k in range(1, 13)]
    assert len({tuple(c) for c in first}) == 12
    min_dist = min(np.linalg.norm(a - b) for a, b in itertools.combinations(first, 2))
    assert min_dist > 70


def test_prompt_colours_differ_from_object_colours():
    objs = [rgb(c) for c in r.OBJECT_PALETTE]
    for i in range(len(r.PROMPT_PALETTE)):
        p = rgb(r.prompt_color(i))
        assert min(np.linalg.norm(p - o) for o in objs) > 40
    assert r.prompt_color(len(r.PROMPT_PALETTE)) == r.prompt_color(0)


def test_text_color_is_readable():
    assert r.text_color("#ffe119") == "#000000"  # yellow -> black text
    assert r.text_color("#000075") == "#ffffff"  # navy -> white text
    assert r.text_color("#ffffff") == "#000000"
    assert r.text_color("#000000") == "#ffffff"
    for c in r.OBJECT_PALETTE + r.PROMPT_PALETTE:
        assert r.text_color(c) in ("#000000", "#ffffff")


# --- overlays ----------------------------------------------------------------------------------

@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (121, 161, 3), dtype=np.uint8)
    m1 = box_mask(121, 161, 20, 70, 20, 80)
    m2 = box_mask(121, 161, 40, 100, 90, 150)
    return frame, {"obj_1": m1, "obj_2": m2}


def test_overlay_fill_moves_toward_colour_and_leaves_outside_unchanged(scene):
    frame, masks = scene
    out = r.overlay_frame(frame, masks, alpha=0.45, outline=False)
    assert out.shape == frame.shape and out.dtype == np.uint8
    for tag, m in masks.items():
        c = rgb(r.color_for(tag))
        before = np.abs(frame[m].astype(float) - c).sum(axis=1)
        after = np.abs(out[m].astype(float) - c).sum(axis=1)
        assert np.all(after <= before + 3)  # +3: rounding
        np.testing.assert_allclose(after, 0.55 * before, atol=3 * 0.6)  # alpha blend, per pixel L1
    far = ~ndimage.binary_dilation(masks["obj_1"] | masks["obj_2"], iterations=5)
    np.testing.assert_array_equal(out[far], frame[far])


def test_outline_lies_on_mask_border(scene):
    frame, masks = scene
    flat = np.full_like(frame, 128)
    m = masks["obj_1"]
    out = r.overlay_frame(flat, {"obj_1": m}, alpha=0.45, outline=True)
    colour = np.array(ImageColor.getrgb(r.color_for("obj_1")), dtype=np.uint8)
    edge = np.all(out == colour, axis=-1)
    assert edge.any()
    assert not np.any(edge & ~m)  # only inside the mask
    border = m & ~ndimage.binary_erosion(m, structure=np.ones((3, 3)), iterations=2)
    np.testing.assert_array_equal(edge, border)  # exactly the 2 px inner border
    # Interior: the fill, not the outline colour.
    assert not edge[45, 50]


def test_outline_skips_image_edge_and_scales_with_size():
    m = np.zeros((50, 50), bool)
    m[:, :25] = True  # touches the top, bottom and left edges
    out = r.overlay_frame(np.zeros((50, 50, 3), np.uint8), {"obj_2": m}, alpha=0.0)
    edge = np.any(out != 0, axis=-1)
    assert set(np.nonzero(edge)[1]) == {23, 24}  # only along the real boundary

    big = np.zeros((8, 1920, 3), np.uint8)
    bm = np.zeros((8, 1920), bool)
    bm[:, :1000] = True
    out = r.overlay_frame(big, {"obj_1": bm}, alpha=0.0)
    assert np.any(out[4] != 0, axis=-1).sum() == 3  # 1920 px wide -> 3 px outline


def test_highlight_dims_others(scene):
    frame, masks = scene
    normal = r.overlay_frame(frame, masks)
    hl = r.overlay_frame(frame, masks, highlight="obj_2")
    m1, m2 = masks["obj_1"], masks["obj_2"]
    c1 = rgb(r.color_for("obj_1"))
    dist = lambda img: np.abs(img[m1].astype(float) - c1).sum(axis=1).mean()  # noqa: E731
    assert dist(hl) > dist(normal) + 20  # obj_1 much less tinted
    np.testing.assert_array_equal(hl[m2], normal[m2])  # highlighted object drawn as usual
    # Dimmed objects lose their outline.
    c1u8 = np.array(ImageColor.getrgb(r.color_for("obj_1")), dtype=np.uint8)
    assert not np.all(hl[m1] == c1u8, axis=-1).any()
    # Outside every mask nothing changes.
    outside = ~(m1 | m2)
    np.testing.assert_array_equal(hl[outside], frame[outside])
    # A tag with no mask on this frame is not an error.
    r.overlay_frame(frame, masks, highlight="obj_9")


def test_overlapping_highlight_is_on_top(scene):
    frame, _ = scene
    m = box_mask(121, 161, 10, 60, 10, 60)
    both = {"obj_2": m, "obj_1": m}  # without highlight obj_1 is drawn last, on top
    c2 = rgb(r.color_for("obj_2"))
    d2 = lambda img: np.abs(img[30, 30].astype(float) - c2).sum()  # noqa: E731
    assert d2(r.overlay_frame(frame, both, highlight="obj_2")) < d2(r.overlay_frame(frame, both))


def test_overlay_validates_inputs(scene):
    frame, masks = scene
    with pytest.raises(ValueError, match="shape"):
        r.overlay_frame(frame, {"obj_1": np.zeros((10, 10), bool)})
    with pytest.raises(ValueError, match="uint8"):
        r.overlay_frame(frame.astype(np.float32), masks)
    rgba = np.concatenate([frame, np.full(frame.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(r.overlay_frame(rgba, masks), r.overlay_frame(frame, masks))


def test_overlay_video_matches_per_frame():
    frames = smooth_video(4, 33, 47)
    masks = {"obj_1": np.zeros((4, 33, 47), bool)}
    for t in range(4):
        masks["obj_1"][t, 5:20, 5 + 5 * t: 20 + 5 * t] = True
    out = r.overlay_video(frames, masks, highlight="obj_1")
    assert out.shape == frames.shape and out.dtype == np.uint8
    for t in range(4):
        np.testing.assert_array_equal(out[t], r.overlay_frame(frames[t], {"obj_1": masks["obj_1"][t]},
                                                              highlight="obj_1"))
    with pytest.raises(ValueError):
        r.overlay_video(frames, {"obj_1": masks["obj_1"][:3]})


def test_draw_prompts_marks_each_prompt_in_its_colour():
    frame = np.full((200, 300, 3), 60, np.uint8)
    scribble = box_mask(200, 300, 120, 180, 200, 280)
    prompts = [
        {"type": "point", "xy": (50, 60), "label": 1},
        {"type": "box", "xyxy": (100, 30, 180, 110), "label": 0},
        {"type": "scribble", "mask": scribble},
    ]
    out = r.draw_prompts(frame, prompts)
    assert out.shape == frame.shape and out.dtype == np.uint8
    c0, c1, c2 = (np.array(ImageColor.getrgb(r.prompt_color(i)), np.uint8) for i in range(3))
    assert np.all(out[60, 50] == c0)  # dot centre
    assert np.all(out[70, 100] == c1)  # left edge of the box
    assert np.all(out[110, 140] == c1)  # bottom edge of the box
    assert np.all(out[70, 140] == 0)  # negative box: black cross through the centre
    inside = out[150, 240].astype(float)
    assert np.abs(inside - c2).sum() < np.abs(60 - c2.astype(float)).sum()  # tinted
    assert np.all(out[120, 240] == c2)  # scribble outline
    # Each [i] label is a box filled with the prompt colour; the point's label sits near the point.
    assert np.all(out[35:60, 50:100] == c0, axis=-1).sum() > 20
    # Far from all prompts nothing changes.
    np.testing.assert_array_equal(out[170:, :150], frame[170:, :150])


def test_draw_prompts_labels_stay_inside_small_images():
    frame = np.zeros((30, 30, 3), np.uint8)
    out = r.draw_prompts(frame, [{"xy": (29, 0)}])
    c0 = np.array(ImageColor.getrgb(r.prompt_color(0)), np.uint8)
    assert np.all(out == c0, axis=-1).sum() > 20


# --- legend ------------------------------------------------------------------------------------

def test_legend_rows_show_each_colour():
    entries = r.legend_entries(["obj_1", "obj_2", "obj_3"], {"obj_1": "the red car"})
    assert entries[0] == ("obj_1", r.color_for("obj_1"), "the red car")
    assert entries[1][2] == ""
    img = r.legend_image(entries, font_size=16)
    assert img.mode == "RGB"
    arr = np.asarray(img)
    for tag, colour, _ in entries:
        c = np.array(ImageColor.getrgb(colour), np.uint8)
        assert np.all(arr == c, axis=-1).sum() >= 10 * 10
    longer = r.legend_image([("obj_1", r.color_for("obj_1"), "a much longer label for the first object")])
    assert longer.width > r.legend_image([("obj_1", r.color_for("obj_1"), "")]).width


def test_with_legend_keeps_frame_and_adds_panel(scene):
    frame, masks = scene
    entries = r.legend_entries(masks)
    out = r.with_legend(frame, entries)
    assert out.shape[0] >= frame.shape[0] and out.shape[1] > frame.shape[1]
    np.testing.assert_array_equal(out[: frame.shape[0], : frame.shape[1]], frame)
    np.testing.assert_array_equal(r.with_legend(frame, []), frame)
    # Legend taller than a tiny frame: nothing cropped.
    tiny = frame[:10, :10]
    many = r.legend_entries([f"obj_{k}" for k in range(1, 9)])
    out = r.with_legend(tiny, many)
    assert out.shape[0] == np.asarray(r.legend_image(many, 12)).shape[0]
    np.testing.assert_array_equal(out[:10, :10], tiny)


# --- video writing -----------------------------------------------------------------------------

def top_level_boxes(path: Path) -> list[str]:
    """MP4 top-level box types, in file order."""
    data = path.read_bytes()
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos: pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8: pos + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size == 0:
            break
        pos += size
    return boxes


@pytest.mark.parametrize("size", [(47, 63), (48, 64)])
def test_write_mp4_h264_yuv420p_even_faststart(tmp_path, size):
    h, w = size
    frames = smooth_video(12, h, w)
    path = r.write_mp4(tmp_path / "v.mp4", frames, fps=12)
    boxes = top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat")  # faststart
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264"
        assert s.codec_context.pix_fmt == "yuv420p"
        assert (s.height, s.width) == (h + h % 2, w + w % 2)  # padded, never cropped
        assert s.average_rate == 12
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert len(decoded) == len(frames)
    err = np.abs(decoded[:, :h, :w].astype(float) - frames.astype(float)).mean()
    assert err < 6, err
    if w % 2:  # the pad column repeats the last column
        assert np.abs(decoded[:, :h, w].astype(float) - frames[:, :, -1].astype(float)).mean() < 6


def test_write_mp4_fractional_fps_and_list_input(tmp_path):
    frames = list(smooth_video(5, 20, 30))
    path = r.write_mp4(tmp_path / "v.mp4", frames, fps=29.97)
    with av.open(str(path)) as c:
        assert float(c.streams.video[0].average_rate) == pytest.approx(29.97)
        assert sum(1 for _ in c.decode(video=0)) == 5
    with pytest.raises(ValueError):
        r.write_mp4(tmp_path / "e.mp4", [], fps=10)


@pytest.mark.parametrize("writer,suffix", [(r.write_gif, ".gif"), (r.write_webp, ".webp")])
def test_animated_fallbacks(tmp_path, writer, suffix):
    frames = smooth_video(7, 31, 45)
    path = writer(tmp_path / f"v{suffix}", frames, fps=10)
    with Image.open(path) as im:
        decoded = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
        assert im.info.get("loop") == 0
    assert len(decoded) == 7
    assert decoded[0].shape == (31, 45, 3)
    assert np.abs(np.stack(decoded).astype(float) - frames.astype(float)).mean() < 12


def test_animation_durations_add_up_without_drift():
    d = r._durations_ms(30, 29.97, 10)
    assert all(x % 10 == 0 and x > 0 for x in d)
    assert abs(sum(d) - 30 * 1000 / 29.97) <= 5
    assert sum(r._durations_ms(300, 30, 1)) == 10000


# --- mask exports ------------------------------------------------------------------------------

def test_mask_pngs_are_binary_at_media_size(tmp_path):
    masks = np.zeros((3, 37, 51), bool)
    masks[0, 5:10, 5:20] = True
    masks[2] = True
    paths = r.mask_pngs(tmp_path / "out", "obj_2", masks, frame_indices=[0, 4, 8])
    assert [p.name for p in paths] == ["obj_2_f000.png", "obj_2_f004.png", "obj_2_f008.png"]
    for p, m in zip(paths, masks):
        with Image.open(p) as im:
            assert im.mode == "L" and im.size == (51, 37)
            arr = np.asarray(im)
        assert set(np.unique(arr)) <= {0, 255}
        np.testing.assert_array_equal(arr == 255, m)
    # A single image mask counts as one frame.
    assert [p.name for p in r.mask_pngs(tmp_path, "obj_1", masks[0])] == ["obj_1_f000.png"]
    with pytest.raises(ValueError):
        r.mask_pngs(tmp_path, "../evil", masks)
    with pytest.raises(ValueError):
        r.mask_pngs(tmp_path, "obj_1", masks, frame_indices=[1, 2])


@pytest.mark.parametrize("shape", [(4, 31, 17), (1, 1, 1), (2, 64, 48), (3, 7, 101)])
def test_coco_rle_round_trip_exact(shape):
    rng = np.random.default_rng(sum(shape))
    masks = {
        "obj_1": rng.random(shape) < 0.5,
        "obj_2": np.zeros(shape, bool),
        "obj_3": np.ones(shape, bool),
        "obj_4": ndimage.binary_opening(rng.random(shape) < 0.6),
    }
    idx = list(range(0, 3 * shape[0], 3))
    data = r.coco_rle(masks, idx)
    coco_json = json.loads(json.dumps(data))  # JSON-serialisable
    assert coco_json["frame_indices"] == idx
    assert (coco_json["height"], coco_json["width"]) == shape[1:]
    assert [o["tag"] for o in coco_json["objects"]] == list(masks)
    assert coco_json["objects"][0]["color"] == r.color_for("obj_1")
    for obj in coco_json["objects"]:
        assert len(obj["segmentations"]) == shape[0]
        assert all(isinstance(s["counts"], str) and s["size"] == list(shape[1:]) for s in obj["segmentations"])
    decoded, decoded_idx = r.decode_coco_rle(coco_json)
    assert decoded_idx == idx
    for tag, m in masks.items():
        assert decoded[tag].dtype == bool
        np.testing.assert_array_equal(decoded[tag], m)
    # Also decodes from JSON text, and segmentations are standard COCO RLE.
    decoded2, _ = r.decode_coco_rle(json.dumps(data))
    np.testing.assert_array_equal(decoded2["obj_4"], masks["obj_4"])
    seg = coco_json["objects"][0]["segmentations"][-1]
    assert mask_utils.area({"size": seg["size"], "counts": seg["counts"].encode()}) == masks["obj_1"][-1].sum()


def test_coco_rle_rejects_mismatched_stacks():
    with pytest.raises(ValueError):
        r.coco_rle({"obj_1": np.zeros((2, 4, 4), bool), "obj_2": np.zeros((2, 5, 4), bool)})


def test_zip_masks_contains_pngs_and_rle(tmp_path):
    rng = np.random.default_rng(3)
    masks = {"obj_1": rng.random((2, 9, 13)) < 0.3, "obj_2": rng.random((2, 9, 13)) < 0.3}
    path = r.zip_masks(tmp_path / "masks.zip", masks, frame_indices=[10, 20])
    with zipfile.ZipFile(path) as zf:
        names = sorted(zf.namelist())
        assert names == sorted(["masks_rle.json", "obj_1_f010.png", "obj_1_f020.png",
                                "obj_2_f010.png", "obj_2_f020.png"])
        with zf.open("obj_2_f020.png") as f:
            np.testing.assert_array_equal(np.asarray(Image.open(f)) == 255, masks["obj_2"][1])
        decoded, idx = r.decode_coco_rle(zf.read("masks_rle.json").decode())
    assert idx == [10, 20]
    np.testing.assert_array_equal(decoded["obj_1"], masks["obj_1"])


# --- overlay exports ---------------------------------------------------------------------------

def test_save_overlay_png_lossless_with_legend(tmp_path, scene):
    frame, masks = scene
    path = r.save_overlay_png(tmp_path / "o.png", frame, masks, labels={"obj_1": "dog"})
    with Image.open(path) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("RGB"))
    h, w = frame.shape[:2]
    assert arr.shape[1] > w
    np.testing.assert_array_equal(arr[:h, :w], r.overlay_frame(frame, masks))
    plain = r.save_overlay_png(tmp_path / "p.png", frame, masks, legend=False)
    assert np.asarray(Image.open(plain)).shape == frame.shape


def frame_count_and_width(path: Path) -> tuple[int, int]:
    """Frames and width of a written video (PyAV for MP4; Pillow for GIF/WebP, since FFmpeg can't
    decode animated WebP)."""
    if path.suffix == ".mp4":
        with av.open(str(path)) as c:
            return sum(1 for _ in c.decode(video=0)), c.streams.video[0].width
    with Image.open(path) as im:
        return im.n_frames, im.width


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ".webp"])
def test_save_overlay_video_formats(tmp_path, suffix):
    frames = smooth_video(5, 41, 57)
    masks = {"obj_1": np.zeros((5, 41, 57), bool)}
    masks["obj_1"][:, 10:30, 10:40] = True
    path = r.save_overlay_video(tmp_path / f"o{suffix}", frames, masks, fps=8)
    assert path.suffix == suffix
    n, width = frame_count_and_width(path)
    assert n == 5 and width == 57 + (suffix == ".mp4")  # mp4 pads odd widths
    n, width = frame_count_and_width(
        r.save_overlay_video(tmp_path / f"l{suffix}", frames, masks, fps=8, legend=True))
    assert n == 5 and width > 57 + 20
    with pytest.raises(ValueError, match="suffix"):
        r.save_overlay_video(tmp_path / "o.avi", frames, masks, fps=8)
