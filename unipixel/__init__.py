"""UniPixel inference: Qwen2.5-VL + SAM 2, pixel-grounded answers about images and videos."""
from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    """``unipixel.load_model`` without importing torch/transformers for light submodules (rendering, limits)."""
    if name == "load_model":
        from .loading import load_model

        return load_model
    raise AttributeError(name)
