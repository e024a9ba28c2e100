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

IGNORE = -100


@dataclass
class Encoded:
    """One conversation ready for the model.

    ``inputs``: keyword arguments of ``forward``/``generate`` (batch size 1, pixel prompts included);
    ``labels``: LM targets (``None`` for a prompt); ``frames``: SAM 2 inputs ``(T, 3, S, S)``;
    ``frame_size``: ``(H, W)``; ``targets``: per ``<|seg|>`` of the text the ``(T, S, S)`` bool mask.
    """

    inputs: dict[str, Any]
    labels: torch.Tensor | None
    frames: torch.Tensor
    frame_size: tuple[int, int]
    targets: list[torch.Tensor]


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
    labels = None if prompt_only else assistant_labels(inputs["input_ids"], processor.tokenizer)
    frames = sample.frames[:sam_frames]
    targets = [resize_masks(mask[:sam_frames], image_size) for mask in sample.seg_masks()]
    return Encoded(inputs, labels, sam2_frames(frames, image_size), sample.frames.shape[1:3], targets)
