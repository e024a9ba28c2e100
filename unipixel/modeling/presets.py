"""Configurations: the released UniPixel-3B/7B architectures (offline) and tiny random ones for tests.

The released configs are the public Qwen2.5-VL-3B/7B-Instruct configurations plus UniPixel's keys
(spec §1.1, §8.3), so the real architecture can be built on the meta device or with random weights
(benchmarks) without downloading anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..configuration import UniPixelConfig

TINY_SAM2_YAML = Path(__file__).with_name("sam2_tiny.yaml")

_QWEN_TOKENS = dict(
    bos_token_id=151643,
    eos_token_id=151645,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
    vision_token_id=151654,
    image_token_id=151655,
    video_token_id=151656,
    ref_token_id=151665,
    seg_token_id=151666,
    mem_token_id=151667,
)

_RELEASED = {
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}


def released_config(size: str = "3b", num_hidden_layers: int | None = None) -> UniPixelConfig:
    """Configuration of PolyU-ChenLab/UniPixel-3B or -7B (``num_hidden_layers`` may shrink the LLM for CPU benchmarks)."""
    text = dict(_RELEASED[size.lower()])
    tie = text.pop("tie_word_embeddings")
    if num_hidden_layers is not None:
        text["num_hidden_layers"] = num_hidden_layers
    text.update(
        max_position_embeddings=128000, rms_norm_eps=1e-6, hidden_act="silu", rope_theta=1000000.0,
        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, use_sliding_window=False,
        sliding_window=32768, max_window_layers=70 if size == "7b" else 36,
        bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=tie,
    )
    vision = dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112,
        out_hidden_size=text["hidden_size"], fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu",
    )
    return UniPixelConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=tie,
        sam2_config="configs/sam2.1_hiera_b+", sam2_image_size=768, sam2_hidden_tokens=2, **_QWEN_TOKENS,
    )


def tiny_config(vocab_size: int = 512, hidden_size: int = 64, num_hidden_layers: int = 2, **overrides: Any) -> UniPixelConfig:
    """A tiny random-weight configuration covering every code path (use with :data:`TINY_SAM2_YAML`).

    Token ids sit at the top of the vocabulary in Qwen's order; ``overrides`` go to the top-level config.
    """
    top = vocab_size - 1
    tokens = dict(
        bos_token_id=top - 11, eos_token_id=top - 10, vision_start_token_id=top - 9, vision_end_token_id=top - 8,
        vision_token_id=top - 7, image_token_id=top - 6, video_token_id=top - 5,
        ref_token_id=top - 2, seg_token_id=top - 1, mem_token_id=top,
    )
    text = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1000000.0,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        bos_token_id=tokens["bos_token_id"], eos_token_id=tokens["eos_token_id"],
    )
    vision = dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
        temporal_patch_size=2, tokens_per_second=2, window_size=112, out_hidden_size=hidden_size,
        fullatt_block_indexes=[1],
    )
    settings = dict(
        text_config=text, vision_config=vision, tie_word_embeddings=True,
        sam2_config="configs/unipixel_tiny", sam2_image_size=128, sam2_hidden_tokens=2, **tokens,
    )
    settings.update(overrides)
    return UniPixelConfig(**settings)
