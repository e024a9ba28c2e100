"""UniPixel configuration: Qwen2.5-VL's config plus the keys that describe SAM 2 and the pixel tokens."""
from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import Qwen2_5_VLConfig


@strict
class UniPixelConfig(Qwen2_5_VLConfig):
    """Configuration of a UniPixel checkpoint (`model_type` ``pixel_qwen2_5_vl``, as the released files say).

    The SAM 2 keys select the segmenter (`sam2_config` names a stock SAM 2.1 config unless the checkpoint
    directory carries its own ``sam2_config.yaml``); the token ids name ``<|ref|>``, ``<|seg|>`` and
    ``<|mem|>``. Training-only keys of the released files (``sample_objects``, ``base_model_path``, ...)
    are kept as plain attributes so that a saved config round-trips.
    """

    model_type = "pixel_qwen2_5_vl"

    sam2_config: str | None = "configs/sam2.1_hiera_b+"
    sam2_image_size: int = 768
    sam2_hidden_tokens: int = 2
    sam2_batch_mode: bool = False
    sam2_enable_decoder: bool = True
    sam2_inference_mode: bool = True
    sam2_apply_postprocessing: bool = False
    ref_token_id: int | None = None
    seg_token_id: int | None = None
    mem_token_id: int | None = None

