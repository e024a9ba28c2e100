"""3D m-RoPE position ids as the released UniPixel models were trained with (transformers 4.53.3 rule).

transformers 5.x changed where the text after a video starts (``start + max(h, w)`` instead of
``start + 1 + max(2(t-1), h-1, w-1)``) and needs ``mm_token_type_ids``; the checkpoints expect the old rule,
so we compute positions ourselves from ``input_ids`` and the vision grids. Pure index arithmetic, cheap
enough to recompute at every generation step, which keeps the model free of cached ``rope_deltas``.
"""
from __future__ import annotations

import torch


def mrope_position_ids(
    input_ids: torch.Tensor,
    *,
    vision_start_token_id: int,
    image_token_id: int,
    video_token_id: int,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | list[float] | None = None,
    spatial_merge_size: int = 2,
    tokens_per_second: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``(3, B, L)`` (temporal, height, width) and per-sample deltas ``(B, 1)``.

    Vision blocks are found by the token after each ``<|vision_start|>``; images and videos consume their
    grids in order. Text tokens advance all three axes by one; a vision block's tokens get
    ``(s + tau * int(sec_per_grid) * tokens_per_second, s + row, s + col)``, and the text after it starts
    at one past the block's largest coordinate. ``delta = max position + 1 - L`` continues decoding.
    """
    batch, length = input_ids.shape
    positions = torch.empty(3, batch, length, dtype=torch.long)
    deltas = torch.empty(batch, 1, dtype=torch.long)
    image_grids = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
    video_grids = iter(video_grid_thw.tolist() if video_grid_thw is not None else [])
    video_seconds = iter(torch.as_tensor(second_per_grid_ts).tolist() if second_per_grid_ts is not None else [])
    for b in range(batch):
        ids = input_ids[b].tolist()
        chunks: list[torch.Tensor] = []
        cursor, next_pos = 0, 0
        starts = [i for i, tok in enumerate(ids[:-1]) if tok == vision_start_token_id]
        for start in starts:
            kind = ids[start + 1]
            if kind == image_token_id:
                t, h, w = next(image_grids)
                step = 0
            elif kind == video_token_id:
                t, h, w = next(video_grids)
                step = int(next(video_seconds, 1.0)) * tokens_per_second
            else:
                continue
            h, w = h // spatial_merge_size, w // spatial_merge_size
            text_len = start + 1 - cursor
            chunks.append(torch.arange(text_len).expand(3, -1) + next_pos)
            base = next_pos + text_len
            grid_t = (torch.arange(t) * step).view(-1, 1).expand(-1, h * w).flatten()
            grid_h = torch.arange(h).view(1, -1, 1).expand(t, -1, w).flatten()
            grid_w = torch.arange(w).view(1, 1, -1).expand(t, h, -1).flatten()
            block = torch.stack([grid_t, grid_h, grid_w]) + base
            chunks.append(block)
            cursor = start + 1 + t * h * w
            next_pos = int(block.max()) + 1
        chunks.append(torch.arange(length - cursor).expand(3, -1) + next_pos)
        row = torch.cat(chunks, dim=1)
        positions[:, b] = row
        deltas[b] = int(row.max()) + 1 - length
    return positions.to(input_ids.device), deltas.to(input_ids.device)
