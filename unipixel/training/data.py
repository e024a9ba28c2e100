"""Shapes samples -> exactly the model inputs the inference path builds, plus training targets.

Text goes through the checkpoint's chat template and the Qwen2.5-VL processor (``build_vision_inputs``),
mask prompts through ``refer_mask`` and point/box prompts through ``ref_inputs`` (``unipixel.processing``),
SAM 2 frames through ``sam2_frames``; so a model trained on these tensors sees at inference what it saw
in training. Labels cover the assistant turns (their text and closing ``<|im_end|>``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Qwen2_5_VLProcessor

from ..processing.prompts import BoxPrompt, MaskPrompt, PointPrompt, ref_inputs, refer_mask
from ..processing.vision import build_vision_inputs, render_chat, sam2_frames
from . import shapes
from .pointing import PointingTargets, pointing_targets

IGNORE = -100


@dataclass
class Encoded:
    """One conversation ready for the model.

    ``inputs``: keyword arguments of ``forward``/``generate`` (batch size 1, pixel prompts included);
    ``labels``: LM targets (``None`` for a prompt); ``frames``: SAM 2 inputs ``(T, 3, S, S)``;
    ``frame_size``: ``(H, W)``; ``targets``: per ``<|seg|>`` of the text the ``(T, S, S)`` bool mask;
    ``attributes``: ``(2, L)`` auxiliary targets (see :func:`attribute_labels`, training only);
    ``codes``: ``(n_seg, 2)`` per ``<|seg|>`` the (colour, shape) its answer names (``Sample.seg_codes``,
    training only); ``pointing``: where each ``<|ref|>`` points (``pointing.py``, training only).
    """

    inputs: dict[str, Any]
    labels: torch.Tensor | None
    frames: torch.Tensor
    frame_size: tuple[int, int]
    targets: list[torch.Tensor]
    attributes: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    pointing: PointingTargets | None = None


def training_sample(seed: int, index: int, task_mix: dict[str, float], video_prob: float, max_frames: int) -> shapes.Sample:
    """The ``index``-th training sample of stream ``seed``: like ``shapes.sample_at`` with videos of
    4..``max_frames`` frames (short clips keep CPU training affordable)."""
    names, p = list(task_mix), np.array(list(task_mix.values()), float)
    rng = np.random.default_rng([seed, index, 2])
    for _ in range(50):
        name = names[rng.choice(len(names), p=p / p.sum())]
        video = rng.random() < video_prob
        frames = int(rng.integers(4, max_frames + 1)) if video else None
        sample = shapes.TASKS[name](rng, shapes.make_scene(rng, video, num_frames=frames))
        if sample is not None:
            return sample
    raise RuntimeError(f"no sample for stream {seed} index {index}")


def conversation_text(processor: Qwen2_5_VLProcessor, sample: shapes.Sample, prompt_only: bool, prefix: str = "") -> str:
    """Training text (whole conversation, trailing whitespace stripped as the reference) or the prompt
    (every turn but the last answer, generation prompt, optional assistant-side ``prefix``)."""
    messages = sample.messages()
    if prompt_only:
        return render_chat(processor, messages[:-1], add_generation_prompt=True) + prefix
    return render_chat(processor, messages, add_generation_prompt=False).rstrip()


def assistant_labels(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """``input_ids`` with everything but assistant answers (and their ``<|im_end|>``) set to ``IGNORE``."""
    ids = input_ids[0].tolist()
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    header = tokenizer.encode("assistant\n", add_special_tokens=False)
    labels = torch.full_like(input_ids, IGNORE)
    for i, token in enumerate(ids):
        if token == start and ids[i + 1 : i + 1 + len(header)] == header:
            first = i + 1 + len(header)
            last = ids.index(end, first) if end in ids[first:] else len(ids) - 1
            labels[0, first : last + 1] = input_ids[0, first : last + 1]
    return labels


def prompt_inputs(sample: shapes.Sample, grid_thw: torch.Tensor, image_size: int) -> dict[str, Any]:
    """``refer_mask`` for the sample's mask prompts and ``point_*`` for its point/box prompts."""
    out: dict[str, Any] = {}
    num_frames, height, width = sample.frames.shape[:3]
    if sample.mem_prompts:
        objects = [[MaskPrompt(p.mask[f], f) for f in p.frames] for p in sample.mem_prompts]
        out["refer_mask"] = [refer_mask(objects, num_frames, grid_thw[0].tolist())[0]]
    if sample.ref_prompts:
        prompts = []
        for p in sample.ref_prompts:
            if p.kind == "point":
                prompts.append(PointPrompt(p.coords[0] + 0.5, p.coords[1] + 0.5, p.frames[0]))
            else:
                x0, y0, x1, y1 = p.coords
                prompts.append(BoxPrompt(x0 + 0.5, y0 + 0.5, x1 + 0.5, y1 + 0.5, p.frames[0]))
        ref = ref_inputs(prompts, (height, width), image_size, num_frames)
        out.update(point_coords=[ref.point_coords], point_labels=[ref.point_labels], point_frames=[ref.point_frames])
    return out


def token_owners(masks: np.ndarray, grid_thw: torch.Tensor, min_cover: float = 0.25) -> torch.Tensor:
    """Per merged visual token (raster order, first frame of each temporal slot): the index of the object of
    ``masks`` ``(N, T, H, W)`` covering at least ``min_cover`` of its 28x28 cell, else -1."""
    t, h, w = (int(v) for v in grid_thw[0])
    frames = masks[:, [min(2 * slot, masks.shape[1] - 1) for slot in range(t)]]  # (N, t, H, W)
    cover = F.interpolate(torch.from_numpy(frames).float(), size=(h // 2, w // 2), mode="area")  # (N, t, h/2, w/2)
    best, owner = cover.max(dim=0)
    owner[best < min_cover] = -1
    return owner.flatten()


def attribute_labels(sample: shapes.Sample, input_ids: torch.Tensor, grid_thw: torch.Tensor, tokenizer,
                     min_cover: float = 0.25) -> torch.Tensor:
    """Auxiliary targets ``(2, L)``: the colour word and the shape word of the object at each position.

    A visual token names the object covering at least ``min_cover`` of its 28x28 cell (on the first frame
    of its temporal slot); a ``<|mem|>`` or ``<|ref|>`` token names the object it stands for; every other
    position is ``IGNORE``. Read through the LM head at those positions, these dense targets give the
    vision tower and the pixel-prompt encoders a direct training signal from the first step, instead of
    only through attention that an untrained LLM does not yet pay to the image.
    """
    ids = input_ids[0]
    words = lambda obj: [tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in (obj.colour, obj.shape)]  # noqa: E731
    out = torch.full((2, ids.shape[0]), IGNORE, dtype=torch.long)
    table = torch.tensor([words(obj) for obj in sample.objects] + [[IGNORE, IGNORE]])  # row -1: nothing
    video = torch.nonzero(ids == tokenizer.convert_tokens_to_ids("<|video_pad|>")).flatten()
    out[:, video] = table[token_owners(sample.masks, grid_thw, min_cover)].T
    mem_objects = [p.obj for p in sample.mem_prompts for _ in shapes.mem_slots(p.mask)]
    for token, objects in (("<|mem|>", mem_objects), ("<|ref|>", [p.obj for p in sample.ref_prompts])):
        positions = torch.nonzero(ids == tokenizer.convert_tokens_to_ids(token)).flatten()
        for position, obj in zip(positions.tolist(), objects):
            out[:, position] = torch.tensor(words(sample.objects[obj]))
    return out


def resize_masks(masks: np.ndarray, size: int) -> torch.Tensor:
    """``(..., H, W)`` bool masks -> ``(..., size, size)`` bool (antialiased bilinear, > 0.5)."""
    tensor = torch.from_numpy(np.ascontiguousarray(masks)).float()
    lead = tensor.shape[:-2]
    tensor = F.interpolate(tensor.reshape(-1, 1, *tensor.shape[-2:]), (size, size), mode="bilinear", antialias=True)
    return (tensor > 0.5).reshape(*lead, size, size)


def encode(
    processor: Qwen2_5_VLProcessor,
    sample: shapes.Sample,
    image_size: int,
    prompt_only: bool = False,
    prefix: str = "",
    sam_frames: int | None = None,
) -> Encoded:
    """Model inputs for ``sample`` (see :class:`Encoded`); ``sam_frames`` keeps only the first SAM 2 frames."""
    text = conversation_text(processor, sample, prompt_only, prefix)
    llm_frames = [Image.fromarray(frame) for frame in sample.frames]
    inputs = build_vision_inputs(processor, llm_frames, text)
    inputs.update(prompt_inputs(sample, inputs["video_grid_thw"], image_size))
    labels = attributes = pointing = None
    if not prompt_only:
        tokenizer = processor.tokenizer
        labels = assistant_labels(inputs["input_ids"], tokenizer)
        attributes = attribute_labels(sample, inputs["input_ids"], inputs["video_grid_thw"], tokenizer)
        video_id, ref_id = tokenizer.convert_tokens_to_ids(["<|video_pad|>", "<|ref|>"])
        pointing = pointing_targets(sample, inputs["input_ids"], inputs["video_grid_thw"], video_id, ref_id)
    frames = sample.frames[:sam_frames]
    targets = [resize_masks(mask[:sam_frames], image_size) for mask in sample.seg_masks()]
    codes = torch.tensor(sample.seg_codes(), dtype=torch.long).view(-1, 2)
    return Encoded(inputs, labels, sam2_frames(frames, image_size), sample.frames.shape[1:3], targets, attributes,
                   codes, pointing)
