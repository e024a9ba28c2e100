"""Visual prompts (points, boxes, masks) and the prompt text that refers to them (spec §5.4, §5.5, §6.3, §6.4).

User prompts are given in ORIGINAL media pixel coordinates, continuous: pixel column ``c`` spans
``[c, c + 1)``, so the centre of pixel ``(c, r)`` is ``(c + 0.5, r + 0.5)``. ``frame`` indexes the
sampled frames (``Media.frames``), the list given to both the LLM and SAM 2.

* A mask becomes ``<|mem|>`` tokens: ``refer_mask`` + the ``mem_prefix`` text placed before the question.
* A point or a box becomes one ``<|ref|>`` token written ``[id] <|ref|>`` at the object's first mention,
  with ``ref_inputs`` giving its coordinates in the SAM 2 input space (in ``<|ref|>`` order).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as tvF

from .vision import FACTOR, PATCH, TEMPORAL_PATCH

REF_TOKEN, SEG_TOKEN, MEM_TOKEN = "<|ref|>", "<|seg|>", "<|mem|>"

IMAGE_MEM_HEADER = "Here is an image with the following highlighted regions:\n"
VIDEO_MEM_HEADER = "Here is a video with {n} frames denoted as <1> to <{n}>. The highlighted regions are as follows:\n"

ID_SEGMENTATION_TEMPLATES = (
    "{} Please localize the relevant objects with IDs.",
    "{} Segment all the relevant target(s) with ID(s) in the video.",
    "{} Can you segment the target object(s) with ID(s) in the video?",
    "Please segment the mentioned objects with IDs in the question: {}",
    "Find and track the relevant objects with IDs in the query: {}",
    "Given the query '{}', please provide segmentation masks for the relevant objects with IDs.",
)
"""Stage-3 wrappers of an ID-based segmentation request; the model answers ``[id] <|seg|>`` per object."""

DEFAULT_ID_SEGMENTATION_TEMPLATE = ID_SEGMENTATION_TEMPLATES[3]

POINT_LABEL, BOX_LABELS = 1, (2, 3)
"""SAM 2 prompt labels: foreground click; box top-left and bottom-right corners."""


@dataclass(frozen=True)
class PointPrompt:
    """A click at continuous original-pixel coordinates ``(x, y)`` on sampled frame ``frame``."""

    x: float
    y: float
    frame: int = 0
    label: int = POINT_LABEL


@dataclass(frozen=True)
class BoxPrompt:
    """A box with corners ``(x0, y0)``, ``(x1, y1)`` in continuous original-pixel coordinates."""

    x0: float
    y0: float
    x1: float
    y1: float
    frame: int = 0


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    """A boolean ``(H, W)`` mask (a scribble or painted region) on sampled frame ``frame``."""

    mask: np.ndarray
    frame: int = 0


@dataclass
class RefInputs:
    """Model inputs for the ``<|ref|>`` tokens, one entry per object in ``<|ref|>`` order.

    ``point_coords[i]``: float32 ``(1, P, 2)`` in SAM 2 input pixels; ``point_labels[i]``: int32 ``(1, P)``;
    ``point_frames``: int64 ``(n,)``. The model takes them as the reference's ``[[...]]`` or flat.
    """

    point_coords: list[torch.Tensor]
    point_labels: list[torch.Tensor]
    point_frames: torch.Tensor


@dataclass
class VisualPromptInputs:
    """Everything a set of visual prompts adds to a request (see ``encode_visual_prompts``)."""

    prefix: str = ""
    mentions: dict[int, str] = field(default_factory=dict)
    refer_mask: torch.Tensor | None = None
    ref: RefInputs | None = None


def to_sam2_coords(x: float, y: float, frame_size: tuple[int, int], image_size: int) -> tuple[float, float]:
    """Continuous original ``(x, y)`` -> SAM 2 input pixel indices ``(x·S/W - 0.5, y·S/H - 0.5)`` (spec §5.5)."""
    height, width = frame_size
    if not (0 <= x <= width and 0 <= y <= height):
        raise ValueError(f"point ({x}, {y}) is outside the {width}×{height} frame")
    return x * image_size / width - 0.5, y * image_size / height - 0.5


def ref_inputs(
    prompts: Sequence[PointPrompt | BoxPrompt], frame_size: tuple[int, int], image_size: int, num_frames: int
) -> RefInputs:
    """SAM 2-space prompts for the ``<|ref|>`` tokens: a point -> 1 point (its label), a box -> labels 2, 3."""
    coords, labels = [], []
    for prompt in prompts:
        _check_frame(prompt.frame, num_frames)
        if isinstance(prompt, PointPrompt):
            if prompt.label not in (0, 1):
                raise ValueError(f"point label must be 0 or 1, got {prompt.label}")
            points = [(prompt.x, prompt.y)]
            point_labels = [prompt.label]
        else:
            x0, x1 = sorted((prompt.x0, prompt.x1))
            y0, y1 = sorted((prompt.y0, prompt.y1))
            points, point_labels = [(x0, y0), (x1, y1)], list(BOX_LABELS)
        sam = [to_sam2_coords(x, y, frame_size, image_size) for x, y in points]
        coords.append(torch.tensor([sam], dtype=torch.float32))
        labels.append(torch.tensor([point_labels], dtype=torch.int32))
    frames = torch.tensor([prompt.frame for prompt in prompts], dtype=torch.long)
    return RefInputs(coords, labels, frames)


def refer_mask(
    objects: Sequence[Sequence[MaskPrompt]], num_frames: int, grid_thw: Sequence[int]
) -> tuple[torch.Tensor, list[list[int]]]:
    """The ``<|mem|>`` mask (spec §5.4) and, per object, its non-empty temporal slots.

    ``objects[o]`` holds object ``o``'s masks (one or more frames). Frames pair up into slots
    ``frame // 2`` (an odd last frame pairs with its copy) by max-pooling; each slot mask is resized
    (bilinear, antialiased) to the LLM frame size ``(grid_h·14, grid_w·14)``, max-pooled 28×28 and
    thresholded ``> 0``, so small masks survive. Returns bool ``(grid_t, n_obj, grid_h/2, grid_w/2)``.
    Only non-empty (slot, object) pairs are resized: empty ones stay zero, as in the reference.
    """
    grid_t, grid_h, grid_w = (int(v) for v in grid_thw)
    if grid_t != -(-num_frames // TEMPORAL_PATCH):
        raise ValueError(f"grid_t {grid_t} does not match {num_frames} frames")
    llm_size = [grid_h * PATCH, grid_w * PATCH]
    out = torch.zeros(grid_t, len(objects), grid_h // 2, grid_w // 2, dtype=torch.bool)
    slots = []
    for o, masks in enumerate(objects):
        paired: dict[int, np.ndarray] = {}
        for prompt in masks:
            _check_frame(prompt.frame, num_frames)
            mask = np.asarray(prompt.mask, dtype=bool)
            if mask.ndim != 2:
                raise ValueError(f"a mask must be (H, W), got shape {mask.shape}")
            slot = prompt.frame // TEMPORAL_PATCH
            paired[slot] = paired[slot] | mask if slot in paired else mask
        for slot, mask in paired.items():
            resized = tvF.resize(torch.tensor(mask, dtype=torch.float32)[None, None], llm_size, antialias=True)
            out[slot, o] = F.max_pool2d(resized, FACTOR, FACTOR)[0, 0] > 0
        slots.append([slot for slot in range(grid_t) if out[slot, o].any()])
        if not slots[-1]:
            raise ValueError(f"the mask of object {o} is empty")
    return out, slots


def mem_prefix(
    slots: Sequence[Sequence[int]], num_frames: int, is_image: bool, object_ids: Sequence[int] | None = None
) -> str:
    """The training-format region prefix (spec §6.3), placed directly before the question.

    Image: ``[id]: <|mem|>`` per object. Video: ``[id]: <a>-<a+1> <|mem|> ...`` with ``a = 2·slot + 1``;
    ``num_frames`` is the un-padded count of sampled frames.
    """
    object_ids = range(len(slots)) if object_ids is None else object_ids
    if len(object_ids) != len(slots):
        raise ValueError(f"{len(object_ids)} object ids for {len(slots)} objects")
    if is_image:
        if any(list(s) != [0] for s in slots):
            raise ValueError("an image has a single temporal slot")
        return IMAGE_MEM_HEADER + "".join(f"[{i}]: {MEM_TOKEN}\n" for i in object_ids)
    lines = (
        f"[{i}]: " + " ".join(f"<{2 * s + 1}>-<{2 * s + 2}> {MEM_TOKEN}" for s in object_slots) + "\n"
        for i, object_slots in zip(object_ids, slots)
    )
    return VIDEO_MEM_HEADER.format(n=num_frames) + "".join(lines)


def ref_mention(object_id: int) -> str:
    """First mention of a point/box-prompted object in the question: ``[id] <|ref|>``."""
    return f"[{object_id}] {REF_TOKEN}"


def segment_with_ids(question: str, template: str = DEFAULT_ID_SEGMENTATION_TEMPLATE) -> str:
    """Wrap a question so the model answers ``[id] <|seg|>`` per mentioned object (spec §6.4)."""
    return template.format(question)


def seg_object_ids(response: str) -> list[int | None]:
    """For each ``<|seg|>`` in ``response`` (in order) the id of the ``[id]`` written just before it, else None."""
    return [None if m[1] is None else int(m[1]) for m in re.finditer(r"(?:\[(\d+)\]\s*)?<\|seg\|>", response)]


def encode_visual_prompts(
    objects: Sequence[PointPrompt | BoxPrompt | MaskPrompt | Sequence[MaskPrompt]],
    frame_size: tuple[int, int],
    num_frames: int,
    grid_thw: Sequence[int],
    image_size: int,
    is_image: bool,
) -> VisualPromptInputs:
    """Turn one visual prompt per object (object ``i`` gets id ``[i]``) into prompt text and model inputs.

    Masks (one ``MaskPrompt`` or several frames' worth) go to ``prefix`` (place it before the question)
    and ``refer_mask``. Each point/box gets ``mentions[i] = "[i] <|ref|>"`` to write into the question
    at that object's first mention, **in ascending id order** (the order of ``ref``); later mentions of
    any object are plain ``[i]``. ``grid_thw`` comes from ``vision.video_grid_thw``.
    """
    masks = {i: [o] if isinstance(o, MaskPrompt) else list(o) for i, o in enumerate(objects) if not _is_ref(o)}
    refs = {i: o for i, o in enumerate(objects) if _is_ref(o)}
    inputs = VisualPromptInputs(mentions={i: ref_mention(i) for i in refs})
    if masks:
        inputs.refer_mask, slots = refer_mask(list(masks.values()), num_frames, grid_thw)
        inputs.prefix = mem_prefix(slots, num_frames, is_image, list(masks))
    if refs:
        inputs.ref = ref_inputs(list(refs.values()), frame_size, image_size, num_frames)
    return inputs


def _is_ref(prompt: object) -> bool:
    return isinstance(prompt, (PointPrompt, BoxPrompt))


def _check_frame(frame: int, num_frames: int) -> None:
    if not 0 <= frame < num_frames:
        raise ValueError(f"frame {frame} is outside the {num_frames} sampled frames")
