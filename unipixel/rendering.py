"""Colours, mask overlays and exports for UniPixel answers.

An answer names objects with tags such as ``[obj_1]``, each grounded by a per-frame boolean mask.
The module maps each tag to one fixed colour, so the chat chip, the overlay, the legend and
every exported file use the same colour for the same object. It draws overlays and the user's
visual prompts, writes browser-playable videos, and exports masks as PNG, COCO RLE and zip files.

Conventions: frames are ``uint8`` RGB arrays ``(H, W, 3)`` (videos ``(T, H, W, 3)``). Masks are
boolean arrays at the media size, where any non-zero value counts as inside.
"""
from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont
from pycocotools import mask as mask_utils
from scipy import ndimage

__all__ = [
    "OBJECT_PALETTE",
    "PROMPT_PALETTE",
    "color_for",
    "color_map",
    "text_color",
    "prompt_color",
    "overlay_frame",
    "overlay_video",
    "draw_prompts",
    "legend_entries",
    "legend_image",
    "with_legend",
    "write_mp4",
    "write_gif",
    "write_webp",
    "mask_pngs",
    "coco_rle",
    "decode_coco_rle",
    "zip_masks",
    "save_overlay_png",
    "save_overlay_video",
]

# ---------------------------------------------------------------------------------------------
# Colours
# ---------------------------------------------------------------------------------------------

#: Object colours, saturated and ordered so the first ones are the most distinct.
#: The first 15 are Sasha Trubetskoy's "20 distinct colours", leaving out the pastels, black and
#: white. The last 5 are Kelly's colours, picked greedily to stay far (CIELAB) from the rest and
#: from the prompt pastels.
OBJECT_PALETTE: tuple[str, ...] = (
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231",
    "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#469990",
    "#9a6324", "#800000", "#808000", "#000075", "#a9a9a9",
    "#2b3d26", "#875692", "#0067a5", "#b3446c", "#008856",
)

#: Visual-prompt colours: a pastel family that is not used for objects, so the user's
#: ``[0]``, ``[1]`` are not confused with the model's ``[obj_k]``.
PROMPT_PALETTE: tuple[str, ...] = ("#fabed4", "#aaffc3", "#dcbeff", "#ffd8b1", "#a1caf1", "#fffac8")

_TAG_INDEX = re.compile(r"^\[?obj_(\d+)\]?$")
_SAFE_TAG = re.compile(r"^[A-Za-z0-9_-]+$")


def color_for(tag: str) -> str:
    """The hex colour of an object tag: ``obj_k`` (or ``[obj_k]``) -> ``OBJECT_PALETTE[(k-1) % n]``.

    Any other tag gets a colour chosen by its CRC32. Python's ``hash`` is not used because it is
    salted per process, and the colour must be the same in every process and export.
    """
    m = _TAG_INDEX.match(tag)
    k = int(m.group(1)) - 1 if m else zlib.crc32(tag.encode("utf-8"))
    return OBJECT_PALETTE[k % len(OBJECT_PALETTE)]


def color_map(tags: Iterable[str]) -> dict[str, str]:
    """``{tag: hex}`` for the given tags, e.g. for ``gr.AnnotatedImage(color_map=...)``.

    A label missing from that map is drawn red, so give it every tag.
    """
    return {tag: color_for(tag) for tag in tags}


def text_color(color: str) -> str:
    """``"#000000"`` or ``"#ffffff"``, whichever has the higher WCAG contrast on ``color``."""
    c = np.array(ImageColor.getrgb(color)[:3], dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    lum = float(lin @ np.array([0.2126, 0.7152, 0.0722]))
    # Black wins when (L + 0.05) / 0.05 >= 1.05 / (L + 0.05).
    return "#000000" if (lum + 0.05) ** 2 >= 0.05 * 1.05 else "#ffffff"


def prompt_color(index: int) -> str:
    """The hex colour of the user's visual prompt ``[index]``, taken from the prompt family."""
    return PROMPT_PALETTE[index % len(PROMPT_PALETTE)]


def _rgb(color: str) -> np.ndarray:
    """A colour string as a float32 RGB triple."""
    return np.array(ImageColor.getrgb(color)[:3], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Overlays
# ---------------------------------------------------------------------------------------------

_SQUARE = ndimage.generate_binary_structure(2, 2)  # 8-connected: outlines without corner gaps
_DIM = 0.3  # alpha factor for objects that are not highlighted


def _as_rgb(frame: np.ndarray) -> np.ndarray:
    """Check that a frame is ``uint8`` and return it as ``(H, W, 3)``.

    Grey frames are stacked to RGB. RGBA frames (e.g. a Gradio ImageEditor background) lose alpha.
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        return np.repeat(frame[..., None], 3, axis=2)
    if frame.ndim == 3 and frame.shape[2] in (3, 4):
        return frame[..., :3]
    raise ValueError(f"frame must be (H, W), (H, W, 3) or (H, W, 4), got {frame.shape}")


def _as_mask(mask: np.ndarray, shape: tuple[int, ...], tag: str) -> np.ndarray:
    """A mask as bool, after checking that it has the media's shape."""
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"mask {tag!r} has shape {mask.shape}, expected {shape}")
    return mask.astype(bool, copy=False)


def _line_width(height: int, width: int) -> int:
    """Stroke width: 2 px, growing with the image (3 px at 1920, 6 px at 3840)."""
    return max(2, round(max(height, width) / 640))


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` px of its boundary with the background.

    The image border is not a boundary (``border_value=1``), so a mask that touches the image
    edge is not outlined along the edge.
    """
    inner = ndimage.binary_erosion(mask, structure=_SQUARE, iterations=width, border_value=1)
    return mask & ~inner


def _tint(out: np.ndarray, mask: np.ndarray, color: np.ndarray, alpha: float) -> None:
    """Blend ``color`` into the float image ``out`` in place where ``mask`` is set, with opacity ``alpha``."""
    sel = out[mask]  # gathered once: this is the costly step on large masks
    sel += alpha * (color - sel)
    out[mask] = sel


def overlay_frame(
    frame: np.ndarray,
    masks: Mapping[str, np.ndarray],
    alpha: float = 0.45,
    outline: bool = True,
    highlight: str | None = None,
) -> np.ndarray:
    """Draw each tag's mask on ``frame`` as a fill of opacity ``alpha`` plus an outline in its colour.

    Later masks are drawn over earlier ones. Outlines go on top of all fills so they stay crisp.
    With ``highlight``, the other objects are dimmed (fill at ``alpha * 0.3``, no outline) and
    the highlighted one is drawn last, on top. A ``highlight`` tag with no mask (e.g. an object
    missing from this video frame) still dims the others. Pixels outside all masks are unchanged.
    Returns a new ``uint8`` array ``(H, W, 3)``.
    """
    rgb = _as_rgb(frame)
    h, w = rgb.shape[:2]
    order = sorted(masks, key=lambda t: t == highlight)  # stable: highlighted last
    out = rgb.astype(np.float32)
    edges = []
    for tag in order:
        mask = _as_mask(masks[tag], (h, w), tag)
        color = _rgb(color_for(tag))
        dimmed = highlight is not None and tag != highlight
        a = alpha * _DIM if dimmed else alpha
        _tint(out, mask, color, a)
        if outline and not dimmed:
            edges.append((_outline(mask, _line_width(h, w)), color))
    for edge, color in edges:
        out[edge] = color
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def overlay_video(
    frames: np.ndarray,
    masks: Mapping[str, np.ndarray],
    alpha: float = 0.45,
    outline: bool = True,
    highlight: str | None = None,
) -> np.ndarray:
    """``overlay_frame`` for each frame of a ``(T, H, W, 3)`` video with ``(T, H, W)`` masks."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    stacks = {tag: _as_mask(m, frames.shape[:3], tag) for tag, m in masks.items()}
    return np.stack(
        [
            overlay_frame(f, {tag: m[t] for tag, m in stacks.items()}, alpha, outline, highlight)
            for t, f in enumerate(frames)
        ]
    )


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled default font at ``size`` px (no font files needed)."""
    return ImageFont.load_default(size=size)


def _draw_label(
    draw: ImageDraw.ImageDraw, image_size: tuple[int, int], xy: tuple[float, float],
    text: str, color: str, size: int,
) -> None:
    """A filled label box with ``text`` just above ``xy``, or below it near the top, kept inside the image."""
    font = _font(size)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 6)
    bw, bh = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
    img_w, img_h = image_size
    x = min(max(0.0, xy[0]), max(0, img_w - bw))
    y = xy[1] - bh if xy[1] - bh >= 0 else xy[1]
    y = min(max(0.0, y), max(0, img_h - bh))
    draw.rectangle([x, y, x + bw - 1, y + bh - 1], fill=color, outline="#000000")
    draw.text((x + pad - x0, y + pad - y0), text, fill=text_color(color), font=font)


def draw_prompts(
    frame: np.ndarray, prompts: Sequence[Mapping[str, Any]], alpha: float = 0.45
) -> np.ndarray:
    """Draw the user's visual prompts, each numbered ``[i]`` by its position, in ``prompt_color(i)``.

    A prompt is a mapping with any of these keys (the shape ``layers_to_prompts`` in the Gradio
    notes produces):

    - ``"xy"``: ``(x, y)`` point, drawn as a dot with a black rim;
    - ``"xyxy"``: ``(x0, y0, x1, y1)`` box, inclusive pixel corners, drawn as a rectangle;
    - ``"mask"`` or ``"scribble"``: ``(H, W)`` bool area, tinted with opacity ``alpha`` and outlined;
    - ``"label"``: ``0`` marks a negative prompt (exclude), drawn with a black cross over its point
      or box. Any other value, or no label, is positive.

    Returns a new ``uint8`` array ``(H, W, 3)``.
    """
    rgb = _as_rgb(frame)
    h, w = rgb.shape[:2]
    lw = _line_width(h, w)
    out = rgb.astype(np.float32)
    anchors: list[tuple[float, float] | None] = [None] * len(prompts)
    for i, p in enumerate(prompts):
        area = p.get("mask", p.get("scribble"))
        if area is None:
            continue
        area = _as_mask(area, (h, w), f"[{i}]")
        color = _rgb(prompt_color(i))
        _tint(out, area, color, alpha)
        out[_outline(area, lw)] = color
        ys, xs = np.nonzero(area)
        if xs.size:
            anchors[i] = (float(xs.min()), float(ys.min()))
    img = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    radius = 3 * lw
    font_size = max(12, min(h, w) // 30)
    for i, p in enumerate(prompts):
        color = prompt_color(i)
        negative = p.get("label", 1) == 0
        if "xyxy" in p:
            x0, y0, x1, y1 = (float(v) for v in p["xyxy"])
            draw.rectangle([x0 - lw, y0 - lw, x1 + lw, y1 + lw], outline="#000000", width=1)
            draw.rectangle([x0, y0, x1, y1], outline=color, width=lw)
            if negative:
                draw.line([x0, y0, x1, y1], fill="#000000", width=lw)
                draw.line([x0, y1, x1, y0], fill="#000000", width=lw)
            anchors[i] = (x0, y0)
        if "xy" in p:
            x, y = (float(v) for v in p["xy"])
            draw.ellipse([x - radius, y - radius, x + radius, y + radius],
                         fill=color, outline="#000000", width=max(1, lw // 2))
            if negative:
                r = radius * 0.7
                draw.line([x - r, y - r, x + r, y + r], fill="#000000", width=max(1, lw // 2))
                draw.line([x - r, y + r, x + r, y - r], fill="#000000", width=max(1, lw // 2))
            anchors[i] = (x + radius, y - radius)
        if anchors[i] is not None:
            _draw_label(draw, img.size, anchors[i], f"[{i}]", color, font_size)
    return np.array(img)  # writable copy (np.asarray of a PIL image is read-only)


# ---------------------------------------------------------------------------------------------
# Legend
# ---------------------------------------------------------------------------------------------

LegendEntry = tuple[str, str, str]  # (tag, colour, label)


def legend_entries(tags: Iterable[str], labels: Mapping[str, str] | None = None) -> list[LegendEntry]:
    """``(tag, color_for(tag), label)`` rows for ``legend_image``. A tag without a label gets ``""``."""
    labels = labels or {}
    return [(tag, color_for(tag), labels.get(tag, "")) for tag in tags]


def legend_image(entries: Sequence[LegendEntry], font_size: int = 16) -> Image.Image:
    """A white RGB panel with one row per entry: a colour swatch, then ``[tag] label``."""
    font = _font(font_size)
    pad = max(4, font_size // 2)
    row = font_size + pad
    texts = [f"[{tag}] {label}".rstrip() for tag, _, label in entries]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((probe.textlength(t, font=font) for t in texts), default=0)
    img = Image.new("RGB", (int(np.ceil(3 * pad + font_size + text_w)), pad + row * len(entries)), "white")
    draw = ImageDraw.Draw(img)
    for k, ((_, color, _), text) in enumerate(zip(entries, texts)):
        y = pad + k * row
        draw.rectangle([pad, y, pad + font_size - 1, y + font_size - 1], fill=color, outline="#000000")
        draw.text((2 * pad + font_size, y + font_size / 2), text, fill="#000000", font=font, anchor="lm")
    return img


def _beside(frame: np.ndarray, panel: np.ndarray) -> np.ndarray:
    """``frame`` with ``panel`` to its right, both top-aligned on a white canvas."""
    h = max(frame.shape[0], panel.shape[0])
    canvas = np.full((h, frame.shape[1] + panel.shape[1], 3), 255, dtype=np.uint8)
    canvas[: frame.shape[0], : frame.shape[1]] = frame
    canvas[: panel.shape[0], frame.shape[1]:] = panel
    return canvas


def _legend_font_size(height: int) -> int:
    """Legend text size for a frame of this height: readable, and not tiny next to large frames."""
    return max(12, height // 30)


def with_legend(frame: np.ndarray, entries: Sequence[LegendEntry]) -> np.ndarray:
    """``frame`` with a legend panel to its right (the frame is returned as RGB if ``entries`` is empty).

    Content is never cropped: the canvas is as tall as the taller of frame and legend.
    """
    rgb = _as_rgb(frame)
    if not entries:
        return rgb.copy()
    panel = np.asarray(legend_image(entries, _legend_font_size(rgb.shape[0])))
    return _beside(rgb, panel)


# ---------------------------------------------------------------------------------------------
# Video writing
# ---------------------------------------------------------------------------------------------


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """Pad an odd height or width by one row or column (edge copy), as yuv420p needs even sizes."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return np.ascontiguousarray(frame)
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _rgb_frames(frames: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """A non-empty list of same-size ``(H, W, 3)`` uint8 frames."""
    out = [_as_rgb(f) for f in frames]
    if not out:
        raise ValueError("no frames to write")
    if any(f.shape != out[0].shape for f in out):
        raise ValueError("all frames must have the same size")
    return out


def write_mp4(
    path: str | Path, frames: np.ndarray | Sequence[np.ndarray], fps: float, crf: int = 20
) -> Path:
    """Write a browser-playable MP4: H.264 (libx264), yuv420p, ``movflags=faststart``.

    yuv420p needs even sizes, so an odd height or width is padded by one edge-copied row or
    column; no content is cropped away. ``faststart`` puts the index first, so playback can
    start before the whole file has loaded. ``fps`` may be fractional (kept as a fraction, e.g. 2997/100).
    """
    rgb = _rgb_frames(frames)
    path = Path(path)
    first = _pad_even(rgb[0])
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream(
            "libx264",
            rate=Fraction(fps).limit_denominator(1001),
            options={"crf": str(crf), "preset": "veryfast"},
        )
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in rgb:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(_pad_even(f), format="rgb24")))
        container.mux(stream.encode())  # flush delayed frames
    return path


def _durations_ms(n: int, fps: float, tick_ms: int) -> list[int]:
    """Per-frame durations in multiples of ``tick_ms`` that add up to the exact timeline (no drift)."""
    ends = np.rint(np.arange(n + 1) * (1000.0 / tick_ms) / fps).astype(np.int64) * tick_ms
    return np.maximum(np.diff(ends), tick_ms).tolist()


def write_gif(path: str | Path, frames: np.ndarray | Sequence[np.ndarray], fps: float) -> Path:
    """Write a looping animated GIF (fallback when MP4 can't be used).

    GIF stores delays in 10 ms steps and has a 256-colour palette per frame. Pillow merges
    identical consecutive frames into one longer frame, so the frame count can drop while the
    timing stays the same.
    """
    images = [Image.fromarray(f) for f in _rgb_frames(frames)]
    path = Path(path)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=_durations_ms(len(images), fps, 10), loop=0)
    return path


def write_webp(
    path: str | Path, frames: np.ndarray | Sequence[np.ndarray], fps: float, quality: int = 80
) -> Path:
    """Write a looping animated WebP (lossy, full colour; fallback when MP4 can't be used).

    Like GIF, identical consecutive frames are merged into one longer frame.
    """
    images = [Image.fromarray(f) for f in _rgb_frames(frames)]
    path = Path(path)
    images[0].save(path, format="WEBP", save_all=True, append_images=images[1:],
                   duration=_durations_ms(len(images), fps, 1), loop=0, quality=quality)
    return path


# ---------------------------------------------------------------------------------------------
# Mask exports
# ---------------------------------------------------------------------------------------------


def _as_stack(masks: np.ndarray, tag: str) -> np.ndarray:
    """Masks as a ``(T, H, W)`` bool stack. A single ``(H, W)`` image mask becomes ``T = 1``."""
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"masks {tag!r} must be (T, H, W) or (H, W), got {masks.shape}")
    return masks.astype(bool, copy=False)


def _indices(frame_indices: Sequence[int] | None, n: int) -> list[int]:
    """Source frame numbers of ``n`` mask frames (``0..n-1`` when not given)."""
    idx = list(range(n)) if frame_indices is None else [int(i) for i in frame_indices]
    if len(idx) != n:
        raise ValueError(f"{len(idx)} frame indices for {n} mask frames")
    return idx


def _check_tag(tag: str) -> str:
    """Reject tags that are unsafe in file names (``..``, slashes)."""
    if not _SAFE_TAG.match(tag):
        raise ValueError(f"tag {tag!r} is not safe in a file name")
    return tag


def _png_bytes(mask: np.ndarray) -> bytes:
    """One mask as a single-channel 8-bit PNG with values 0 and 255."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _png_name(tag: str, idx: int) -> str:
    """File name of one frame's mask: ``{tag}_f{idx:03d}.png``."""
    return f"{_check_tag(tag)}_f{idx:03d}.png"


def mask_pngs(
    out_dir: str | Path, tag: str, masks: np.ndarray, frame_indices: Sequence[int] | None = None
) -> list[Path]:
    """Save one 0/255 grey PNG per frame as ``out_dir/{tag}_f{idx:03d}.png``, at the mask's size.

    ``frame_indices`` are the source frame numbers used in the names (``0..T-1`` by default).
    """
    stack = _as_stack(masks, tag)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for idx, m in zip(_indices(frame_indices, len(stack)), stack):
        p = out_dir / _png_name(tag, idx)
        p.write_bytes(_png_bytes(m))
        paths.append(p)
    return paths


def coco_rle(masks: Mapping[str, np.ndarray], frame_indices: Sequence[int] | None = None) -> dict:
    """Encode each tag's ``(T, H, W)`` masks as COCO RLE (pycocotools), in a JSON-serialisable dict.

    Layout (like YouTube-VIS results, one segmentation per listed frame, empty ones included)::

        {"frame_indices": [0, 5, ...], "height": H, "width": W,
         "objects": [{"tag": "obj_1", "color": "#e6194b",
                      "segmentations": [{"size": [H, W], "counts": "..."}, ...]}, ...]}

    Each segmentation is a standard compressed RLE with ``counts`` as ``str``. Use
    ``counts.encode()`` before ``pycocotools.mask.decode``, or call ``decode_coco_rle``.
    """
    stacks = {tag: _as_stack(m, tag) for tag, m in masks.items()}
    shapes = {m.shape for m in stacks.values()}
    if len(shapes) > 1:
        raise ValueError(f"all mask stacks must share one (T, H, W) shape, got {sorted(shapes)}")
    t, h, w = shapes.pop() if shapes else (0 if frame_indices is None else len(frame_indices), 0, 0)
    objects = []
    for tag, m in stacks.items():
        # pycocotools wants (H, W, N) Fortran-ordered uint8.
        rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))
        segs = [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]
        objects.append({"tag": tag, "color": color_for(tag), "segmentations": segs})
    return {"frame_indices": _indices(frame_indices, t), "height": h, "width": w, "objects": objects}


def decode_coco_rle(data: Mapping[str, Any] | str) -> tuple[dict[str, np.ndarray], list[int]]:
    """Inverse of ``coco_rle`` (a dict or its JSON text): ``({tag: (T, H, W) bool}, frame_indices)``."""
    if isinstance(data, str):
        data = json.loads(data)
    masks = {}
    for obj in data["objects"]:
        rles = [{"size": s["size"], "counts": s["counts"].encode("ascii")} for s in obj["segmentations"]]
        masks[obj["tag"]] = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
    return masks, [int(i) for i in data["frame_indices"]]


def zip_masks(
    path: str | Path, masks: Mapping[str, np.ndarray], frame_indices: Sequence[int] | None = None
) -> Path:
    """Write a zip for download: ``{tag}_f{idx:03d}.png`` for every tag and frame, plus ``masks_rle.json``."""
    path = Path(path)
    rle = coco_rle(masks, frame_indices)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for tag, m in masks.items():
            for idx, frame_mask in zip(rle["frame_indices"], _as_stack(m, tag)):
                zf.writestr(_png_name(tag, idx), _png_bytes(frame_mask))
        zf.writestr("masks_rle.json", json.dumps(rle))
    return path


# ---------------------------------------------------------------------------------------------
# Overlay exports
# ---------------------------------------------------------------------------------------------


def save_overlay_png(
    path: str | Path,
    frame: np.ndarray,
    masks: Mapping[str, np.ndarray],
    labels: Mapping[str, str] | None = None,
    legend: bool = True,
    highlight: str | None = None,
    alpha: float = 0.45,
) -> Path:
    """Save the overlay of ``masks`` on ``frame`` as a lossless PNG, with a legend by default.

    PNG rather than WebP, because Gradio's default WebP output is lossy and changes the colours.
    """
    img = overlay_frame(frame, masks, alpha=alpha, highlight=highlight)
    if legend:
        img = with_legend(img, legend_entries(masks, labels))
    path = Path(path)
    Image.fromarray(img).save(path, format="PNG")
    return path


_VIDEO_WRITERS = {".mp4": write_mp4, ".gif": write_gif, ".webp": write_webp}


def save_overlay_video(
    path: str | Path,
    frames: np.ndarray,
    masks: Mapping[str, np.ndarray],
    fps: float,
    labels: Mapping[str, str] | None = None,
    legend: bool = False,
    highlight: str | None = None,
    alpha: float = 0.45,
) -> Path:
    """Save the overlay of ``(T, H, W)`` masks on a video, as MP4, GIF or WebP by ``path``'s suffix.

    No legend by default: in the app the video sits next to chat chips in the same colours, and
    a legend would widen the player. Pass ``legend=True`` for a standalone download.
    """
    path = Path(path)
    writer = _VIDEO_WRITERS.get(path.suffix.lower())
    if writer is None:
        raise ValueError(f"unsupported video suffix {path.suffix!r}; use one of {sorted(_VIDEO_WRITERS)}")
    video = overlay_video(frames, masks, alpha=alpha, highlight=highlight)
    if legend and masks:
        panel = np.asarray(legend_image(legend_entries(masks, labels), _legend_font_size(video.shape[1])))
        video = np.stack([_beside(f, panel) for f in video])
    return writer(path, video, fps)
