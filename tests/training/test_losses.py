"""The differentiable SAM 2 path decides multimask output as stock SAM 2 does, and the mask losses reward
the right mask."""
from __future__ import annotations

import pytest
import torch

from unipixel.modeling.presets import TINY_SAM2_YAML
from unipixel.modeling.sam2 import build_sam2
from unipixel.training.losses import FrameOutput, frame_losses, random_clicks, track_for_training


@pytest.fixture(scope="module")
def sam2():
    torch.manual_seed(0)
    return build_sam2("configs/unipixel_tiny", 128, TINY_SAM2_YAML).train()


def _targets(frames: int) -> torch.Tensor:
    targets = torch.zeros(2, frames, 128, 128, dtype=torch.bool)
    targets[0, :, 20:50, 30:70] = True
    targets[1, :, 80:120, 10:40] = True
    return targets


@pytest.mark.parametrize("in_sam, for_tracking", [(True, True), (False, False), (True, False)])
def test_candidates_follow_the_config(sam2, in_sam, for_tracking):
    sam2.multimask_output_in_sam, sam2.multimask_output_for_tracking = in_sam, for_tracking
    try:
        targets = _targets(frames=2)
        hidden = torch.randn(2, 2, sam2.hidden_dim)
        outputs, clicked = track_for_training(sam2, torch.randn(2, 3, 128, 128), hidden,
                                              random_clicks(targets, torch.Generator().manual_seed(0)))
    finally:
        sam2.multimask_output_in_sam = sam2.multimask_output_for_tracking = True
    first = 3 if in_sam else 1
    assert outputs[0].masks.shape[:2] == (2, first) and outputs[0].ious.shape == (2, first)
    assert clicked.masks.shape[1] == first  # one click: multimask exactly when the prompted frame has it
    assert outputs[1].masks.shape[1] == (3 if in_sam and for_tracking else 1)
    assert outputs[0].object_score.shape == (2, 1)


def test_frame_losses_reward_the_right_mask():
    target = _targets(frames=1)[:, 0]
    right = torch.where(target, 10.0, -10.0)[:, None]  # (B, 1, S, S): one candidate
    wrong = -right
    scores = torch.full((2, 1), 10.0)
    good = frame_losses(FrameOutput(right, torch.ones(2, 1), scores), target, 64)
    bad = frame_losses(FrameOutput(wrong, torch.ones(2, 1), scores), target, 64)
    assert good["dice"] < 0.05 < 0.9 < bad["dice"]
    assert good["focal"] < bad["focal"] and good["iou"] < bad["iou"]
    assert float(good["object"]) < 1e-3  # both objects present, both scored present
