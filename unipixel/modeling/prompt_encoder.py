"""Encoders of the user's visual prompts: ``<|ref|>`` (point/box + frame) and ``<|mem|>`` (pooled mask).

The layers live on the top-level model under the names the checkpoints use (``ref_encoder``,
``ref_proj_single``, ``ref_proj_double``, ``tem_pe``, ``tem_emb``, ``tem_proj``, ``ref_proj``, ``msk_proj``);
this module holds the one layer with no stock equivalent and the two embedding procedures.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class TemporalPositionEncoding(nn.Module):
    """Random-Fourier encoding of a frame position in ``[0, F-1]`` (the ``tem_pe`` layer).

    One persistent Gaussian buffer ``(1, num_pos_feats)``; the encoding is ``[sin(z), cos(z)]`` with
    ``z = 2*pi*(2*f/(F-1) - 1)*g``, computed in float32 and cast to ``dtype``.
    """

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(1, num_pos_feats))

    def forward(self, frames: torch.Tensor, num_frames: int, dtype: torch.dtype) -> torch.Tensor:
        """Encode frame indices ``(n,)`` of a clip of ``num_frames`` frames into ``(n, 2*num_pos_feats)``."""
        position = frames.to(torch.float32) / (num_frames - 1)
        centred = (2 * position - 1).unsqueeze(-1)
        z = 2 * math.pi * (centred @ self.positional_encoding_gaussian_matrix.to(torch.float32))
        return torch.cat([torch.sin(z), torch.cos(z)], dim=-1).to(dtype)


def pool_mask_tokens(
    merger_inputs: torch.Tensor, refer_masks: list[torch.Tensor], video_grid_thw: torch.Tensor, merge: int = 2
) -> torch.Tensor:
    """Average the vision-merger inputs under each object's mask, one row per (object, non-empty slot).

    ``merger_inputs`` rows are in the vision tower's window order, and the reference indexes them with the
    raster-flattened mask (spec §1.5.2). The model was trained with that pairing, so we keep it.
    Rows are object-major, then temporal slot, matching the ``<|mem|>`` tokens in the prompt.
    """
    pooled: list[torch.Tensor] = []
    base = 0
    for (t, h, w), mask in zip(video_grid_thw.tolist(), refer_masks):
        per_slot = (h // merge) * (w // merge)
        if mask.ndim != 4 or mask.shape[0] != t or tuple(mask.shape[2:]) != (h // merge, w // merge):
            raise ValueError(f"refer_mask of shape {tuple(mask.shape)} does not fit the video grid {(t, h, w)}")
        block = merger_inputs[base : base + t * per_slot].view(t, per_slot, -1)
        flat = mask.to(block.device).flatten(2)  # (t, n_obj, per_slot)
        for obj in range(flat.shape[1]):
            for slot in range(t):
                selected = flat[slot, obj]
                if selected.any():
                    pooled.append(block[slot][selected].mean(dim=0))
        base += t * per_slot
    if not pooled:
        return merger_inputs.new_zeros(0, merger_inputs.shape[-1])
    return torch.stack(pooled)
