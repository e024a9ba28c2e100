"""UniPixel inference: Qwen2.5-VL + SAM 2, pixel-grounded answers about images and videos."""
from __future__ import annotations

import os
from typing import Any

# OpenMP threads that spin while waiting slow small-model turns 5-20x on a shared CPU (measured by the
# benchmark); sleeping waits cost nothing measurable when the machine is idle. Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    """``unipixel.load_model`` without importing torch/transformers for light submodules (rendering, limits)."""
    if name == "load_model":
        from .loading import load_model

        return load_model
    raise AttributeError(name)
