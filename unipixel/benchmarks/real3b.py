"""Random weights in the released UniPixel-3B architecture: the real model's compute without its checkpoint."""
from __future__ import annotations

from typing import Any

import torch

from ..engine import Engine
from ..loading import build_model, reference_generation_config
from ..modeling.presets import released_config

ANSWER_TOKENS = 40
"""Length every answer is forced to; its last token is ``<|seg|>``, so each turn also runs one SAM 2 segmentation."""

FULL_DEPTH = {"llm_layers": 36, "vision_blocks": 32, "vision_full_attention": 4}
CPU_DEPTH = {"llm_layers": 2, "vision_blocks": 4}
"""What a CPU runs: 2 of 36 LLM layers, 4 of 32 vision blocks (the last with full attention)."""

SPECIAL_TOKENS = {
    "bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>", "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>", "vision_token_id": "<|vision_pad|>", "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>", "ref_token_id": "<|ref|>", "seg_token_id": "<|seg|>", "mem_token_id": "<|mem|>",
}


def real_3b_engine(processor: Any, device: str, dtype: torch.dtype, depth: dict[str, int] | None = None) -> Engine:
    """The 3B architecture with random weights (``depth``: fewer LLM layers / vision blocks), driven by ``processor``.

    The config's special token ids are the processor's, so its prompts (any Qwen2.5-VL-style tokenizer) feed
    the model; the vocabulary and every width stay the released ones.
    """
    config = released_config("3b", num_hidden_layers=depth["llm_layers"] if depth else None)
    if depth:
        vision, blocks = config.vision_config, depth["vision_blocks"]
        vision.fullatt_block_indexes = [i for i in vision.fullatt_block_indexes if i < blocks] or [blocks - 1]
        vision.depth = blocks
    for key, token in SPECIAL_TOKENS.items():
        setattr(config, key, processor.tokenizer.convert_tokens_to_ids(token))
    config.text_config.bos_token_id, config.text_config.eos_token_id = config.bos_token_id, config.eos_token_id
    model = build_model(config, dtype=dtype).to(device)
    model.tie_weights()
    random_init(model)
    generation = reference_generation_config(config)
    generation.min_new_tokens, generation.forced_eos_token_id = ANSWER_TOKENS, config.seg_token_id
    model.generation_config = generation
    name = (
        f"random-init UniPixel-3B architecture ({config.text_config.num_hidden_layers} of {FULL_DEPTH['llm_layers']} "
        f"LLM layers, {config.vision_config.depth} of {FULL_DEPTH['vision_blocks']} vision blocks, SAM 2.1 b+ at "
        f"{config.sam2_image_size} px, {str(dtype).removeprefix('torch.')}, {ANSWER_TOKENS}-token answers)"
    )
    return Engine(model, processor, name, is_bundled=False)


@torch.no_grad()
def random_init(model: torch.nn.Module, seed: int = 0) -> None:
    """Random, finite weights, cheaply and in place: uniform within ±1/√fan-in for matrices and kernels (activations
    stay of order one), zero biases, unit 1-D scales (norms, layer scales)."""
    generator = torch.Generator(model.device).manual_seed(seed)
    for name, param in model.named_parameters():
        if param.ndim >= 2:
            bound = param[0].numel() ** -0.5
            param.uniform_(-bound, bound, generator=generator)
        elif name.endswith("bias"):
            param.zero_()
        else:
            param.fill_(1.0)


def full_depth_estimate(result: dict, engine: Engine) -> float:
    """A reduced-depth turn's median scaled to full depth with its measured per-layer and per-block seconds."""
    stages, vision = result["stages"], engine.model.config.vision_config
    layers, window, full = (stages.get(f"{k}_s", 0.0) for k in ("llm_layers", "vision_window", "vision_full"))
    full_blocks = len(vision.fullatt_block_indexes)
    scaled = (
        layers * FULL_DEPTH["llm_layers"] / engine.model.config.text_config.num_hidden_layers
        + window * (FULL_DEPTH["vision_blocks"] - FULL_DEPTH["vision_full_attention"]) / max(1, vision.depth - full_blocks)
        + full * FULL_DEPTH["vision_full_attention"] / full_blocks
    )
    return result["median_s"] - layers - window - full + scaled
