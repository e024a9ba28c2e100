"""Which model runs: the released UniPixel when it can be loaded, else the bundled demo model.

An :class:`Engine` is a loaded model + processor with a name and a one-line notice for the UI, shared by
the app, the CLI and the benchmarks so that they pick models the same way.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .loading import CheckpointError, load_model

DEFAULT_MODEL = "PolyU-ChenLab/UniPixel-3B"
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "unipixel-shapes"
BUNDLED_NAMES = ("bundled", str(BUNDLED_MODEL))
BUNDLED_NOTICE = "bundled demo model — knows only coloured shapes"

log = logging.getLogger(__name__)


@dataclass
class Engine:
    """A loaded model and its processor, plus what the UI should say about it."""

    model: torch.nn.Module
    processor: object
    name: str
    is_bundled: bool
    notice: str = ""

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def sam_image_size(self) -> int:
        return self.model.config.sam2_image_size


def default_device_dtype() -> tuple[str, torch.dtype]:
    """bfloat16 on a GPU (as the reference), float32 on CPU."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def load_engine(
    model: str | None = None, device: str | None = None, dtype: torch.dtype | None = None, fallback: bool | None = None
) -> Engine:
    """Load ``model`` (a path, a hub id or ``"bundled"``; ``None``: the released 3B).

    With ``fallback`` (the default when no model is named) a model that cannot be loaded gives way to the
    bundled one, and ``notice`` (also logged) says why; otherwise :class:`CheckpointError` is raised.
    """
    default_device, default_dtype = default_device_dtype()
    device, dtype = device or default_device, dtype or default_dtype
    name = DEFAULT_MODEL if model is None else model
    fallback = model is None if fallback is None else fallback
    try:
        return _load(name, device, dtype)
    except CheckpointError as err:
        if not fallback or name in BUNDLED_NAMES:
            raise
        log.warning("%s; falling back to the %s", err, BUNDLED_NOTICE)
        try:
            engine = _load("bundled", device, dtype)
        except CheckpointError as bundled_err:
            raise CheckpointError(f"{name} unavailable ({err}) and the bundled model too ({bundled_err})") from bundled_err
        engine.notice = f"{BUNDLED_NOTICE} ({name} unavailable: {err})"
        return engine


def _load(name: str, device: str, dtype: torch.dtype) -> Engine:
    bundled = name in BUNDLED_NAMES
    path = BUNDLED_MODEL if bundled else name
    model, processor = load_model(path, device=device, dtype=dtype)
    return Engine(model, processor, "bundled" if bundled else name, bundled, BUNDLED_NOTICE if bundled else "")
