"""Procedural shape scenes (images and short videos) turned into UniPixel training conversations.

Scenes hold 1-5 flat-coloured shapes (circle, square, triangle, star) of six colours and three sizes on
plain or lightly textured achromatic backgrounds, so every object's visible mask is exact: the pixels of
its colour that survive the objects painted after it. Videos move objects left/right/up/down (or keep
them still); objects may enter or leave the frame.

Every task renders text with the prompt formats the released UniPixel was trained on (spec §6.2-6.5):
referring / reasoning segmentation (`<|seg|>`), region understanding from mask prompts (`<|mem|>` prefix,
§6.3 training format), region captioning and ID-based segmentation from point/box prompts (`[id] <|ref|>`,
§6.4), PixelQA (§6.5) and short multi-turn chats. Everything is deterministic from (seed, index).
Two deliberate extensions of the released formats: a text query naming several objects gets one `<|seg|>`
per object in mention order (the released model was trained on a union mask instead); and a segmentation
answer names its target right before the `<|seg|>` it grounds, by the asked words completed with the
target's own colour and shape, colour last and with no space between (`Please segment the small
triangle.` -> `The small triangle in red<|seg|>.`; the reference's question form is `{answer} <|seg|>.`),
so the state `seg_head` reads is the colour word itself and the words before it single the object out:
SAM 2 finds objects by colour far better than by shape, and the small LLM barely learned to carry a
word even one position further. Replies show a space before each object tag anyway.

Public API: `generate_dataset`, `generate_heldout`, `sample_at`, `generate_ood_sample`,
`generate_ood_dataset`, `make_scene`, `TASKS`, `pixelqa_two_step`, `mem_slots`, `mem_prefix`,
`point_prompt`, `box_prompt`, `validate_sample`, `parse_caption`, `caption_correct`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

# ----------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 80, 220),
    "yellow": (240, 210, 20), "purple": (140, 50, 170), "orange": (250, 130, 10),
}
COLOURS_L = list(COLOURS)
SHAPES = ("circle", "square", "triangle", "star")
SIZES = ("small", "medium", "large")
DIRECTIONS = ("left", "right", "up", "down")
MOTIONS = DIRECTIONS + ("still",)
# equal-area radius as a fraction of the canvas' short side (area = pi * radius^2 for every shape)
SIZE_RANGES = {"small": (0.05, 0.075), "medium": (0.095, 0.125), "large": (0.15, 0.19)}
OOD_SIZE_RANGES = {"small": (0.045, 0.06), "medium": (0.085, 0.1), "large": (0.2, 0.24)}
# "crop" scenes (vision stage): small canvases shown to the tower unresized, whose objects span the same
# 10-85 px radii the tower meets in processed "train" scenes (the processor upscales those canvases)
CROP_SIZE_RANGES = {"small": (0.12, 0.2), "medium": (0.2, 0.3), "large": (0.3, 0.45)}
_SIZE_RANGES = {"train": SIZE_RANGES, "crop": CROP_SIZE_RANGES, "ood": OOD_SIZE_RANGES}
BACKGROUNDS = ("light", "dark", "grey", "noise", "gradient", "stripes")
OOD_BACKGROUNDS = ("colour_noise", "checker", "radial")
TRAIN_SEED, HELDOUT_SEED = 0, 2_000_003
MIN_VISIBLE = 0.6  # an object keeps at least this fraction of its in-frame area on every frame

_UNIT = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
MOTION_PHRASE = {"left": "moves to the left", "right": "moves to the right", "up": "moves up",
                 "down": "moves down", "still": "stays still"}
MOVING = {"left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
          "still": "that stays still"}
MOTION_OPTION = {"left": "To the left", "right": "To the right", "up": "Upward", "down": "Downward",
                 "still": "It does not move"}

# ----------------------------------------------------------------------------------------------------
# Prompt templates (spec §6.2-6.5, verbatim training lists)
# ----------------------------------------------------------------------------------------------------

QUERY_TEMPLATES = {m: [
    f"Can you segment the {{}} in this {m}?", f"Please segment the {{}} in this {m}.",
    f"Can you find the {{}} in the {m}?", f"Segment the {{}} in the {m}.", f"Track the {{}} in this {m}.",
    f"Where is the {{}} in this {m}? Please respond with the segmentation mask.",
    "What is the {}? Please output the segmentation mask.",
] for m in ("image", "video")}
SENTENCE_TEMPLATES = [
    "{} Please provide the segmentation mask.", "{} Please respond with the segmentation mask.",
    "{} Output the segmentation mask.", "{} Give me the segmentation results directly.",
    "{} Segment the target directly."]
EXPLANATORY_TEMPLATES = [
    "{} Please provide the segmentation mask and explain why.",
    "{} Respond with the segmentation mask and explain the reason.",
    "{} Output the segmentation mask and give some explanations.",
    "{} Provide the segmentation mask while answering the question.",
    "{} Segment the relevant target and answer the question."]
QUESTION_TEMPLATES = [
    "{} Please answer the question and provide the segmentation mask.",
    "{} Please associate your answer with the segmentation mask.",
    "{} Answer the question and provide the corresponding segmentation mask.",
    "{} Give me the answer and segment the target.",
    "{} Provide a short answer while segmenting the relevant object."]
DESCRIPTION_TEMPLATES = [
    "Please segment the object according to the description: {}",
    "Segment the target according to the description: {}",
    "Analyze the following sentences and provide the corresponding segmentation mask: {}",
    "Given the description: {} Where is the described object in this video?",
    "Find the object according to the description: {}"]
# several text-referred objects: one <|seg|> per object in mention order (our extension, see module doc)
MULTI_QUERY_TEMPLATES = ["Please segment the {}.", "Please segment the {} in this {m}.",
                         "Can you segment the {} in this {m}?", "Segment the {} in the {m}."]
DETAIL_TEMPLATES = [
    "Can you provide me with a detailed description of the region in the picture marked by {}?",
    "I'm curious about the region represented by {} in the picture. Could you describe it in detail?",
    "What can you tell me about the region indicated by {} in the image?",
    "I'd like to know more about the area in the photo labeled {}. Can you give me a detailed description?",
    "Could you describe the region shown as {} in the picture in great detail?",
    "What details can you give me about the region outlined by {} in the photo?",
    "Please provide me with a comprehensive description of the region marked with {} in the image.",
    "Can you give me a detailed account of the region labeled as {} in the picture?",
    "I'm interested in learning more about the region represented by {} in the photo. Can you describe it in detail?",
    "What is the region outlined by {} in the picture like? Could you give me a detailed description?",
    "Can you provide me with a detailed description of the region in the picture marked by {}, please?",
    "I'm curious about the region represented by {} in the picture. Could you describe it in detail, please?",
    "What can you tell me about the region indicated by {} in the image, exactly?",
    "I'd like to know more about the area in the photo labeled {}, please. Can you give me a detailed description?",
    "Could you describe the region shown as {} in the picture in great detail, please?",
    "What details can you give me about the region outlined by {} in the photo, please?",
    "Please provide me with a comprehensive description of the region marked with {} in the image, please.",
    "Can you give me a detailed account of the region labeled as {} in the picture, please?",
    "I'm interested in learning more about the region represented by {} in the photo. Can you describe it in detail, please?",
    "What is the region outlined by {} in the picture like, please? Could you give me a detailed description?",
    "Please describe the region {} in the image in detail.",
    "Can you offer a thorough analysis of the region {} in the image?",
    "Could you elaborate on the region highlighted by {} in the picture provided?",
    "Please share more information about the zone emphasized with {} in the photo.",
    "What insights can you give about the area denoted by {} in the image presented?",
    "Can you share a comprehensive rundown of the region denoted by {} in the presented image?",
    "I'd like to know more about the region highlighted by {} in the picture provided.",
    "Work through the important details of the area {} in the image.",
    "Illustrate the area represtented by {} through a descriptive explanation.",
    "Examine the region {} closely and share its details."]
VIDEO_DETAIL_TEMPLATES = ["Please give a detailed description of the highlighted object {} in the video.",
                          "Describe {} in the video in detail.",
                          "What does {} look like and how does it move in the video?"]
SHORT_CAPTION_TEMPLATES = {  # `{}` = "[id]" (mask prompts) or "[id] <|ref|>" (point/box prompts)
    "image": ["What is {}?", "Give me a short description of {}.", "Can you give me a short description of {}?",
              "Can you provide me with a short description of the region in the picture marked by {}?",
              "Could you describe the region shown as {} in the picture concisely?",
              "Please describe the region {} in the image concisely.",
              "What can you tell me about the region indicated by {} in the image in a few words?",
              "Please provide me with a brief description of the region marked with {} in the image."],
    "video": ["What is {}?", "Give me a short description of {}.", "Can you give me a short description of {}?",
              "What is {} in the video?", "Describe {} in the video briefly.",
              "Please describe the object {} in a few words."],
}
ID_WRAPPERS = [
    "{} Please localize the relevant objects with IDs.",
    "{} Segment all the relevant target(s) with ID(s) in the video.",
    "{} Can you segment the target object(s) with ID(s) in the video?",
    "Please segment the mentioned objects with IDs in the question: {}",
    "Find and track the relevant objects with IDs in the query: {}",
    "Given the query '{}', please provide segmentation masks for the relevant objects with IDs."]
PIXELQA_SUFFIXES = ["Please answer the question and localize the relevant objects with IDs.",
                    "Answer the question and segment the mentioned objects with IDs.",
                    "Please segment the relevant objects with IDs while answering the question."]
IMAGE_MEM_HEADER = "Here is an image with the following highlighted regions:\n"
VIDEO_MEM_HEADER = ("Here is a video with {n} frames denoted as <1> to <{n}>. "
                    "The highlighted regions are as follows:\n")

# ----------------------------------------------------------------------------------------------------
# Data structures
# ----------------------------------------------------------------------------------------------------


@dataclass
class ObjectInfo:
    """Attributes of one object; `centres` are the integer (x, y) shape centres per frame."""
    colour: str
    shape: str
    size: str
    motion: str = "still"
    speed: float = 0.0        # pixels per frame along the motion direction
    scale: float = 0.0        # equal-area radius in pixels
    area: int = 0             # unoccluded shape area in pixels
    rgb: tuple[int, int, int] = (0, 0, 0)
    centres: np.ndarray = field(default_factory=lambda: np.zeros((1, 2), int))

    @property
    def description(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass
class Scene:
    frames: np.ndarray        # (T, H, W, 3) uint8
    masks: np.ndarray         # (N, T, H, W) bool, visible pixels per object
    objects: list[ObjectInfo]
    is_image: bool
    background: str
    style: str = "train"

    @property
    def medium(self) -> str:
        return "image" if self.is_image else "video"


@dataclass
class RegionPrompt:
    """A visual prompt for object `obj` written as `[obj_id]` in the text.

    kind "mask": `mask` (T, H, W) bool is the raw per-frame mask prompt (empty on frames without one);
    kind "point": `coords` = (x, y); kind "box": `coords` = (x0, y0, x1, y1) inclusive. Pixel coordinates
    are in original frame space; point/box prompts live on the single frame `frames[0]`.
    """
    obj: int
    obj_id: int
    kind: str
    frames: tuple[int, ...]
    coords: tuple[int, ...] | None = None
    mask: np.ndarray | None = None


@dataclass
class Turn:
    """One exchange; `seg[k]` = object indices (union) for the k-th `<|seg|>` in `assistant`."""
    user: str
    assistant: str
    seg: list[tuple[int, ...]] = field(default_factory=list)


@dataclass
class Sample:
    task: str
    frames: np.ndarray        # (T, H, W, 3) uint8
    masks: np.ndarray         # (N, T, H, W) bool
    objects: list[ObjectInfo]
    is_image: bool
    turns: list[Turn]
    mem_prompts: list[RegionPrompt] = field(default_factory=list)  # in `<|mem|>` line order
    ref_prompts: list[RegionPrompt] = field(default_factory=list)  # in `<|ref|>` text order
    background: str = ""
    style: str = "train"

    @property
    def seg_targets(self) -> list[tuple[int, ...]]:
        """Objects behind every `<|seg|>` of the conversation, in order."""
        return [t for turn in self.turns for t in turn.seg]

    def seg_codes(self) -> list[tuple[int, int]]:
        """Per `<|seg|>`, the (colour, shape) its answer names right before it (`The star in blue<|seg|>`), as
        indices into COLOURS_L and SHAPES, the length of the list for a word not named ("any"); a target named
        by its ID only (`[0] <|seg|>`) gets its object's own colour and shape."""
        codes, targets = [], iter(self.seg_targets)
        for turn in self.turns:
            for piece in turn.assistant.split("<|seg|>")[:-1]:
                name = re.split(r"\[|^\W*(?:and )?the ", piece.strip(), flags=re.I)[-1]  # `, the star at the top`
                colour, shape, _ = parse_caption(name)
                obj = self.objects[next(targets)[0]]
                if colour is None and shape is None:
                    colour, shape = obj.colour, obj.shape
                codes.append((COLOURS_L.index(colour) if colour else len(COLOURS_L),
                              SHAPES.index(shape) if shape else len(SHAPES)))
        return codes

    def seg_masks(self) -> list[np.ndarray]:
        """(T, H, W) bool target mask per `<|seg|>` (union over the objects it covers), in order."""
        return [self.masks[list(t)].any(0) for t in self.seg_targets]

    def messages(self) -> list[dict[str, str]]:
        return [m for t in self.turns for m in ({"role": "user", "content": t.user},
                                                 {"role": "assistant", "content": t.assistant})]


# ----------------------------------------------------------------------------------------------------
# Rasterising
# ----------------------------------------------------------------------------------------------------


def _polygon(shape: str, s: float, rot: float) -> np.ndarray:
    """Vertices (k, 2) around the origin for an equal-area radius `s` (y points down)."""
    if shape == "square":
        radii, angles = np.full(4, 0.886 * s * np.sqrt(2)), 45.0 + 90.0 * np.arange(4)
    elif shape == "triangle":
        radii, angles = np.full(3, 1.555 * s), -90.0 + 120.0 * np.arange(3)
    elif shape == "star":
        radii, angles = 1.541 * s * np.tile([1.0, 0.45], 5), -90.0 + 36.0 * np.arange(10)
    else:
        raise ValueError(shape)
    a = np.deg2rad(angles + rot)
    return np.stack([radii * np.cos(a), radii * np.sin(a)], 1)


def shape_template(shape: str, s: float, rot: float = 0.0) -> np.ndarray:
    """Boolean (2r+1, 2r+1) mask of the shape centred on pixel (r, r); area ~ pi * s^2."""
    r = int(np.ceil(1.6 * s)) + 1
    if shape in ("circle", "square") and rot == 0.0:
        yy, xx = np.ogrid[-r:r + 1, -r:r + 1]
        if shape == "circle":
            return xx * xx + yy * yy <= s * s
        a = 0.886 * s
        return (np.abs(xx) <= a) & (np.abs(yy) <= a)
    img = Image.new("1", (2 * r + 1, 2 * r + 1), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in _polygon(shape, s, rot) + r], fill=1)
    return np.asarray(img, dtype=bool)


def _place(template: np.ndarray, cx: int, cy: int, h: int, w: int):
    """Clip a template centred at (cx, cy) to an (h, w) frame: (frame slices, template slices) or None."""
    r = template.shape[0] // 2
    x0, y0 = cx - r, cy - r
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + 2 * r + 1, w), min(y0 + 2 * r + 1, h)
    if xb <= xa or yb <= ya:
        return None
    return (slice(ya, yb), slice(xa, xb)), (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))


def _background(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """(H, W, 3) uint8 background. Training kinds are achromatic (never equal to an object colour)."""
    if kind in ("light", "dark", "grey"):
        lo, hi = {"light": (215, 246), "dark": (20, 56), "grey": (110, 151)}[kind]
        g = np.full((h, w), rng.integers(lo, hi), np.int16)
    elif kind == "noise":
        g = rng.integers(90, 200) + rng.integers(-12, 13, (h, w), dtype=np.int16)
    elif kind in ("gradient", "radial"):
        v0, v1 = rng.integers(50, 120), rng.integers(150, 230)
        yy, xx = np.ogrid[:h, :w]
        if kind == "gradient":
            a = rng.uniform(0, 2 * np.pi)
            t = xx * np.cos(a) + yy * np.sin(a)
        else:
            t = np.hypot(xx - rng.uniform(0, w), yy - rng.uniform(0, h))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        g = (v0 + (v1 - v0) * t).astype(np.int16)
    elif kind in ("stripes", "checker"):
        v0 = rng.integers(70, 200)
        v1 = v0 + rng.choice([-1, 1]) * rng.integers(20, 50)
        p = int(rng.integers(8, 33))
        yy, xx = np.ogrid[:h, :w]
        if kind == "checker":
            on = ((xx // p) + (yy // p)) % 2 == 1
        else:
            on = np.broadcast_to(([xx, yy, xx + yy][rng.integers(3)] // p) % 2 == 1, (h, w))
        g = np.where(on, v1, v0).astype(np.int16)
    elif kind == "colour_noise":
        base = rng.integers(90, 170) + rng.integers(-30, 31, 3)
        return np.clip(base + rng.integers(-25, 26, (h, w, 3)), 0, 255).astype(np.uint8)
    else:
        raise ValueError(kind)
    return np.repeat(np.clip(g, 0, 255).astype(np.uint8)[..., None], 3, 2)


def _canvas(rng: np.random.Generator, style: str) -> tuple[int, int]:
    if style == "train":
        h, w = rng.integers(160, 449, 2)
        return int(h), int(w)
    if style == "crop":  # multiples of the 28 px merged token, so no resize is needed
        h, w = rng.integers(3, 8, 2) * 28
        return int(h), int(w)
    short, long = int(rng.integers(140, 221)), int(rng.integers(420, 641))  # OOD: extreme aspect ratios
    return (short, long) if rng.random() < 0.5 else (long, short)


def _new_object(rng: np.random.Generator, style: str, h: int, w: int, t: int):
    """Propose one object: (info, shape template, outline-ring template or None)."""
    colour, shape, size = COLOURS_L[rng.integers(6)], SHAPES[rng.integers(4)], SIZES[rng.integers(3)]
    lo, hi = _SIZE_RANGES[style][size]
    s = rng.uniform(lo, hi) * min(h, w)
    rot = float(rng.uniform(-35, 35)) if style == "ood" and shape != "circle" else 0.0
    tmpl = shape_template(shape, s, rot)
    r = tmpl.shape[0] // 2
    ys, xs = np.nonzero(tmpl)
    x_lo, x_hi, y_lo, y_hi = r - xs.min(), w - 1 - (xs.max() - r), r - ys.min(), h - 1 - (ys.max() - r)
    if x_lo > x_hi or y_lo > y_hi:
        return None
    c = np.array([rng.integers(x_lo, x_hi + 1), rng.integers(y_lo, y_hi + 1)], float)
    motion, speed = "still", 0.0
    if t > 1 and rng.random() > 0.2:
        motion = DIRECTIONS[rng.integers(4)]
        speed = rng.uniform(0.25, 0.6) * (w if motion in ("left", "right") else h) / (t - 1)
    anchor = rng.integers(t // 4, (3 * t) // 4 + 1)  # the object is fully inside the frame here
    centres = np.rint(c + np.outer(np.arange(t) - anchor, _UNIT[motion]) * speed).astype(int)
    ring = None
    rgb = COLOURS[colour]
    if style == "ood":
        rgb = tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-20, 21, 3), 0, 255))
        if rng.random() < 0.7:
            ring = tmpl & ~ndimage.binary_erosion(tmpl, iterations=int(rng.integers(2, 5)))
    info = ObjectInfo(colour, shape, size, motion, float(speed), float(s), int(tmpl.sum()), rgb, centres)
    return info, tmpl, ring


def _too_close(a: ObjectInfo, b: ObjectInfo) -> bool:
    """Bounding circles (1.6 x equal-area radius, plus a 4 px gap) overlap on some frame."""
    d = np.hypot(*(a.centres - b.centres).T)
    return bool((d < 1.6 * (a.scale + b.scale) + 4).any())


def make_scene(rng: np.random.Generator, video: bool = False, style: str = "train",
               num_objects: int | None = None, num_frames: int | None = None) -> Scene:
    """Random scene; objects are added in painter's order and rejected if they occlude too much.

    ``style``: "train" (the training and held-out scenes), "ood" (the generator the model never sees) or
    "crop" (small canvases for the vision stage).
    """
    h, w = _canvas(rng, style)
    t = 1 if not video else (num_frames or int(rng.integers(4, 17)))
    kinds = OOD_BACKGROUNDS if style == "ood" else BACKGROUNDS
    bg = kinds[rng.integers(len(kinds))]
    n = num_objects or int(rng.integers(1, 6))
    objects: list[ObjectInfo] = []
    placed = []  # per object: per-frame placements (None when out of frame)
    ink = np.zeros((t, h, w), np.uint8)  # 0 background, 2k+1 fill of object k, 2k+2 its outline
    vis_area, full_area = np.zeros((0, t), np.int64), np.zeros((0, t), np.int64)
    while len(objects) < n:
        for _ in range(30):
            prop = _new_object(rng, style, h, w, t)
            if prop is None:
                continue
            info, tmpl, ring = prop
            if any(o.colour == info.colour and _too_close(o, info) for o in objects):
                continue  # same-coloured objects never touch, so their boundaries stay visible
            k = len(objects)
            where = [_place(tmpl, cx, cy, h, w) for cx, cy in info.centres]
            lost, area = np.zeros((k, t), np.int64), np.zeros((1, t), np.int64)
            for f, pl in enumerate(where):
                if pl is not None:
                    crop = tmpl[pl[1]]
                    area[0, f] = crop.sum()
                    covered = (ink[(f, *pl[0])][crop] + 1) // 2  # 0 = background, j+1 = object j
                    lost[:, f] = np.bincount(covered, minlength=k + 1)[1:]
            if (vis_area - lost >= MIN_VISIBLE * full_area).all():
                for f, pl in enumerate(where):
                    if pl is not None:
                        ink[(f, *pl[0])][tmpl[pl[1]]] = 2 * k + 1
                        if ring is not None:
                            ink[(f, *pl[0])][ring[pl[1]]] = 2 * k + 2
                vis_area, full_area = np.concatenate([vis_area - lost, area]), np.concatenate([full_area, area])
                objects.append(info)
                placed.append(where)
                break
        else:
            if objects:
                break
    frames = np.repeat(_background(rng, bg, h, w)[None], t, 0)
    outline_rgb = (15, 15, 15) if rng.random() < 0.5 else (245, 245, 245)
    lut = np.array([(0, 0, 0)] + [c for o in objects for c in (o.rgb, outline_rgb)], np.uint8)
    masks = np.zeros((len(objects), t, h, w), bool)
    for k, where in enumerate(placed):
        for f, pl in enumerate(where):
            if pl is not None:
                own = ink[(f, *pl[0])]
                mine = (own + 1) // 2 == k + 1
                masks[(k, f, *pl[0])] = mine
                frames[(f, *pl[0])][mine] = lut[own[mine]]
    return Scene(frames, masks, objects, t == 1, bg, style)


# ----------------------------------------------------------------------------------------------------
# Visual prompts
# ----------------------------------------------------------------------------------------------------


def mem_slots(mask: np.ndarray) -> list[int]:
    """Temporal slots (frame pairs, spec §5.4 steps 2-3) holding any pixel of a (T, H, W) mask."""
    on = np.asarray(mask).reshape(len(mask), -1).any(1)
    if len(on) % 2:
        on = np.append(on, on[-1])
    return np.flatnonzero(on.reshape(-1, 2).any(1)).tolist()


def mem_prefix(masks: Sequence[np.ndarray], ids: Sequence[int], is_image: bool) -> str:
    """`<|mem|>` prefix (spec §6.3, training format) for raw per-frame (T, H, W) mask prompts."""
    if is_image:
        return IMAGE_MEM_HEADER + "".join(f"[{i}]: <|mem|>\n" for i in ids)
    lines = [f"[{i}]: " + " ".join(f"<{2 * s + 1}>-<{2 * s + 2}> <|mem|>" for s in mem_slots(m)) + "\n"
             for m, i in zip(masks, ids)]
    return VIDEO_MEM_HEADER.format(n=len(masks[0])) + "".join(lines)


def point_prompt(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the first raster-order maximum of the L2 distance transform inside a 2-D mask."""
    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min(), xs.min()
    crop = np.pad(mask[y0:ys.max() + 1, x0:xs.max() + 1], 1)
    y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(crop)), crop.shape)
    return int(x0 + x - 1), int(y0 + y - 1)


def box_prompt(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight inclusive box (x0, y0, x1, y1) of a 2-D mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _ref_prompt(rng: np.random.Generator, scene: Scene, i: int, obj_id: int) -> RegionPrompt:
    """Point or box on a frame where the object shows at least half of its largest visible area."""
    areas = scene.masks[i].sum((1, 2))
    good = np.flatnonzero(areas >= 0.5 * areas.max())
    f = int(good[rng.integers(len(good))])
    if rng.random() < 0.5:
        return RegionPrompt(i, obj_id, "point", (f,), point_prompt(scene.masks[i, f]))
    return RegionPrompt(i, obj_id, "box", (f,), box_prompt(scene.masks[i, f]))


def _mem_prompt(rng: np.random.Generator, scene: Scene, i: int, obj_id: int,
                all_frames: bool = False) -> RegionPrompt:
    """Mask prompt on one frame, a few frames or every visible frame."""
    areas = scene.masks[i].sum((1, 2))
    vis = np.flatnonzero(areas)
    mode = "all" if all_frames or scene.is_image else ("one", "few", "all")[rng.integers(3)]
    if mode == "one":
        good = np.flatnonzero(areas >= 0.5 * areas.max())
        frames = [int(good[rng.integers(len(good))])]
    elif mode == "few":
        frames = sorted(rng.choice(vis, min(len(vis), int(rng.integers(2, 5))), replace=False).tolist())
    else:
        frames = vis.tolist()
    mask = np.zeros_like(scene.masks[i])
    mask[frames] = scene.masks[i, frames]
    return RegionPrompt(i, obj_id, "mask", tuple(frames), mask=mask)


# ----------------------------------------------------------------------------------------------------
# Language helpers
# ----------------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _ids(rng: np.random.Generator, k: int) -> list[int]:
    """[id] numbers: 0..k-1 mostly, sometimes random distinct integers 0-15 (VideoRefer style)."""
    return list(range(k)) if rng.random() < 0.7 else rng.choice(16, k, replace=False).tolist()


def _fill(template: str, ids: Sequence[int], suffix: str) -> tuple[str, list[int]]:
    """Replace `{k}` by `[ids[k]] suffix` at its first occurrence and `[ids[k]]` later.

    Returns the text and the order of first mentions (indices k)."""
    order: list[int] = []

    def sub(m: re.Match) -> str:
        k = int(m.group(1))
        if k in order:
            return f"[{ids[k]}]"
        order.append(k)
        return f"[{ids[k]}] {suffix}" if suffix else f"[{ids[k]}]"
    return re.sub(r"\{(\d)\}", sub, template), order


def _position(obj: ObjectInfo, h: int, w: int) -> str:
    x, y = obj.centres[0]
    col = "left" if x < w / 3 else "right" if x > 2 * w / 3 else "centre"
    row = "top" if y < h / 3 else "bottom" if y > 2 * h / 3 else "middle"
    if (row, col) == ("middle", "centre"):
        return "in the centre of the image"
    if row == "middle":
        return f"on the {col} side of the image"
    if col == "centre":
        return f"at the {row} of the image"
    return f"in the {row} {col} part of the image"


def _motion_sentence(scene: Scene, i: int) -> str:
    """e.g. `enters the frame, moves to the left and leaves the frame`."""
    on = scene.masks[i].any((1, 2))
    parts = (["enters the frame"] if not on[0] else []) + [MOTION_PHRASE[scene.objects[i].motion]]
    return _join(parts + (["leaves the frame"] if not on[-1] else []))


def caption(obj: ObjectInfo, with_motion: bool = False) -> str:
    """Short caption, e.g. `A small orange triangle.` / `A large blue circle moving left.`"""
    tail = f" {MOVING[obj.motion]}" if with_motion else ""
    return f"A {obj.description}{tail}."


def detailed_caption(scene: Scene, i: int, ref: str) -> str:
    obj = scene.objects[i]
    if scene.is_image:
        return f"{ref} is a {obj.description} {_position(obj, *scene.frames.shape[1:3])}."
    return f"{ref} is a {obj.description}. It {_motion_sentence(scene, i)}."


_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b", re.I)
_SHAPE_RE = re.compile(r"\b(" + "|".join(SHAPES) + r")s?\b", re.I)
_SIZE_RE = re.compile(r"\b(" + "|".join(SIZES) + r")\b", re.I)


def parse_caption(text: str) -> tuple[str | None, str | None, str | None]:
    """First colour, shape and size words of a caption (None when absent)."""
    out = [r.search(text) for r in (_COLOUR_RE, _SHAPE_RE, _SIZE_RE)]
    return tuple(m.group(1).lower() if m else None for m in out)  # type: ignore[return-value]


def caption_correct(text: str, obj: ObjectInfo, check_size: bool = False) -> bool:
    """Colour and shape must be named correctly (and the size word too when `check_size`)."""
    colour, shape, size = parse_caption(text)
    return colour == obj.colour and shape == obj.shape and (not check_size or size == obj.size)


# ----------------------------------------------------------------------------------------------------
# Referring expressions and reasoning facts
# ----------------------------------------------------------------------------------------------------

_BASES = (("shape",), ("colour", "shape"), ("size", "colour", "shape"), ("size", "shape"),
          ("colour",), ("size", "colour"))
_SIDES = {  # name: (axis, sign, suffix for 2 matches, prefix for more)
    "left": (0, -1, "on the left", "leftmost"), "right": (0, 1, "on the right", "rightmost"),
    "top": (1, -1, "at the top", "topmost"), "bottom": (1, 1, "at the bottom", "bottommost")}


def _extreme(objs: Sequence[ObjectInfo], idx: Sequence[int], i: int, axis: int, sign: int) -> bool:
    """Object i is clearly the most extreme of `idx` along an axis (at frame 0)."""
    return all(sign * (objs[i].centres[0, axis] - objs[j].centres[0, axis]) > 0.5 * (objs[i].scale + objs[j].scale)
               for j in idx if j != i)


def referring_expressions(scene: Scene, i: int) -> list[str]:
    """All expressions (already normalised: lower case, no article) that single out object i."""
    objs, o = scene.objects, scene.objects[i]
    out = []
    for keys in _BASES:
        words = [getattr(o, k) for k in keys]
        phrase = " ".join(words) + ("" if "shape" in keys else " shape")
        match = [j for j, p in enumerate(objs) if all(getattr(p, k) == v for k, v in zip(keys, words))]
        if match == [i]:
            out.append(phrase)
            continue
        if scene.is_image:
            for axis, sign, suffix, prefix in _SIDES.values():
                if _extreme(objs, match, i, axis, sign):
                    out.append(f"{phrase} {suffix}" if len(match) == 2 else f"{prefix} {phrase}")
        elif sum(objs[j].motion == o.motion for j in match) == 1:
            out.append(f"{phrase} {MOVING[o.motion]}")
    return out


@dataclass
class _Fact:
    target: int
    phrase: str        # noun phrase for query templates, e.g. "largest shape"
    question: str      # e.g. "Which shape is the largest?"
    reason: str        # explanation sentence


def _reasoning_facts(scene: Scene) -> list[_Fact]:
    objs, n, m = scene.objects, len(scene.objects), scene.medium
    facts: list[_Fact] = []
    if n >= 2:
        areas = np.array([o.area for o in objs])
        order = np.argsort(areas)
        if areas[order[-1]] >= 1.25 * areas[order[-2]]:
            facts.append(_Fact(int(order[-1]), "largest shape", "Which shape is the largest?",
                               f"It is the largest shape in the {m}."))
        if areas[order[1]] >= 1.25 * areas[order[0]]:
            facts.append(_Fact(int(order[0]), "smallest shape", "Which shape is the smallest?",
                               f"It is the smallest shape in the {m}."))
    for c in COLOURS:
        idx = [j for j, o in enumerate(objs) if o.colour == c]
        if len(idx) == 1 and n >= 2:
            facts.append(_Fact(idx[0], f"{c} shape", f"Which shape is {c}?", f"It is the only {c} shape."))
    for s in SHAPES:
        idx = [j for j, o in enumerate(objs) if o.shape == s]
        if len(idx) == 1 and n >= 2:
            facts.append(_Fact(idx[0], s, f"Which object is a {s}?", f"It is the only {s} in the {m}."))
    if scene.is_image and n >= 2:
        for name, (axis, sign, _, prefix) in _SIDES.items():
            for i in range(n):
                if _extreme(objs, range(n), i, axis, sign):
                    where = "on the left" if name == "left" else "on the right" if name == "right" else f"at the {name}"
                    facts.append(_Fact(i, f"{prefix} shape", f"Which shape is the {prefix} one?",
                                       f"It is {where} of all the other shapes."))
    if not scene.is_image:
        for mo in MOTIONS:
            idx = [j for j, o in enumerate(objs) if o.motion == mo]
            if len(idx) == 1 and n >= 2:
                q = "Which shape does not move?" if mo == "still" else f"Which shape {MOTION_PHRASE[mo]}?"
                why = "It is the only shape that does not move." if mo == "still" else \
                    f"It is the only shape that {MOTION_PHRASE[mo]}."
                facts.append(_Fact(idx[0], f"shape {MOVING[mo]}", q, why))
        speeds = np.array([o.speed for o in objs])
        order = np.argsort(speeds)
        if n >= 2 and speeds[order[-1]] >= 1.3 * speeds[order[-2]] and speeds[order[-2]] > 0:
            facts.append(_Fact(int(order[-1]), "fastest moving shape", "Which shape moves the fastest?",
                               "It moves faster than all the other shapes."))
        on = scene.masks.any((2, 3))
        for name, sel in (("leaves", on[:, 0] & ~on[:, -1]), ("enters", ~on[:, 0] & on[:, -1])):
            if sel.sum() == 1:
                i = int(np.flatnonzero(sel)[0])
                facts.append(_Fact(i, f"shape that {name} the frame", f"Which shape {name} the frame?",
                                   f"It is the only shape that {name} the frame."))
    return facts


# ----------------------------------------------------------------------------------------------------
# ID questions (point/box and mask prompts): `{k}` marks the k-th referred object
# ----------------------------------------------------------------------------------------------------


@dataclass
class _IdQuestion:
    objs: list[int]
    question: str      # with {k} placeholders
    short: str         # correct option text
    distractors: list[str]
    sentence: str      # full answer with {k} placeholders (every object mentioned)


def _id_question(rng: np.random.Generator, scene: Scene, sel: list[int]) -> _IdQuestion:
    """A question about the objects `sel` (1-3), with an unambiguous answer."""
    objs, k = scene.objects, len(sel)
    a = objs[sel[0]]
    if k == 1:
        kind = _pick(rng, ["colour", "shape", "size", "what"] + ([] if scene.is_image else ["motion", "motion"]))
        if kind == "colour":
            return _IdQuestion(sel, "What colour is {0}?", _cap(a.colour),
                               [_cap(c) for c in COLOURS if c != a.colour], f"{{0}} is {a.colour}.")
        if kind == "shape":
            return _IdQuestion(sel, "What shape is {0}?", _cap(a.shape),
                               [_cap(s) for s in SHAPES if s != a.shape], f"{{0}} is a {a.shape}.")
        if kind == "size":
            return _IdQuestion(sel, "How big is {0}?", _cap(a.size),
                               [_cap(s) for s in SIZES if s != a.size], f"{{0}} is {a.size}.")
        if kind == "motion":
            return _IdQuestion(sel, _pick(rng, ["Which way does {0} move?", "In which direction does {0} move?"]),
                               MOTION_OPTION[a.motion], [v for m, v in MOTION_OPTION.items() if m != a.motion],
                               f"{{0}} {MOTION_PHRASE[a.motion]}.")
        wrong = {f"A {_pick(rng, SIZES)} {_pick(rng, COLOURS_L)} {_pick(rng, SHAPES)}" for _ in range(6)}
        return _IdQuestion(sel, "What is {0}?", f"A {a.description}", sorted(wrong - {f"A {a.description}"}),
                           f"{{0}} is a {a.description}.")
    areas = [objs[j].area for j in sel]
    order = np.argsort(areas)[::-1]
    clear_size = areas[order[0]] >= 1.25 * areas[order[1]]
    if k == 3:
        if clear_size and rng.random() < 0.5:
            big = int(order[0])
            return _IdQuestion(sel, "Which of {0}, {1} and {2} is the largest?", f"[{{{big}}}]", [],
                               f"{{{big}}} is the largest of {_join([f'{{{j}}}' for j in range(3) if j != big])}.")
        cols = [objs[j].colour for j in sel]
        wrong = {_join([_pick(rng, COLOURS_L) for _ in range(3)]) for _ in range(4)} - {_join(cols)}
        return _IdQuestion(sel, "What colours are {0}, {1} and {2}?", _cap(_join(cols)),
                           [_cap(w) for w in sorted(wrong)],
                           f"{{0}} is {cols[0]}, {{1}} is {cols[1]} and {{2}} is {cols[2]}.")
    b = objs[sel[1]]
    dx = b.centres[0, 0] - a.centres[0, 0]
    kinds = ["colour", "shape"] + (["larger"] if clear_size else []) + (
        ["left"] if scene.is_image and abs(dx) > 0.5 * (a.scale + b.scale) else []) + (
        [] if scene.is_image else ["motion"])
    kind = _pick(rng, kinds)
    if kind == "colour":
        same = a.colour == b.colour
        return _IdQuestion(sel, "Do {0} and {1} have the same colour?", "Yes" if same else "No",
                           ["No" if same else "Yes"], f"Yes, {{0}} and {{1}} are both {a.colour}." if same
                           else f"No, {{0}} is {a.colour} and {{1}} is {b.colour}.")
    if kind == "shape":
        same = a.shape == b.shape
        return _IdQuestion(sel, "Are {0} and {1} the same shape?", "Yes" if same else "No",
                           ["No" if same else "Yes"], f"Yes, {{0}} and {{1}} are both {a.shape}s." if same
                           else f"No, {{0}} is a {a.shape} and {{1}} is a {b.shape}.")
    if kind == "motion":
        same = a.motion == b.motion
        both = "stay still" if a.motion == "still" else "move " + MOTION_PHRASE[a.motion][6:]
        return _IdQuestion(sel, "Do {0} and {1} move in the same direction?", "Yes" if same else "No",
                           ["No" if same else "Yes"], f"Yes, {{0}} and {{1}} both {both}." if same
                           else f"No, {{0}} {MOTION_PHRASE[a.motion]} and {{1}} {MOTION_PHRASE[b.motion]}.")
    if kind == "left":
        left = dx > 0
        return _IdQuestion(sel, "Is {0} to the left of {1}?", "Yes" if left else "No", ["No" if left else "Yes"],
                           "Yes, {0} is to the left of {1}." if left else "No, {0} is to the right of {1}.")
    first = int(order[0])
    return _IdQuestion(sel, "Which is larger, {0} or {1}?", f"[{{{first}}}]", [],
                       f"{{{first}}} is larger than {{{1 - first}}}.")


def _options(rng: np.random.Generator, q: _IdQuestion, ids: Sequence[int], full: bool) -> tuple[str, str]:
    """`\\nOptions:\\n(A) ...` block and the correct letter; single-option form when not `full`."""
    fix = lambda s: re.sub(r"\{(\d)\}", lambda m: str(ids[int(m.group(1))]), s)  # noqa: E731
    if not full:
        letter = "ABCD"[rng.integers(4)]
        return f"\nOptions:\n({letter}) {fix(q.short)}", letter
    if q.distractors:
        distract = list(rng.permutation(q.distractors))[:3]
    else:  # "which of [a]/[b]" questions: the options are the other objects
        distract = [f"[{{{j}}}]" for j in range(len(q.objs)) if f"[{{{j}}}]" != q.short]
    opts = [q.short] + distract
    opts = [opts[j] for j in rng.permutation(len(opts))]
    letter = "ABCD"[opts.index(q.short)]
    return "\nOptions:\n" + "\n".join(f"({'ABCD'[j]}) {fix(o)}" for j, o in enumerate(opts)), letter


# ----------------------------------------------------------------------------------------------------
# Tasks: each maps (rng, scene) -> Sample | None (None = the scene does not suit the task)
# ----------------------------------------------------------------------------------------------------


def _sample(task: str, scene: Scene, turns: list[Turn], mem: Sequence[RegionPrompt] = (),
            ref: Sequence[RegionPrompt] = ()) -> Sample:
    return Sample(task, scene.frames, scene.masks, scene.objects, scene.is_image, turns, list(mem), list(ref),
                  scene.background, scene.style)


def colour_last(name: str) -> str:
    """`large blue star on the left` -> `large star on the left in blue` (unchanged without a colour word)."""
    words = name.split()
    colours = [w for w in words if w in COLOURS]
    return " ".join([w for w in words if w not in COLOURS] + ["in", colours[0]]) if colours else name


def full_name(expr: str, obj: ObjectInfo) -> str:
    """The words of a referring expression completed with its object's colour and shape, the colour last:
    `small triangle` -> `small triangle in red`, `blue shape on the left` -> `star on the left in blue`.

    Answers name every target this way, so the words before each `<|seg|>` (its code, ``Sample.seg_codes``)
    single out the object by colour and shape even when the question picked it by size, place or motion."""
    words = [obj.shape if w == "shape" else w for w in expr.split()]
    if not any(w in COLOURS for w in words):
        words.insert(0, obj.colour)
    return colour_last(" ".join(words))


def named_seg(names: Sequence[str]) -> str:
    """Answer grounding each named object: `The star in blue<|seg|> and the circle in red<|seg|>.`"""
    return _cap(_join([f"the {name}<|seg|>" for name in names])) + "."


def _seg_turn(rng: np.random.Generator, scene: Scene, i: int, expr: str) -> Turn:
    answer = named_seg([full_name(expr, scene.objects[i])])
    if rng.random() < 0.15:
        templates = [t for t in DESCRIPTION_TEMPLATES if not scene.is_image or "video" not in t]
        return Turn(_pick(rng, templates).format(f"The {expr}."), answer, [(i,)])
    return Turn(_pick(rng, QUERY_TEMPLATES[scene.medium]).format(expr), answer, [(i,)])


def task_referring_seg(rng: np.random.Generator, scene: Scene) -> Sample | None:
    """`Please segment the blue star in this image.` -> `The star in blue<|seg|>.` (or several objects)."""
    exprs = {i: referring_expressions(scene, i) for i in range(len(scene.objects))}
    valid = [i for i, e in exprs.items() if e]
    if not valid:
        return None
    if len(valid) >= 2 and rng.random() < 0.25:
        k = int(rng.integers(2, min(3, len(valid)) + 1))
        targets = rng.choice(valid, k, replace=False).tolist()
        names = [_pick(rng, exprs[i]) for i in targets]
        text = _pick(rng, MULTI_QUERY_TEMPLATES).format(" and the ".join([", the ".join(names[:-1]), names[-1]]),
                                                        m=scene.medium)
        named = [full_name(name, scene.objects[i]) for name, i in zip(names, targets)]
        return _sample("referring_seg", scene, [Turn(text, named_seg(named), [(i,) for i in targets])])
    i = _pick(rng, valid)
    return _sample("referring_seg", scene, [_seg_turn(rng, scene, i, _pick(rng, exprs[i]))])


def task_reasoning_seg(rng: np.random.Generator, scene: Scene) -> Sample | None:
    """`Which shape moves left? Please provide the segmentation mask.` -> `The small star in red<|seg|>.`"""
    facts = _reasoning_facts(scene)
    if not facts:
        return None
    f = _pick(rng, facts)
    answer = named_seg([colour_last(scene.objects[f.target].description)])
    form = ("query", "sentence", "explanatory", "question")[rng.integers(4)]
    if form == "query":
        turn = Turn(_pick(rng, QUERY_TEMPLATES[scene.medium]).format(f.phrase), answer)
    elif form == "sentence":
        turn = Turn(_pick(rng, SENTENCE_TEMPLATES).format(f.question), answer)
    elif form == "explanatory":
        turn = Turn(_pick(rng, EXPLANATORY_TEMPLATES).format(f.question), f"{answer} {f.reason}")
    else:
        turn = Turn(_pick(rng, QUESTION_TEMPLATES).format(f.question), answer)
    turn.seg = [(f.target,)]
    return _sample("reasoning_seg", scene, [turn])


def _region_qa(rng: np.random.Generator, scene: Scene, sel: list[int], ids: list[int]) -> tuple[str, str]:
    """A question/answer about objects referred to as `[id]` (mask prompts)."""
    if len(sel) == 1:
        i, ref = sel[0], f"[{ids[0]}]"
        obj = scene.objects[i]
        r = rng.random()
        if r < 0.35:
            q = _pick(rng, SHORT_CAPTION_TEMPLATES[scene.medium]).format(ref)
            return q, f"{ref} is a {obj.description}." if rng.random() < 0.5 else caption(obj)
        if r < 0.6:
            tpl = DETAIL_TEMPLATES if scene.is_image else VIDEO_DETAIL_TEMPLATES
            return _pick(rng, tpl).format(ref), detailed_caption(scene, i, ref)
    q = _id_question(rng, scene, sel)
    return _fill(q.question, ids, "")[0], _fill(q.sentence, ids, "")[0]


def task_mask_region(rng: np.random.Generator, scene: Scene) -> Sample | None:
    """`<|mem|>` prefix + `What is [0]?` -> `[0] is a small orange triangle.` and other region QA."""
    n = len(scene.objects)
    k = 2 if n >= 2 and rng.random() < 0.35 else 1
    sel = rng.choice(n, k, replace=False).tolist()
    ids = _ids(rng, k)
    prompts = sorted((_mem_prompt(rng, scene, i, d) for i, d in zip(sel, ids)), key=lambda p: p.obj_id)
    q, a = _region_qa(rng, scene, sel, ids)
    prefix = mem_prefix([p.mask for p in prompts], [p.obj_id for p in prompts], scene.is_image)
    return _sample("mask_region", scene, [Turn(prefix + q, a)], mem=prompts)


def task_ref_caption(rng: np.random.Generator, scene: Scene) -> Sample | None:
    """`What is [0] <|ref|>?` -> `A large blue circle.` (point or box on one frame)."""
    i = int(rng.integers(len(scene.objects)))
    obj_id = _ids(rng, 1)[0]
    prompt = _ref_prompt(rng, scene, i, obj_id)
    obj = scene.objects[i]
    q = _pick(rng, SHORT_CAPTION_TEMPLATES[scene.medium]).format(f"[{obj_id}] <|ref|>")
    r = rng.random()
    a = caption(obj, with_motion=not scene.is_image and r < 0.5) if r < 0.75 else f"[{obj_id}] is a {obj.description}."
    return _sample("ref_caption", scene, [Turn(q, a)], ref=[prompt])


def _id_seg_parts(rng: np.random.Generator, scene: Scene):
    k = int(rng.integers(1, min(3, len(scene.objects)) + 1))
    q = _id_question(rng, scene, rng.choice(len(scene.objects), k, replace=False).tolist())
    ids = _ids(rng, k)
    question, order = _fill(q.question, ids, "<|ref|>")
    refs = [_ref_prompt(rng, scene, q.objs[j], ids[j]) for j in order]
    return q, ids, question, order, refs


def task_id_seg(rng: np.random.Generator, scene: Scene) -> Sample | None:
    """§6.4: `What colour is [0] <|ref|>?\\nOptions:\\n(B) Red Please localize ...` -> `[0] <|seg|>`."""
    q, ids, question, order, refs = _id_seg_parts(rng, scene)
    if rng.random() < 0.6:
        question += _options(rng, q, ids, full=False)[0]
    answer = " ".join(f"[{ids[j]}] <|seg|>" for j in order)
    turn = Turn(_pick(rng, ID_WRAPPERS).format(question), answer, [(q.objs[j],) for j in order])
    return _sample("id_seg", scene, [turn], ref=refs)


def task_pixelqa(rng: np.random.Generator, scene: Scene) -> Sample | None:
    """One-shot PixelQA: `Which way does [0] <|ref|> move? ...` -> `[0] <|seg|> moves to the left.`"""
    q, ids, question, order, refs = _id_seg_parts(rng, scene)
    suffix = "Please segment it." if len(q.objs) == 1 and rng.random() < 0.3 else _pick(rng, PIXELQA_SUFFIXES)
    answer, seg_order = _fill(q.sentence, ids, "<|seg|>")
    turn = Turn(f"{question} {suffix}", answer, [(q.objs[j],) for j in seg_order])
    return _sample("pixelqa", scene, [turn], ref=refs)


def pixelqa_two_step(rng: np.random.Generator, scene: Scene) -> tuple[Sample, Sample]:
    """§6.5 protocol: (1) localize with IDs (multiple choice + `[id] <|ref|>`), (2) answer with the
    objects' masks on all frames as `<|mem|>` prompts (`The best option is (X).`)."""
    q, ids, question, order, refs = _id_seg_parts(rng, scene)
    opts, letter = _options(rng, q, ids, full=True)
    answer = " ".join(f"[{ids[j]}] <|seg|>" for j in order)
    step1 = _sample("pixelqa_localize", scene, [Turn(f"{question}{opts}. Please localize the relevant objects "
                                                     "with IDs.", answer, [(q.objs[j],) for j in order])], ref=refs)
    mems = sorted((_mem_prompt(rng, scene, q.objs[j], ids[j], all_frames=True) for j in order),
                  key=lambda p: p.obj_id)
    prefix = mem_prefix([p.mask for p in mems], [p.obj_id for p in mems], scene.is_image)
    plain = _fill(q.question, ids, "")[0]
    step2 = _sample("pixelqa_answer", scene, [Turn(f"{prefix}{plain}{opts}\nPlease only give the best option.",
                                                   f"The best option is ({letter}).")], mem=mems)
    return step1, step2


def task_pixelqa_two_step(rng: np.random.Generator, scene: Scene) -> Sample | None:
    """One of the two PixelQA stages (both are drawn so the pair stays deterministic)."""
    return pixelqa_two_step(rng, scene)[int(rng.integers(2))]


def _follow_up(rng: np.random.Generator, scene: Scene, i: int, ref: str, used: set[str]) -> Turn | None:
    """A follow-up question about object i (`ref` = `it` or `[id]`), or a new segmentation request."""
    obj, it = scene.objects[i], ref
    subj = "It" if ref == "it" else ref
    kinds = [k for k in ("colour", "shape", "size", "count", "segment") + (() if scene.is_image else ("motion",))
             if k not in used]
    kind = _pick(rng, kinds)
    used.add(kind)
    if kind == "colour":
        return Turn(f"What colour is {it}?", f"{subj} is {obj.colour}.")
    if kind == "shape":
        return Turn(f"What shape is {it}?", f"{subj} is a {obj.shape}.")
    if kind == "size":
        return Turn(f"How big is {it}?", f"{subj} is {obj.size}.")
    if kind == "motion":
        return Turn(f"Which way does {it} move?", f"{subj} {_motion_sentence(scene, i)}.")
    if kind == "count":
        n = len(scene.objects)
        return Turn(f"How many shapes are there in the {scene.medium}?",
                    f"There {'is' if n == 1 else 'are'} {n} shape{'' if n == 1 else 's'}.")
    others = [(j, e) for j in range(len(scene.objects)) if j != i for e in referring_expressions(scene, j)]
    if not others:
        return None
    j, expr = _pick(rng, others)
    question = _pick(rng, [f"Now segment the {expr}.", f"Please also segment the {expr}.",
                           QUERY_TEMPLATES[scene.medium][1].format(expr)])
    return Turn(question, named_seg([full_name(expr, scene.objects[j])]), [(j,)])


def task_multi_turn(rng: np.random.Generator, scene: Scene) -> Sample | None:
    """2-3 turns: a first seg / mask-prompt / point-box request, then follow-ups referring back."""
    mode = ("seg", "mem", "ref")[rng.integers(3)]
    mem, ref = [], []
    if mode == "seg":
        valid = [(i, e) for i in range(len(scene.objects)) for e in referring_expressions(scene, i)]
        if not valid:
            return None
        i, expr = _pick(rng, valid)
        first, name = _seg_turn(rng, scene, i, expr), "it"
    else:
        i = int(rng.integers(len(scene.objects)))
        obj_id = _ids(rng, 1)[0]
        name = f"[{obj_id}]"
        if mode == "mem":
            mem = [_mem_prompt(rng, scene, i, obj_id)]
            q = _pick(rng, SHORT_CAPTION_TEMPLATES[scene.medium]).format(name)
            first = Turn(mem_prefix([mem[0].mask], [obj_id], scene.is_image) + q, caption(scene.objects[i]))
        else:
            ref = [_ref_prompt(rng, scene, i, obj_id)]
            q = _pick(rng, SHORT_CAPTION_TEMPLATES[scene.medium]).format(f"{name} <|ref|>")
            first = Turn(q, caption(scene.objects[i]))
    turns, used = [first], set()
    for _ in range(int(rng.integers(1, 3))):
        nxt = _follow_up(rng, scene, i, name, used)
        if nxt is not None:
            turns.append(nxt)
    return _sample("multi_turn", scene, turns, mem=mem, ref=ref) if len(turns) > 1 else None


TASKS: dict[str, Callable[[np.random.Generator, Scene], Sample | None]] = {
    "referring_seg": task_referring_seg, "reasoning_seg": task_reasoning_seg, "mask_region": task_mask_region,
    "ref_caption": task_ref_caption, "id_seg": task_id_seg, "pixelqa": task_pixelqa,
    "pixelqa_two_step": task_pixelqa_two_step, "multi_turn": task_multi_turn}
DEFAULT_TASK_MIX = {"referring_seg": 0.22, "reasoning_seg": 0.14, "mask_region": 0.16, "ref_caption": 0.1,
                    "id_seg": 0.12, "pixelqa": 0.08, "pixelqa_two_step": 0.06, "multi_turn": 0.12}

# ----------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------


def sample_at(seed: int, index: int, task_mix: dict[str, float] | None = None, video_prob: float = 0.35,
              style: str = "train", task: str | None = None, video: bool | None = None) -> Sample:
    """The `index`-th sample of the stream `seed` (random access, e.g. for DataLoader workers)."""
    mix = task_mix or DEFAULT_TASK_MIX
    unknown = set(mix) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}")
    names, p = list(mix), np.array(list(mix.values()), float)
    rng = np.random.default_rng([seed, index, 0 if style == "train" else 1])
    for _ in range(50):
        name = task or names[rng.choice(len(names), p=p / p.sum())]
        is_video = (rng.random() < video_prob) if video is None else video
        s = TASKS[name](rng, make_scene(rng, is_video, style))
        if s is not None:
            return s
    raise RuntimeError(f"could not generate task {task!r}")


def generate_dataset(seed: int = TRAIN_SEED, n: int | None = 1000, task_mix: dict[str, float] | None = None,
                     video_prob: float = 0.35, style: str = "train") -> Iterator[Sample]:
    """`n` samples (endless when None) deterministic from `seed`."""
    i = 0
    while n is None or i < n:
        yield sample_at(seed, i, task_mix, video_prob, style)
        i += 1


def generate_heldout(n: int = 200, seed: int = HELDOUT_SEED, **kwargs) -> Iterator[Sample]:
    """Held-out stream: same generator, a seed the training stream never uses."""
    return generate_dataset(seed, n, **kwargs)


def generate_ood_sample(seed: int, index: int = 0, task: str | None = None, video: bool | None = None,
                        video_prob: float = 0.35) -> Sample:
    """Out-of-distribution style: outlined, rotated, colour-jittered shapes, other sizes, coloured noise /
    checker / radial backgrounds and extreme aspect ratios; same vocabulary and prompt formats."""
    return sample_at(seed, index, video_prob=video_prob, style="ood", task=task, video=video)


def generate_ood_dataset(seed: int = HELDOUT_SEED, n: int = 200, **kwargs) -> Iterator[Sample]:
    return (generate_ood_sample(seed, i, **kwargs) for i in range(n))


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------

_ID_SEG_RE = re.compile(r"\[(\d+)\] <\|seg\|>")
_ID_REF_RE = re.compile(r"\[(\d+)\] <\|ref\|>")


def validate_sample(s: Sample) -> None:
    """Assert the token/prompt bookkeeping the model relies on (raises AssertionError)."""
    text = "".join(t.user + t.assistant for t in s.turns)
    assert all("<|seg|>" not in t.user for t in s.turns), "<|seg|> in a user turn"
    for t in s.turns:
        assert t.assistant.count("<|seg|>") == len(t.seg), (t.assistant, t.seg)
    assert text.count("<|ref|>") == len(s.ref_prompts) == len(_ID_REF_RE.findall(text))
    assert [int(x) for x in _ID_REF_RE.findall(text)] == [p.obj_id for p in s.ref_prompts]
    assert s.turns[0].user.count("<|mem|>") == text.count("<|mem|>") == sum(len(mem_slots(p.mask))
                                                                            for p in s.mem_prompts)
    for p in s.ref_prompts:
        m = s.masks[p.obj, p.frames[0]]
        if p.kind == "point":
            assert m[p.coords[1], p.coords[0]]
        else:
            assert p.coords == box_prompt(m)
    id_to_obj = {p.obj_id: p.obj for p in s.ref_prompts}
    for t in s.turns:
        ids = [int(x) for x in _ID_SEG_RE.findall(t.assistant)]
        if ids and id_to_obj:
            assert [(id_to_obj[x],) for x in ids] == t.seg
    for m in s.seg_masks():
        assert m.any(), "empty target mask"
