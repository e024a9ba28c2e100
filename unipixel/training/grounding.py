"""A training-only grounding probe: makes the state that prompts SAM 2 carry which object it stands for.

Measured on the step-10000 shapes model: a linear probe on the pre-norm states that predict ``<|seg|>``
read the target's colour at chance (0.25 for six colours), and SAM 2 segmented whichever object was most
salient (image referring mIoU 0.91 with one object, 0.21 when the target's colour was unique among
several). The mask losses alone reach the LLM only through SAM 2's decoder, which had learned to ignore
its uninformative prompt. :class:`GroundingHead` scores every visual token against each ``<|seg|>`` state
with a bilinear form; :func:`grounding_loss` asks for the mass on the tokens of the ``<|seg|>``'s own
objects. The head is never saved into the checkpoint (the released model class has no such part); it
lives beside it for ``--resume``.

Experimental, off by default (``train --grounding-weight``): on top of the step-10000 checkpoint, 4,000
single-conversation steps and 550 steps of 15 left the held-out grounding at chance; see the model card.
"""
from __future__ import annotations

import torch
from torch import nn

HEAD_FILE = "grounding_head.pt"
"""The head's weights beside a checkpoint being trained (``torch.save``; loaded with ``weights_only``)."""


class GroundingHead(nn.Module):
    """Bilinear scores between ``<|seg|>`` states and visual-token states (both pre-norm LLM states)."""

    def __init__(self, hidden: int, dim: int = 64) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(hidden)
        self.query = nn.Linear(hidden, dim)
        self.key = nn.Linear(hidden, dim)

    def forward(self, states: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, V)`` for ``states`` ``(n, D)`` against ``visual`` ``(V, D)``."""
        query, key = self.query(self.norm(states.float())), self.key(self.norm(visual.float()))
        return query @ key.T / query.shape[-1] ** 0.5


def grounding_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How little of its softmax mass each ``<|seg|>`` puts on the visual tokens of its own objects.

    ``scores`` ``(n, V)`` from :class:`GroundingHead`; ``targets`` ``(n, V)`` bool from
    :func:`data.grounding_labels`; rows without a target token are skipped (zero when none has one).
    """
    has = targets.any(1)
    if not has.any():
        return scores.sum() * 0.0
    inside = scores[has].masked_fill(~targets[has], float("-inf"))
    return (scores[has].logsumexp(-1) - inside.logsumexp(-1)).mean()
