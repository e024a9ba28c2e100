"""UI-only helpers for the Gradio demo (``app.py``): sketch gestures -> prompts, prompts <-> JSON, chat and
legend HTML, the per-visitor state with its overlays and downloads, and the "copy as code" snippet.

Nothing here runs the model: the model is reached only through :class:`unipixel.session.ChatSession`,
which ``app.py`` calls inside its ``spaces.GPU`` functions.
"""
from __future__ import annotations

import html
import json
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from . import limits
from .processing.media import iter_frames
from .processing.prompts import BoxPrompt, MaskPrompt, PointPrompt
from .rendering import (
    coco_rle,
    color_for,
    draw_prompts,
    overlay_frame,
    prompt_color,
    save_overlay_png,
    text_color,
    write_mp4,
    zip_masks,
)

# ------------------------------------------------------------------------------------------------ constants
TOOL_CLICK, TOOL_SCRIBBLE, TOOL_REFINE_POS, TOOL_REFINE_NEG = "Point / box", "Scribble", "Refine +", "Refine −"
TOOLS = (TOOL_CLICK, TOOL_SCRIBBLE, TOOL_REFINE_POS, TOOL_REFINE_NEG)
DRAG_PX = 6              # a gesture shorter than this (screen pixels) is a click
DISPLAY_MAX_SIDE = 1024  # sketch / result images are downscaled to this for the page
VIDEO_MAX_SIDE = 960     # overlay videos are downscaled to this
MAX_TURNS = limits.MAX_TURNS  # turns per conversation (documented in limits)
STAGES = {  # session stage -> (start, end) of the overall bar, label
    "decoding": (0.0, 0.1, "Decoding media"),
    "thinking": (0.1, 0.45, "Thinking"),
    "segmenting": (0.45, 0.7, "Segmenting"),
    "tracking": (0.7, 0.9, "Tracking"),
    "encoding": (0.9, 1.0, "Encoding results"),
}
DEFAULT_SETTINGS = {"frames": 16, "dense": True, "max_new_tokens": 512}

UIPrompt = dict  # {"kind": "point"|"box"|"mask", "frame": int, "xy"|"xyxy"|"mask": ..., "scribble"?: [[x, y]...], "width"?: int}


def stage_progress(stage: str, fraction: float) -> tuple[float, str]:
    """Overall progress in [0, 1] and the stage label for a session progress report."""
    start, end, label = STAGES.get(stage, (0.0, 1.0, stage.capitalize()))
    return start + (end - start) * min(max(fraction, 0.0), 1.0), label


# ------------------------------------------------------------------------------------------------ prompts
def brush_width(size: tuple[int, int]) -> int:
    """Scribble stroke width in media pixels: about 2% of the short side."""
    return max(3, round(min(size) / 50))


def scribble_mask(points: Sequence[Sequence[float]], size: tuple[int, int], width: int) -> np.ndarray:
    """Rasterise a polyline (media pixels) with a round brush of ``width`` into an ``(H, W)`` bool mask."""
    h, w = size
    img = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(img)
    pts = [(float(x), float(y)) for x, y in points]
    r = width / 2
    if len(pts) > 1:
        draw.line(pts, fill=1, width=max(1, int(width)), joint="curve")
    for x, y in pts:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
    return np.asarray(img, dtype=bool)


def _clamp01(v: float) -> float:
    return min(max(float(v), 0.0), 1.0)


def gesture_to_prompt(gesture: Mapping[str, Any], tool: str, size: tuple[int, int], frame: int) -> UIPrompt | None:
    """A sketch gesture (normalised points from the page) as a UI prompt, or ``None`` if it is not one.

    ``gesture = {"pts": [[u, v], ...], "drag": screen_px}`` with ``u, v`` in [0, 1] of the displayed image.
    With the point/box tool a click is a point and a drag is the box spanned by its first and last points;
    with the scribble tool the stroke becomes a mask.
    """
    pts = [(float(u), float(v)) for u, v in gesture.get("pts") or []]
    pts = [(u, v) for u, v in pts if -0.05 <= u <= 1.05 and -0.05 <= v <= 1.05]
    if not pts:
        return None
    h, w = size
    px = [(_clamp01(u) * w, _clamp01(v) * h) for u, v in pts]
    drag = float(gesture.get("drag") or 0)
    if tool == TOOL_SCRIBBLE:
        width = brush_width(size)
        line = [[round(x, 1), round(y, 1)] for x, y in _thin(px, max(1.0, width / 3))]
        return {"kind": "mask", "frame": frame, "mask": scribble_mask(line, size, width), "scribble": line, "width": width}
    if tool in (TOOL_REFINE_POS, TOOL_REFINE_NEG):
        x, y = px[-1]
        return {"kind": "click", "frame": frame, "xy": (round(x, 1), round(y, 1)), "label": int(tool == TOOL_REFINE_POS)}
    if drag < DRAG_PX or len(px) < 2:
        x, y = px[-1] if drag >= DRAG_PX else px[0]
        return {"kind": "point", "frame": frame, "xy": (round(x, 1), round(y, 1))}
    (x0, y0), (x1, y1) = px[0], px[-1]
    box = (round(min(x0, x1), 1), round(min(y0, y1), 1), round(max(x0, x1), 1), round(max(y0, y1), 1))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        return {"kind": "point", "frame": frame, "xy": (round(x1, 1), round(y1, 1))}
    return {"kind": "box", "frame": frame, "xyxy": box}


def _thin(points: list[tuple[float, float]], step: float) -> list[tuple[float, float]]:
    """Drop points closer than ``step`` to the previous kept one (keeps the last point)."""
    out = [points[0]]
    for p in points[1:]:
        if np.hypot(p[0] - out[-1][0], p[1] - out[-1][1]) >= step:
            out.append(p)
    if out[-1] != points[-1]:
        out.append(points[-1])
    return out


def to_session_prompt(p: UIPrompt) -> PointPrompt | BoxPrompt | MaskPrompt:
    """A UI prompt as the session's prompt type (original pixels, sampled-frame index)."""
    if p["kind"] == "point":
        return PointPrompt(float(p["xy"][0]), float(p["xy"][1]), int(p["frame"]))
    if p["kind"] == "box":
        return BoxPrompt(*(float(v) for v in p["xyxy"]), frame=int(p["frame"]))
    if p["kind"] == "mask":
        return MaskPrompt(np.asarray(p["mask"], dtype=bool), int(p["frame"]))
    raise ValueError(f"unknown prompt kind {p.get('kind')!r}")


class _Refused(Exception):
    """A specific one-line reason to refuse a prompt (other parse errors say "malformed")."""


def prompts_from_json(data: str | Sequence | None, size: tuple[int, int]) -> list[UIPrompt]:
    """Parse prompts in the API/CLI conventions into UI prompts (coordinates in original pixels).

    ``[{"point": [x, y], "frame": 0}, {"box": [x0, y0, x1, y1], "frame": 2},
    {"scribble": [[x, y], ...], "width": 5}, {"mask": {"size": [H, W], "counts": "<COCO RLE>"}}]``;
    ``frame`` defaults to 0. Raises ``ValueError`` with a one-line message on anything else.
    """
    if data is None or (isinstance(data, str) and not data.strip()):
        return []
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise ValueError(f"prompts must be a JSON list ({err.msg} at character {err.pos})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError("prompts must be a JSON list of {\"point\"|\"box\"|\"scribble\"|\"mask\": ..., \"frame\": k}")
    out = []

    def floats(value, n):
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise TypeError
        return [float(v) for v in value]

    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"prompt [{i}] must be an object like {{\"point\": [x, y], \"frame\": 0}}")
        frame = item.get("frame", 0)
        if not isinstance(frame, int) or isinstance(frame, bool):
            raise ValueError(f"prompt [{i}]: frame must be an integer")
        kinds = [k for k in ("point", "box", "scribble", "mask") if k in item]
        if len(kinds) != 1:
            raise ValueError(f"prompt [{i}] needs exactly one of point, box, scribble or mask")
        kind, value = kinds[0], item[kinds[0]]
        try:
            if kind == "point":
                x, y = floats(value, 2)
                out.append({"kind": "point", "frame": frame, "xy": (x, y)})
            elif kind == "box":
                x0, y0, x1, y1 = floats(value, 4)
                out.append({"kind": "box", "frame": frame, "xyxy": (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))})
            elif kind == "scribble":
                if not isinstance(value, list) or not value:
                    raise TypeError
                line = [floats(p, 2) for p in value]
                width = item.get("width", brush_width(size))
                if isinstance(width, bool) or not isinstance(width, (int, float)) or not 1 <= width <= 200:
                    raise _Refused(f"prompt [{i}]: scribble width must be 1-200 pixels")
                out.append({"kind": "mask", "frame": frame, "mask": scribble_mask(line, size, int(width)),
                            "scribble": line, "width": int(width)})
            else:
                rle = {"size": [int(s) for s in value["size"]], "counts": value["counts"]}
                if tuple(rle["size"]) != tuple(size):
                    raise _Refused(f"prompt [{i}]: mask is {rle['size'][1]}×{rle['size'][0]}, the media is {size[1]}×{size[0]}")
                counts = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
                mask = mask_utils.decode({"size": rle["size"], "counts": counts}).astype(bool)
                out.append({"kind": "mask", "frame": frame, "mask": mask})
        except _Refused as err:
            raise ValueError(str(err)) from None
        except (TypeError, KeyError, ValueError, OverflowError):
            raise ValueError(f"prompt [{i}]: malformed {kind}") from None
    return out


def prompts_to_json(prompts: Iterable[UIPrompt]) -> list[dict]:
    """UI prompts in the API/CLI JSON conventions (scribbles keep their stroke; other masks become COCO RLE)."""
    out = []
    for p in prompts:
        if p["kind"] == "point":
            out.append({"point": [_num(v) for v in p["xy"]], "frame": p["frame"]})
        elif p["kind"] == "box":
            out.append({"box": [_num(v) for v in p["xyxy"]], "frame": p["frame"]})
        elif p.get("scribble"):
            out.append({"scribble": [[_num(x), _num(y)] for x, y in p["scribble"]], "width": p["width"], "frame": p["frame"]})
        else:
            rle = mask_utils.encode(np.asfortranarray(np.asarray(p["mask"], dtype=np.uint8)))
            out.append({"mask": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                        "frame": p["frame"]})
    return out


def _num(v: float) -> float | int:
    v = round(float(v), 1)
    return int(v) if v.is_integer() else v


def describe_prompt(index: int, p: UIPrompt, is_image: bool = True) -> str:
    """``[0] point (120, 80)``, ``[1] box (10, 10)–(60, 50) · frame 3`` ..."""
    if p["kind"] == "point":
        what = "point ({:.0f}, {:.0f})".format(*p["xy"])
    elif p["kind"] == "box":
        what = "box ({:.0f}, {:.0f})–({:.0f}, {:.0f})".format(*p["xyxy"])
    else:
        what = f"scribble ({int(np.asarray(p['mask']).sum())} px)"
    return f"[{index}] {what}" + ("" if is_image else f" · frame {p['frame']}")


def settings_from_json(data: str | Mapping | None) -> dict:
    """Validated API settings: ``frames``, ``dense``, ``max_new_tokens``, ``start``/``end`` (seconds) and
    ``previous_turns`` (``[{"question": ..., "prompts": [...]}, ...]`` replayed first)."""
    if data is None or (isinstance(data, str) and not data.strip()):
        data = {}
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise ValueError(f"settings must be a JSON object ({err.msg})") from None
    if not isinstance(data, Mapping):
        raise ValueError('settings must be a JSON object like {"frames": 16, "dense": false, "max_new_tokens": 256}')
    known = {"frames", "dense", "max_new_tokens", "start", "end", "previous_turns"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    out = {**DEFAULT_SETTINGS, "start": None, "end": None, "previous_turns": []}
    out.update({k: v for k, v in data.items() if v is not None})
    if isinstance(out["frames"], bool) or not isinstance(out["frames"], int):
        raise ValueError("settings.frames must be an integer")
    limits.check_num_frames(out["frames"])
    if isinstance(out["max_new_tokens"], bool) or not isinstance(out["max_new_tokens"], int):
        raise ValueError("settings.max_new_tokens must be an integer")
    limits.check_new_tokens(out["max_new_tokens"])
    if not isinstance(out["dense"], bool):
        raise ValueError("settings.dense must be true or false")
    out["start"], out["end"] = check_segment(out["start"], out["end"])
    turns = out["previous_turns"]
    if not isinstance(turns, list) or not all(isinstance(t, Mapping) and isinstance(t.get("question"), str) for t in turns):
        raise ValueError('settings.previous_turns must be a list of {"question": ..., "prompts": [...]}')
    if len(turns) >= limits.MAX_TURNS:
        raise ValueError(f"at most {limits.MAX_TURNS - 1} previous turns; start a new conversation")
    return out


def check_segment(start: Any, end: Any) -> tuple[float | None, float | None]:
    """Start/end seconds of the analysed video segment (``None`` = from the beginning / to the end)."""
    def num(v, name):
        if v is None or v == "":
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
            raise ValueError(f"the segment {name} must be a number of seconds ≥ 0")
        return float(v)
    start, end = num(start, "start"), num(end, "end")
    if start == 0:
        start = None
    if start is not None and end is not None and end <= start:
        raise ValueError(f"the segment end ({end:g} s) must come after its start ({start:g} s)")
    return start, end


# ------------------------------------------------------------------------------------------------ HTML
_CHIP = '<span class="obj-chip {tag}{active}" style="background:{bg};color:{fg}">[{tag}]</span>'
_PCHIP = '<span class="prompt-chip p{i}" style="background:{bg};color:{fg}">[{i}]</span>'


def obj_chip(tag: str, active: bool = False) -> str:
    """A coloured ``[obj_k]`` chip in exactly the colour of the object's mask."""
    bg = color_for(tag)
    return _CHIP.format(tag=tag, active=" active" if active else "", bg=bg, fg=text_color(bg))


def prompt_chip(i: int) -> str:
    bg = prompt_color(i)
    return _PCHIP.format(i=i, bg=bg, fg=text_color(bg))


def chip_text(text: str, highlight: str | None = None, regions: int = 0) -> str:
    """Escape ``text`` and turn ``[obj_k]`` into object chips and ``[i]`` (i < ``regions``) into prompt chips."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\[(obj_\d+)\]", lambda m: obj_chip(m.group(1), m.group(1) == highlight), out)
    out = out.replace("[no mask]", '<span class="obj-chip none">[no mask]</span>')
    return re.sub(r"\[(\d+)\]", lambda m: prompt_chip(int(m.group(1))) if int(m.group(1)) < regions else m.group(0), out)


def timeline_html(tag: str, presence: Sequence[float], masks_any: Sequence[bool], current: int | None) -> str:
    """One cell per sampled frame, filled in the object's colour where it is present (click = go to frame)."""
    color = color_for(tag)
    cells = []
    for k, (p, on) in enumerate(zip(presence, masks_any)):
        style = f"background:{color};opacity:{0.35 + 0.65 * float(p):.2f}" if on else ""
        cur = " current" if k == current else ""
        cells.append(f'<span class="tl-cell{cur}" data-frame="{k}" data-tag="{tag}" title="frame {k}: '
                     f'presence {float(p):.2f}" style="{style}"></span>')
    return f'<span class="timeline">{"".join(cells)}</span>'


def object_list_html(objects: Sequence, visible: Iterable[str], highlight: str | None, frame: int | None,
                     is_image: bool) -> str:
    """Legend / object list: chip, where it came from, confidence bar and (videos) presence timeline."""
    if not objects:
        return ('<div class="obj-list empty">Objects the model segments appear here, each in its own colour. '
                'Click a tag or a mask to highlight it.</div>')
    visible = set(visible)
    rows = []
    for obj in objects:
        conf = obj.confidence
        hidden = "" if obj.tag in visible else " hidden-obj"
        active = " active-row" if obj.tag == highlight else ""
        origin = f"turn {obj.turn}" + (f" · from [{obj.region}]" if obj.region is not None else "")
        bar = (f'<span class="conf" title="confidence {conf:.2f}"><span style="width:{100 * conf:.0f}%;'
               f'background:{color_for(obj.tag)}"></span></span><span class="conf-num">{conf:.2f}</span>')
        timeline = "" if is_image else timeline_html(
            obj.tag, list(obj.presence), [bool(m.any()) for m in obj.masks], frame)
        rows.append(f'<div class="obj-row{hidden}{active}">{obj_chip(obj.tag, obj.tag == highlight)}'
                    f'<span class="obj-origin">{origin}</span>{bar}{timeline}</div>')
    return f'<div class="obj-list">{"".join(rows)}</div>'


BUNDLED_POINTS_HINT = "the bundled demo model does not read points or boxes (its answer is the same for any): scribble instead"


def prompt_hint(prompts: Sequence[UIPrompt], bundled: bool) -> str:
    """What a visitor should know about a turn's prompts on this model ("" when nothing): the bundled model
    ignores point and box prompts (its model card), so a reply to one must not pass for a reading of it."""
    return BUNDLED_POINTS_HINT if bundled and any(p["kind"] in ("point", "box") for p in prompts) else ""


def beyond_model(example: Mapping[str, Any], bundled: bool) -> bool:
    """Whether the running model cannot answer this gallery example (the bundled one reads no point or box)."""
    return bundled and bool(example.get("real_model_only"))


def example_label(example: Mapping[str, Any], bundled: bool) -> str:
    """An example's gallery caption; on the bundled model, those it cannot answer say they need the real one."""
    return example["kind"] + (" · real model" if beyond_model(example, bundled) else "")


def model_badge_html(name: str, notice: str, bundled: bool) -> str:
    label = "bundled demo model — knows only coloured shapes" if bundled else html.escape(name)
    extra = "" if not notice or notice.startswith("bundled demo model") and "unavailable" not in notice else notice
    tip = html.escape(extra or label, quote=True)
    kind = "bundled" if bundled else "real"
    return (f'<div id="model_badge_inner" class="model-badge {kind}" title="{tip}"><span class="dot"></span>'
            f'<span class="model-label">Model: {label}</span></div>')


# ------------------------------------------------------------------------------------------------ code
def copy_as_code(root: str, media_name: str, question: str, prompts: list[dict], settings: dict,
                 previous: list[dict] | None = None) -> str:
    """A gradio_client snippet that reproduces a turn through the ``/ask`` endpoint."""
    settings = {k: settings[k] for k in ("frames", "dense", "max_new_tokens", "start", "end") if settings.get(k) is not None}
    if previous:
        settings["previous_turns"] = previous
    client = f'Client("{root}")' if "://" in root else f'Client("{root}")  # the Space'
    return "\n".join([
        "# pip install gradio_client",
        "from gradio_client import Client, handle_file",
        "",
        f"client = {client}",
        "text, overlay, objects = client.predict(",
        f"    handle_file({media_name!r}),  # the media file of this conversation",
        f"    {question!r},",
        f"    {json.dumps(prompts)!r},  # visual prompts [0], [1], ... (JSON, original pixels)",
        f"    {json.dumps(settings)!r},  # settings (JSON)",
        '    api_name="/ask",',
        ")",
        "print(text)              # reply with [obj_k] tags",
        "print(overlay)           # local path of the overlay (PNG for images, MP4 for videos)",
        'print([o["tag"] for o in objects["objects"]])',
        "",
        *cli_lines(media_name, question, prompts, settings, previous),
    ])


def cli_lines(media_name: str, question: str, prompts: list[dict], settings: dict, previous: list[dict] | None) -> list[str]:
    """The same turn as a ``python -m unipixel infer`` command (comment lines), when the CLI can express it."""
    if previous:
        return ["# The CLI answers single questions; the API call above replays the earlier turns first."]
    args = [shlex.quote(media_name), shlex.quote(question)]
    notes = []
    for i, p in enumerate(prompts):
        frame = p.get("frame", 0)
        if "point" in p:
            args.append("--point " + ",".join(str(v) for v in [*p["point"], frame]))
        elif "box" in p:
            args.append("--box " + ",".join(str(v) for v in [*p["box"], frame]))
        else:
            args.append(f"--mask prompt_{i}.png,{frame}")
            notes.append(f"prompt_{i}.png: the mask of [{i}] as a PNG of the media's size")
    if (settings.get("frames") or 1) > 1:
        args.append(f"--frames {settings['frames']}")
    if settings.get("dense"):
        args.append("--dense")
    lines = ["# The same turn with the command line (writes reply.json, masks and the overlay to out/):",
             "#   python -m unipixel infer " + " ".join(args) + " --out out/"]
    if settings.get("start") is not None or settings.get("end") is not None:
        lines.append("#   (the CLI analyses the whole video: cut it to the segment first)")
    return lines + [f"#   {n}" for n in notes]


# ------------------------------------------------------------------------------------------------ images
def fit_display(img: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """Downscale an RGB image so its longer side is at most ``max_side`` (never upscales)."""
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return img
    return np.asarray(Image.fromarray(img).resize((max(2, round(w * scale)), max(2, round(h * scale))), Image.BILINEAR))


STRIP_COLS = 8


def frames_strip(frames: np.ndarray, current: int, timestamps: Sequence[float] | None = None,
                 cols: int = STRIP_COLS, thumb_w: int = 120) -> np.ndarray:
    """A contact sheet of the sampled frames (``cols`` per row), each numbered, the current one framed.

    Every cell has the same size, so a click at ``(u, v)`` of the sheet maps back with :func:`strip_index`.
    """
    n, h, w = frames.shape[:3]
    cols = min(cols, n)
    rows = -(-n // cols)
    th = max(8, round(thumb_w * h / w))
    pad = 6
    cw, ch = thumb_w + 2 * pad, th + 2 * pad
    sheet = Image.new("RGB", (cols * cw, rows * ch), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k in range(n):
        x, y = (k % cols) * cw + pad, (k // cols) * ch + pad
        sheet.paste(Image.fromarray(frames[k]).resize((thumb_w, th), Image.BILINEAR), (x, y))
        if k == current:
            draw.rectangle([x - 4, y - 4, x + thumb_w + 3, y + th + 3], outline="#4f46e5", width=4)
        label = f"{k}" + (f" · {timestamps[k]:.1f}s" if timestamps else "")
        box = draw.textbbox((x + 4, y + 3), label)
        draw.rectangle([box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2], fill=(17, 24, 39))
        draw.text((x + 4, y + 3), label, fill=(255, 255, 255))
    return np.asarray(sheet)


def strip_index(u: float, v: float, n: int, cols: int = STRIP_COLS) -> int | None:
    """The frame under a click at ``(u, v)`` (fractions of the sheet) of :func:`frames_strip`, or ``None``."""
    cols = min(cols, n)
    rows = -(-n // cols)
    if not (0 <= u < 1 and 0 <= v < 1):
        return None
    k = int(v * rows) * cols + int(u * cols)
    return k if k < n else None


def draw_clicks(img: np.ndarray, clicks: Sequence[tuple[float, float, int]]) -> np.ndarray:
    """Refinement clicks: green ⊕ (positive) / red ⊖ (negative) markers."""
    if not clicks:
        return img
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    r = max(5, round(min(img.shape[:2]) / 45))
    for x, y, label in clicks:
        color = "#16a34a" if label else "#dc2626"
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color, outline="#ffffff", width=max(1, r // 4))
        draw.line([x - r * 0.55, y, x + r * 0.55, y], fill="#ffffff", width=max(1, r // 3))
        if label:
            draw.line([x, y - r * 0.55, x, y + r * 0.55], fill="#ffffff", width=max(1, r // 3))
    return np.asarray(pil)


def object_at(masks: Mapping[str, np.ndarray], x: float, y: float) -> str | None:
    """The smallest mask containing pixel ``(x, y)`` (or the nearest one within a few pixels), else ``None``."""
    hits = []
    for tag, m in masks.items():
        h, w = m.shape
        xi, yi = min(max(int(x), 0), w - 1), min(max(int(y), 0), h - 1)
        r = max(2, round(min(h, w) / 100))
        if m[yi, xi]:
            hits.append((0, int(m.sum()), tag))
        elif m[max(0, yi - r): yi + r + 1, max(0, xi - r): xi + r + 1].any():
            hits.append((1, int(m.sum()), tag))
    return min(hits)[2] if hits else None


def _resize_mask(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if m.shape == size:
        return m
    return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)) > 127


# ------------------------------------------------------------------------------------------------ visitor
@dataclass
class Turn:
    """One exchange as shown in the chat (``reply`` is the session's Reply; ``note`` for refinements)."""

    question: str
    prompts: list[UIPrompt]
    first_id: int
    settings: dict
    reply: Any = None
    note: str | None = None
    error: str | None = None


@dataclass
class Visitor:
    """Everything one browser tab holds: its ChatSession, prompts, view choices and temporary files.

    Kept in ``gr.State``; :meth:`close` frees the session and deletes the files (called when the tab
    closes or the state expires).
    """

    root: str = ""
    session: Any = None
    media_name: str = ""
    media_path: Path | None = None
    segment: tuple[float | None, float | None] = (None, None)
    pending: list[UIPrompt] = field(default_factory=list)
    sent: list[UIPrompt] = field(default_factory=list)
    clicks: list[tuple[float, float, int, int]] = field(default_factory=list)  # x, y, label, frame
    turns: list[Turn] = field(default_factory=list)
    visible: list[str] | None = None
    highlight: str | None = None
    followups: list[str] = field(default_factory=list)
    asking: list[tuple[str, list[UIPrompt]]] = field(default_factory=list)  # questions shown, not yet answered
    last_used: float = field(default_factory=time.time)
    _dir: Path | None = None
    _files: list[Path] = field(default_factory=list)
    _counter: int = 0

    # ---------------------------------------------------------------- lifecycle
    def workdir(self) -> Path:
        if self._dir is None or not self._dir.exists():
            base = Path(self.root or tempfile.gettempdir())
            base.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="visitor-", dir=base))
        return self._dir

    def new_file(self, stem: str, suffix: str) -> Path:
        self._counter += 1
        path = self.workdir() / f"{stem}-{self._counter:04d}{suffix}"
        self._files.append(path)
        return path

    def prune_files(self, keep: int = limits.VISITOR_FILES_KEPT) -> None:
        """Delete all but the newest ``keep`` generated files (Gradio keeps its own copies)."""
        while len(self._files) > keep:
            self._files.pop(0).unlink(missing_ok=True)

    def close(self) -> None:
        self.session = None
        self.pending, self.sent, self.clicks, self.turns, self.asking = [], [], [], [], []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir, self._files = None, []

    # ---------------------------------------------------------------- accessors
    @property
    def media(self):
        return None if self.session is None else self.session.media

    @property
    def is_video(self) -> bool:
        return self.media is not None and not self.media.is_image

    @property
    def objects(self) -> list:
        return [] if self.session is None else list(self.session.objects.values())

    @property
    def visible_tags(self) -> list[str]:
        tags = [o.tag for o in self.objects]
        return tags if self.visible is None else [t for t in tags if t in self.visible]

    def reset_conversation(self) -> None:
        if self.session is not None:
            self.session.reset()
        self.pending, self.sent, self.clicks, self.turns = [], [], [], []
        self.visible, self.highlight, self.followups, self.asking = None, None, [], []

    def clamp_frame(self, frame: Any) -> int:
        n = 1 if self.media is None else self.media.num_frames
        try:
            return min(max(int(frame or 0), 0), n - 1)
        except (TypeError, ValueError):
            return 0

    def segment_frames(self) -> int:
        """Frames in the analysed segment (what dense tracking would decode)."""
        media = self.media
        if media is None:
            return 0
        return media.frame_indices[-1] - media.frame_indices[0] + 1

    def dense_cap(self) -> int:
        """Frames dense tracking may decode for this media's frame size (see ``limits.dense_frame_cap``)."""
        return limits.dense_frame_cap(self.media.size, limits.DENSE_FRAMES) if self.media is not None else 0

    def dense_possible(self) -> bool:
        """Dense tracking covers the whole analysed segment (else the overlay would stop early)."""
        return self.is_video and self.segment_frames() <= self.dense_cap()

    def overlay_fps(self, dense: bool) -> float:
        media = self.media
        if dense and media.fps:
            return float(media.fps)
        ts = media.timestamps
        if ts and len(ts) > 1 and ts[-1] > ts[0]:
            return float(np.clip((len(ts) - 1) / (ts[-1] - ts[0]), 1.0, 60.0))
        return float(media.fps or 4.0)

    # ---------------------------------------------------------------- views
    def all_prompts(self) -> list[UIPrompt]:
        return self.sent + self.pending

    def sketch_image(self, frame: int, tool: str = TOOL_CLICK, refine_tag: str | None = None) -> np.ndarray | None:
        """The frame to draw on, with every prompt of that frame numbered ``[i]`` in its colour."""
        media = self.media
        if media is None:
            return None
        frame = self.clamp_frame(frame)
        img = media.frames[frame]
        refining = tool in (TOOL_REFINE_POS, TOOL_REFINE_NEG)
        if refining and refine_tag in self.session.objects:
            img = overlay_frame(img, {refine_tag: self.session.objects[refine_tag].masks[frame]})
        drawables = []
        for p in self.all_prompts():
            if p["frame"] != frame:
                drawables.append({})
            elif p["kind"] == "point":
                drawables.append({"xy": p["xy"]})
            elif p["kind"] == "box":
                drawables.append({"xyxy": p["xyxy"]})
            else:
                drawables.append({"mask": p["mask"]})
        if drawables and not refining:
            img = draw_prompts(img, drawables)
        img = draw_clicks(np.ascontiguousarray(img), [(x, y, lab) for x, y, lab, f in self.clicks if f == frame])
        return fit_display(img)

    def frame_masks(self, frame: int, tags: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        objects = self.session.objects if self.session is not None else {}
        tags = self.visible_tags if tags is None else tags
        return {t: objects[t].masks[frame] for t in tags if t in objects}

    def result_image(self, frame: int) -> np.ndarray | None:
        media = self.media
        if media is None or not self.objects:
            return None
        frame = self.clamp_frame(frame)
        return fit_display(overlay_frame(media.frames[frame], self.frame_masks(frame), highlight=self.highlight))

    def _dense_ready(self, tags: list[str]) -> list[int] | None:
        objects = [self.session.objects[t] for t in tags]
        if not objects or any(o.dense_masks is None for o in objects):
            return None
        first = objects[0].dense_indices
        return first if all(o.dense_indices == first for o in objects) else None

    def mask_stacks(self) -> tuple[dict[str, np.ndarray], list[int]]:
        """Visible objects' masks as ``(T, H, W)`` stacks and their source frame indices (dense if all have it)."""
        tags = self.visible_tags
        dense = self._dense_ready(tags) if self.is_video else None
        if dense is not None:
            return {t: self.session.objects[t].dense_masks for t in tags}, list(dense)
        return {t: self.session.objects[t].masks for t in tags}, list(self.media.frame_indices)

    def result_video(self) -> Path | None:
        """The overlay video of the visible objects (every decoded frame when dense masks exist)."""
        if not self.is_video or not self.objects:
            return None
        stacks, indices = self.mask_stacks()
        dense = self._dense_ready(self.visible_tags) is not None
        if dense:
            kept = getattr(self.session, "dense_frames", None)  # the frames dense tracking decoded
            if kept is not None and len(kept) == len(indices):
                frames = iter(kept)
            else:
                start, end = self.segment
                frames = (f.rgb for f in iter_frames(self.media_path, start_s=start, end_s=end, max_frames=len(indices)))
        else:
            frames = iter(self.media.frames)
        out = []
        for k, frame in enumerate(frames):
            if k >= len(indices):
                break
            small = fit_display(frame, VIDEO_MAX_SIDE)
            masks = {t: _resize_mask(m[k], small.shape[:2]) for t, m in stacks.items()}
            out.append(overlay_frame(small, masks, highlight=self.highlight))
        if not out:
            return None
        return write_mp4(self.new_file("overlay", ".mp4"), out, fps=self.overlay_fps(dense))

    def exports(self, frame: int, video: Path | None = None) -> dict[str, Path | None]:
        """Download files: overlay (PNG/MP4; ``video`` = an overlay video just made), per-object mask PNG zip,
        COCO RLE JSON, conversation JSON."""
        files: dict[str, Path | None] = {"overlay": None, "masks": None, "rle": None, "conversation": None}
        if self.media is None:
            return files
        if self.turns:
            path = self.new_file("conversation", ".json")
            path.write_text(json.dumps(self.conversation(), indent=1))
            files["conversation"] = path
        if not self.objects:
            return files
        stacks, indices = self.mask_stacks()
        if self.is_video:
            files["overlay"] = video or self.result_video()
        else:
            files["overlay"] = save_overlay_png(self.new_file("overlay", ".png"), self.media.frames[0],
                                                {t: m[0] for t, m in stacks.items()})
        if stacks:
            files["masks"] = zip_masks(self.new_file("masks", ".zip"), stacks, indices)
            path = self.new_file("masks_coco_rle", ".json")
            path.write_text(json.dumps(coco_rle(stacks, indices)))
            files["rle"] = path
        self.prune_files()
        return files

    def conversation(self) -> dict:
        """Structured JSON of the conversation: media, turns (text, tags, prompts), objects and frames."""
        media = self.media
        turns = []
        for t in self.turns:
            entry = {"question": t.question, "prompts": prompts_to_json(t.prompts), "first_prompt_id": t.first_id,
                     "settings": t.settings}
            if t.reply is not None:
                entry["reply"] = t.reply.to_dict()
                entry["tags"] = [o.tag for o in t.reply.objects]
            if t.note:
                entry["note"] = t.note
            if t.error:
                entry["error"] = t.error
            turns.append(entry)
        return {
            "media": {"name": self.media_name, "is_image": media.is_image, "height": media.size[0],
                      "width": media.size[1], "sampled_frames": media.frame_indices, "timestamps": media.timestamps,
                      "fps": media.fps, "segment": list(self.segment)},
            "turns": turns,
            "objects": [o.to_dict() for o in self.objects],
        }

    def chat_messages(self) -> list[dict]:
        msgs = []
        regions = len(self.sent)
        for t in self.turns:
            if t.note:
                msgs.append({"role": "assistant", "content": f'<span class="note">{chip_text(t.note, self.highlight, regions)}</span>'})
                continue
            msgs.append({"role": "user", "content": self.user_message_html(t.question, t.prompts, t.first_id)})
            if t.error:
                msgs.append({"role": "assistant", "content": f'<span class="reply-error">⚠️ {html.escape(t.error)}</span>'})
            elif t.reply is not None:
                body = chip_text(t.reply.text, self.highlight, regions)
                if t.reply.objects:
                    conf = " · ".join(f"{o.tag} {o.confidence:.2f}" for o in t.reply.objects)
                    body += f'<div class="meta">confidence: {conf} · {t.reply.timings.get("total", 0):.1f} s</div>'
                msgs.append({"role": "assistant", "content": body})
        return msgs

    def user_message_html(self, question: str, prompts: Sequence[UIPrompt], first_id: int) -> str:
        """The visitor's question with its prompts [i] as chips, and what each prompt is."""
        regions = first_id + len(prompts)
        extra = ""
        if prompts:
            items = ", ".join(describe_prompt(first_id + i, p, not self.is_video) for i, p in enumerate(prompts))
            extra = f'<div class="prompt-note">{chip_text(items, None, regions)}</div>'
        return chip_text(question, None, max(regions, len(self.sent))) + extra

    def prompt_list_html(self) -> str:
        if not self.pending:
            hint = ("Click the image to drop a point, drag to draw a box, or pick <b>Scribble</b> and paint. "
                    "Prompts are numbered [0], [1], … — refer to them in your question.")
            if self.sent:
                hint += f" Earlier prompts [0]–[{len(self.sent) - 1}] stay available."
            return f'<div class="prompt-list empty">{hint}</div>'
        items = [chip_text(describe_prompt(len(self.sent) + i, p, not self.is_video), None,
                           len(self.sent) + len(self.pending)) for i, p in enumerate(self.pending)]
        return f'<div class="prompt-list">{"".join(f"<span class=pitem>{x}</span>" for x in items)}</div>'

    def media_info(self) -> str:
        media = self.media
        if media is None:
            return ""
        h, w = media.size
        if media.is_image:
            return f"Image · {w}×{h}"
        dur = (media.source_num_frames / media.fps) if media.fps else None
        seg = self.segment_frames()
        parts = [f"Video · {w}×{h}", f"{media.source_num_frames} frames" + (f" @ {media.fps:.3g} fps" if media.fps else ""),
                 f"{dur:.1f} s" if dur else ""]
        start, end = self.segment
        if start is not None or end is not None:
            parts.append(f"segment {start or 0:g}–{end if end is not None else (dur or 0):.3g} s ({seg} frames)")
        dense = self.dense_cap()
        cap = (f"The model sees **{media.num_frames}** frames sampled from the segment (at most "
               f"{limits.MAX_SAMPLE_FRAMES}); dense tracking covers at most **{dense}** frames of this size.")
        if seg > dense:
            cap += f" This segment has {seg} frames: choose a shorter one (start/end) for dense tracking."
        return " · ".join(p for p in parts if p) + "  \n" + cap


# ------------------------------------------------------------------------------------------------ page assets
CSS = """
#header { align-items: center; }
#header .title h1 { margin: 0; font-size: 1.7em; letter-spacing: -0.02em; }
#header .title p { margin: 2px 0 0; color: var(--body-text-color-subdued); }
.model-badge { display: inline-flex; align-items: center; gap: .5em; float: right; padding: .35em .9em;
  border-radius: 999px; font-size: .9em; font-weight: 600; border: 1px solid var(--border-color-primary);
  background: var(--background-fill-secondary); }
.model-badge .dot { width: .6em; height: .6em; border-radius: 50%; background: #16a34a; }
.model-badge.bundled .dot { background: #f59e0b; }
.obj-chip { display: inline-block; padding: 0 .5em; margin: 0 1px; border-radius: 999px; font-weight: 650;
  font-size: .9em; line-height: 1.55; cursor: pointer; border: 1px solid rgba(0,0,0,.25); white-space: nowrap;
  transition: transform .12s ease, box-shadow .12s ease; }
.obj-chip:hover { transform: translateY(-1px); box-shadow: 0 2px 6px rgba(0,0,0,.25); }
.obj-chip.active { outline: 3px solid #111827; outline-offset: 1px; box-shadow: 0 0 0 6px rgba(17,24,39,.18);
  animation: chip-pulse 1s ease-out 1; }
.dark .obj-chip.active { outline-color: #f9fafb; }
@keyframes chip-pulse { 0% { transform: scale(1.25); } 100% { transform: scale(1); } }
.obj-chip.none { background: #9ca3af; color: #fff; cursor: default; }
.prompt-chip { display: inline-block; padding: 0 .35em; border-radius: 6px; font-weight: 650; line-height: 1.45;
  border: 1px solid rgba(0,0,0,.35); }
.prompt-note, .meta { margin-top: .3em; font-size: .8em; opacity: .75; }
.note { font-style: italic; }
.reply-error { color: #b91c1c; }
.prompt-list { display: flex; flex-wrap: wrap; gap: .35em .8em; font-size: .88em; min-height: 1.6em; }
.prompt-list.empty { color: var(--body-text-color-subdued); display: block; }
.obj-list { display: flex; flex-direction: column; gap: 2px; font-size: .9em; }
.obj-list.empty { color: var(--body-text-color-subdued); padding: .4em 0; }
.obj-row { display: flex; align-items: center; gap: .6em; padding: 3px 6px; border-radius: 8px; flex-wrap: wrap; }
.obj-row.active-row { background: rgba(99,102,241,.13); }
.obj-row.hidden-obj { opacity: .4; }
.obj-origin { color: var(--body-text-color-subdued); min-width: 7.5em; margin-left: .35em; }
.conf { display: inline-block; width: 56px; height: 7px; border-radius: 4px; background: #e5e7eb; overflow: hidden; }
.conf > span { display: block; height: 100%; }
.conf-num { font-variant-numeric: tabular-nums; min-width: 2.6em; }
.timeline { display: inline-flex; gap: 1px; }
.tl-cell { display: inline-block; width: 7px; height: 14px; border-radius: 2px; background: #e5e7eb; cursor: pointer; }
.tl-cell.current { outline: 2px solid #111827; outline-offset: 1px; }
#sketch img { cursor: crosshair; touch-action: none; user-select: none; -webkit-user-drag: none; }
#result_img img, #frames_strip img { cursor: pointer; }
#tool { padding: 0 !important; }
#tool .wrap { gap: 4px; }
#tool label { padding: 4px 10px; white-space: nowrap; }
#prompt_row { align-items: center; }
#refine_box { padding: 8px; border: 1px dashed var(--color-accent); border-radius: var(--radius-lg); }
#examples .caption-label { font-size: .78em; max-width: 100%; left: 0; right: 0; white-space: normal; text-align: center; }
.status { font-size: .9em; padding: .2em .1em; }
.status.warn { color: #b45309; font-weight: 600; }
.status.notice { color: #b45309; }
.hint { font-size: .85em; opacity: .8; }
.strip-hint { padding: 4px 8px 0; }
#examples_title h3 { margin: .6em 0 0; }
#media_info p { margin: 0; font-size: .88em; }
"""

JS = r"""
() => {
  if (window.__unipixel) return;
  window.__unipixel = true;
  const sink = (obj) => {
    const ta = document.querySelector('#ui_sink textarea, #ui_sink input');
    if (!ta) return;
    ta.value = JSON.stringify(obj) + '#' + Date.now() + '-' + Math.random().toString(36).slice(2, 7);
    ta.dispatchEvent(new Event('input', {bubbles: true}));
  };
  const box = (img) => {  // where the image content is drawn, in client pixels (object-fit aware)
    const r = img.getBoundingClientRect();
    const nw = img.naturalWidth || r.width, nh = img.naturalHeight || r.height;
    const fit = getComputedStyle(img).objectFit;
    let sx = r.width / nw, sy = r.height / nh;
    if (fit === 'contain' || fit === 'scale-down') { let s = Math.min(sx, sy); if (fit === 'scale-down') s = Math.min(1, s); sx = sy = s; }
    else if (fit === 'none') { sx = sy = 1; }
    else if (fit === 'cover') { const s = Math.max(sx, sy); sx = sy = s; }
    const w = nw * sx, h = nh * sy;
    return {left: r.left + (r.width - w) / 2, top: r.top + (r.height - h) / 2, width: w, height: h};
  };
  const norm = (b, e) => [(e.clientX - b.left) / b.width, (e.clientY - b.top) / b.height];
  const toolName = () => {
    const c = document.querySelector('#tool input:checked');
    const l = c && c.closest('label');
    return ((l && l.textContent) || (c && c.value) || '').trim();
  };
  const NS = 'http://www.w3.org/2000/svg';
  let g = null;
  document.addEventListener('pointerdown', (e) => {
    const img = e.target.closest && e.target.closest('#sketch img');
    if (!img || e.button !== 0) return;
    e.preventDefault();
    const b = box(img);
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('class', 'sketch-preview');
    Object.assign(svg.style, {position: 'fixed', left: b.left + 'px', top: b.top + 'px', width: b.width + 'px',
                              height: b.height + 'px', pointerEvents: 'none', zIndex: 1000, overflow: 'visible'});
    document.body.appendChild(svg);
    g = {b, svg, pts: [norm(b, e)], x0: e.clientX, y0: e.clientY, drag: 0, scribble: toolName().startsWith('Scribble')};
  });
  document.addEventListener('pointermove', (e) => {
    if (!g) return;
    g.pts.push(norm(g.b, e));
    g.drag = Math.max(g.drag, Math.hypot(e.clientX - g.x0, e.clientY - g.y0));
    const W = g.b.width, H = g.b.height, p0 = g.pts[0], p1 = g.pts[g.pts.length - 1];
    if (g.scribble) {
      const pts = g.pts.map(p => (p[0] * W).toFixed(1) + ',' + (p[1] * H).toFixed(1)).join(' ');
      g.svg.innerHTML = `<polyline points="${pts}" fill="none" stroke="#6366f1" stroke-opacity=".75" stroke-width="${Math.max(4, Math.min(W, H) / 50)}" stroke-linecap="round" stroke-linejoin="round"/>`;
    } else if (g.drag >= 6) {
      const x = Math.min(p0[0], p1[0]) * W, y = Math.min(p0[1], p1[1]) * H;
      const w = Math.abs(p1[0] - p0[0]) * W, h = Math.abs(p1[1] - p0[1]) * H;
      g.svg.innerHTML = `<rect x="${x}" y="${y}" width="${w}" height="${h}" fill="rgba(99,102,241,.12)" stroke="#6366f1" stroke-width="2" stroke-dasharray="6 4"/>`;
    }
  });
  document.addEventListener('pointerup', (e) => {
    if (!g) return;
    const done = g; g = null;
    done.pts.push(norm(done.b, e));
    let pts = done.scribble ? done.pts : [done.pts[0], done.pts[done.pts.length - 1]];
    if (pts.length > 300) { const k = Math.ceil(pts.length / 300); pts = pts.filter((_, i) => i % k === 0 || i === pts.length - 1); }
    sink({type: 'sketch', pts: pts.map(p => [+p[0].toFixed(5), +p[1].toFixed(5)]), drag: Math.round(done.drag)});
    setTimeout(() => done.svg.remove(), 1200);
  });
  document.addEventListener('pointercancel', () => { if (g) { g.svg.remove(); g = null; } });
  document.addEventListener('dragstart', (e) => {
    if (e.target.closest && e.target.closest('#sketch, #result_img')) e.preventDefault();
  });
  document.addEventListener('click', (e) => {
    const t = e.target;
    if (!t.closest) return;
    const chip = t.closest('.obj-chip');
    if (chip) { const m = chip.className.match(/obj_\d+/); if (m) sink({type: 'tag', tag: m[0]}); return; }
    const cell = t.closest('.tl-cell');
    if (cell) { sink({type: 'frame', frame: +cell.dataset.frame, tag: cell.dataset.tag}); return; }
    const strip = t.closest('#frames_strip img');
    if (strip) { const [x, y] = norm(box(strip), e); sink({type: 'strip', x, y}); return; }
    const rimg = t.closest('#result_img img');
    if (rimg) {
      const [x, y] = norm(box(rimg), e);
      if (x >= 0 && x <= 1 && y >= 0 && y <= 1) sink({type: 'mask', x, y});
    }
  });
}
"""
