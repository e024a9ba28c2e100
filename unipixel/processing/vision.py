"""Model-side tensors: the Qwen2.5-VL processor inputs (spec §5.2), the chat text (§6.1) and SAM 2 frames (§5.3).

The stock transformers 5.24 ``Qwen2_5_VLProcessor`` reproduces the reference's ``input_ids``,
``pixel_values_videos`` (fused float32 normalisation) and ``video_grid_thw`` bit for bit once the frames
are resized here (``do_resize=False``). Its ``second_per_grid_ts`` comes from video metadata (a frame list
without metadata counts as 24 fps, spec §9.8), so every call passes metadata saying 2 fps with all
frames sampled, which gives the reference's ``[1.0]``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as tvF
from PIL import Image
from transformers import Qwen2_5_VLProcessor
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.video_utils import VideoMetadata

PATCH = 14
"""Vision patch side in LLM-frame pixels; the grid is ``(t, H'/14, W'/14)``."""

FACTOR = 2 * PATCH
"""Frame sides are multiples of this: one merged (2×2 patches) LLM token."""

TEMPORAL_PATCH = 2
"""Frames per temporal slot; odd frame lists are padded by repeating the last frame."""

MIN_PIXELS = 128 * FACTOR * FACTOR
"""Smallest frame area given to the LLM (all demo and segmentation paths)."""

FRAME_PIXELS = 256 * FACTOR * FACTOR
"""Largest frame area of a ``sample_frames``-frame clip; scaled by ``int(sample_frames / n)`` for shorter ones."""

FRAME_LIST_FPS = 2.0
"""The fps the reference's loader reports for a frame list: ``second_per_grid_ts = 2 / 2.0 = 1.0``."""

SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)
"""ImageNet normalisation of SAM 2 frames."""

VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
VIDEO_OUTPUT_KEYS = ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def smart_resize(
    height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS, max_pixels: int = FRAME_PIXELS
) -> tuple[int, int]:
    """The reference's target size: multiples of ``factor``, area raised to ``min_pixels`` first, then capped.

    Python float64 arithmetic and ``round`` (half to even) as the reference; aspect ratio above 200 fails.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be at most 200, got {max(height, width) / min(height, width)}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    return h_bar, w_bar


def pixel_budget(num_frames: int, sample_frames: int = 16) -> tuple[int, int]:
    """``(min_pixels, max_pixels)`` per frame: ``128·28²`` and ``256·28²·int(S/n)``.

    ``int(S/n)`` is floored at 1 (the reference would fail with more frames than ``S``).
    """
    return MIN_PIXELS, FRAME_PIXELS * max(1, int(sample_frames / num_frames))


def llm_frame_size(height: int, width: int, num_frames: int, sample_frames: int = 16) -> tuple[int, int]:
    """``(H', W')`` of the LLM frames for ``num_frames`` frames of ``height × width``."""
    min_pixels, max_pixels = pixel_budget(num_frames, sample_frames)
    return smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)


def video_grid_thw(height: int, width: int, num_frames: int, sample_frames: int = 16) -> tuple[int, int, int]:
    """``(t, H'/14, W'/14)``: the grid the processor will report, known before running it."""
    h, w = llm_frame_size(height, width, num_frames, sample_frames)
    return -(-num_frames // TEMPORAL_PATCH), h // PATCH, w // PATCH


def prepare_llm_frames(llm_frames: Sequence[Image.Image], sample_frames: int = 16) -> list[Image.Image]:
    """Resize RGB frames to the smart-resize size (PIL bicubic) and pad an odd count with the last frame."""
    if not llm_frames:
        raise ValueError("no frames")
    width, height = llm_frames[0].size
    if any(frame.size != (width, height) for frame in llm_frames):
        raise ValueError("all frames must have the same size")
    h, w = llm_frame_size(height, width, len(llm_frames), sample_frames)
    return pad_to_temporal_patch([frame.resize((w, h), Image.Resampling.BICUBIC) for frame in llm_frames])


def pad_to_temporal_patch(frames: list[Image.Image]) -> list[Image.Image]:
    """Repeat the last frame so the count fills whole temporal patches (an image becomes two frames)."""
    return frames + frames[-1:] * (len(frames) % TEMPORAL_PATCH)


def build_vision_inputs(
    processor: Qwen2_5_VLProcessor, llm_frames: Sequence[Image.Image], text: str, sample_frames: int = 16
) -> dict[str, torch.Tensor]:
    """The reference's processor outputs for one video (or image) and the rendered conversation ``text``.

    ``llm_frames`` are the loaded RGB frames (``Media.llm_frames``); they are resized and padded here.
    Returns ``input_ids``, ``attention_mask``, ``pixel_values_videos``, ``video_grid_thw`` and
    ``second_per_grid_ts`` (batch size 1). ``mm_token_type_ids`` is dropped: positions follow the
    4.53.3 rule (spec §5.2.5, §9.7), not 5.x's.
    """
    if text.count(VIDEO_PLACEHOLDER) != 1:
        raise ValueError(f"the text must hold exactly one {VIDEO_PLACEHOLDER}")
    frames = prepare_llm_frames(llm_frames, sample_frames)
    outputs = processor(
        text=[text],
        videos=[frames],
        video_metadata=[VideoMetadata(total_num_frames=len(frames), fps=FRAME_LIST_FPS)],
        do_resize=False,
        do_sample_frames=False,
        cap_pixels_per_frame=False,
        return_tensors="pt",
    )
    return {key: outputs[key] for key in VIDEO_OUTPUT_KEYS}


def tokenize_with_video(processor: Qwen2_5_VLProcessor, text: str, grid_thw: Sequence[int]) -> dict[str, torch.Tensor]:
    """``input_ids``/``attention_mask`` as :func:`build_vision_inputs` gives them, without touching pixels.

    For follow-up turns whose vision features are cached: ``<|video_pad|>`` is expanded to one token per
    merged patch of the ``(t, h, w)`` grid, then the text is tokenised as the processor does.
    """
    if text.count(VIDEO_PLACEHOLDER) != 1:
        raise ValueError(f"the text must hold exactly one {VIDEO_PLACEHOLDER}")
    t, h, w = (int(v) for v in grid_thw)
    merge = processor.video_processor.merge_size
    pad = processor.video_token
    expanded = text.replace(pad, pad * (t * h * w // merge**2))
    tokens = processor.tokenizer([expanded], return_tensors="pt")
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def load_processor(path_or_dir: str | Path) -> Qwen2_5_VLProcessor:
    """The Qwen2.5-VL processor of a checkpoint directory (tokenizer with ``<|ref|>``/``<|seg|>``/``<|mem|>``).

    Built from its parts so that the checkpoint's ``config.json`` (model type ``pixel_qwen2_5_vl``,
    unknown to transformers) is never read; the chat template comes with the tokenizer.
    """
    path = Path(path_or_dir)
    tokenizer = Qwen2Tokenizer.from_pretrained(path)
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor.from_pretrained(path),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor.from_pretrained(path),
        chat_template=tokenizer.chat_template,
    )


def render_chat(
    processor: Qwen2_5_VLProcessor, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
) -> str:
    """Render ``[{"role": ..., "content": str}, ...]`` with the checkpoint's chat template (spec §6.1).

    The video goes first in the first user turn, so its text follows ``<|vision_end|>`` directly; the
    default system message is inserted by the template; later turns are plain text.
    """
    first_user = next((i for i, message in enumerate(messages) if message["role"] == "user"), None)
    if first_user is None:
        raise ValueError("the conversation needs a user turn")
    conversation = [
        {"role": m["role"], "content": [{"type": "video"}, {"type": "text", "text": m["content"]}]}
        if i == first_user
        else {"role": m["role"], "content": m["content"]}
        for i, m in enumerate(messages)
    ]
    return processor.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=False)


def decode_response(processor: Qwen2_5_VLProcessor, ids: Sequence[int] | torch.Tensor) -> str:
    """Generated ids to text as the reference: drop one final EOS id, keep special tokens, no space clean-up."""
    ids = torch.as_tensor(ids).flatten().tolist()
    if ids and ids[-1] == processor.tokenizer.eos_token_id:
        ids = ids[:-1]
    return processor.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def sam2_frames(frames: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 RGB ``(T, H, W, 3)`` -> float32 ``(T, 3, S, S)``: /255, bilinear antialiased resize, ImageNet norm.

    Frames are transformed one at a time (same values as the batched reference, lower peak memory).
    """
    out = torch.empty(len(frames), 3, image_size, image_size)
    for i, frame in enumerate(frames):
        x = torch.from_numpy(np.ascontiguousarray(frame)).float().div(255).permute(2, 0, 1)
        x = tvF.resize(x, [image_size, image_size], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
        out[i] = tvF.normalize(x, SAM2_MEAN, SAM2_STD)
    return out
