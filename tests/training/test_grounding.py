"""The grounding term: labels name the right visual tokens, the loss rewards pointing at them, and the head
can learn the match."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unipixel.training import shapes
from unipixel.training.data import grounding_labels, token_owners
from unipixel.training.grounding import GroundingHead, grounding_loss


def _scene_sample() -> shapes.Sample:
    rng = np.random.default_rng(5)
    for _ in range(50):
        sample = shapes.task_referring_seg(rng, shapes.make_scene(rng, num_objects=3))
        if sample is not None:
            return sample
    raise AssertionError("no referring sample")


def test_labels_mark_the_tokens_of_each_seg_objects():
    sample = _scene_sample()
    h, w = sample.frames.shape[1:3]
    grid = torch.tensor([[1, 2 * (-(-h // 28)), 2 * (-(-w // 28))]])  # a cell grid covering the frame
    labels = grounding_labels(sample, grid)
    owners = token_owners(sample.masks, grid, 0.1)
    assert labels.shape == (len(sample.seg_targets), owners.shape[0])
    for row, objects in zip(labels, sample.seg_targets):
        assert row.any()
        assert set(owners[row].tolist()) <= set(objects)  # only the seg's own objects
        others = [j for j in range(len(sample.objects)) if j not in objects]
        assert not any(row[owners == j].any() for j in others)


def test_loss_is_low_when_the_scores_point_at_the_targets():
    targets = torch.tensor([[True, True, False, False, False], [False, False, False, False, False]])
    right = torch.tensor([[9.0, 9.0, 0.0, 0.0, 0.0], [0.0] * 5])
    wrong = torch.tensor([[0.0, 0.0, 9.0, 9.0, 9.0], [0.0] * 5])
    assert float(grounding_loss(right, targets)) < 1e-3
    assert float(grounding_loss(wrong, targets)) > 8.0  # the target-less row is skipped, not averaged in
    uniform = grounding_loss(torch.zeros(2, 5), targets)
    assert float(uniform) == pytest.approx(np.log(5 / 2))
    none = grounding_loss(torch.zeros(1, 5, requires_grad=True), torch.zeros(1, 5, dtype=torch.bool))
    assert float(none.detach()) == 0.0 and none.requires_grad  # still part of the graph


def test_head_learns_to_pick_the_matching_token():
    """A few steps on separable states: the head finds the visual token that equals the query state."""
    torch.manual_seed(0)
    head = GroundingHead(16, dim=8)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-2)
    for _ in range(150):
        visual = torch.randn(6, 16)
        pick = torch.randint(6, (2,))
        states = visual[pick] + 0.1 * torch.randn(2, 16)
        targets = torch.nn.functional.one_hot(pick, 6).bool()
        loss = grounding_loss(head(states, visual), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    visual = torch.randn(6, 16)
    assert (head(visual[:3], visual).argmax(-1) == torch.arange(3)).all()
