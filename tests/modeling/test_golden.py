"""Fidelity: our model reproduces the reference implementation's outputs on the golden checkpoints.

For every golden case: a forward pass over the stored inputs reproduces the stored logits (max abs
difference <= 1e-4 in float32) and the masks of the input's ``<|seg|>`` tokens (>= 99.9 % of pixels equal);
greedy generation from the prompt is token-identical and yields the reference's masks.
"""
from __future__ import annotations

import functools

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import GOLDEN, golden_cases, requires_golden
from unipixel.loading import load_model

pytestmark = [requires_golden, pytest.mark.slow]
CASES = sorted(golden_cases())
MASK_AGREEMENT = 0.999


@functools.lru_cache(maxsize=None)
def golden_model(name: str):
    model, processor = load_model(GOLDEN / "checkpoints" / name)
    return model, processor


def reference_inputs(case: str) -> tuple[dict, int]:
    """The stored inputs in the reference's calling convention, and the prompt length."""
    raw = load_file(GOLDEN / "cases" / case / "inputs.safetensors")
    inputs = {k: raw[k] for k in ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
    inputs["frames"] = [raw["frames"]]
    inputs["frame_size"] = [tuple(raw["frame_size"].tolist())]
    if "refer_mask" in raw:
        inputs["refer_mask"] = [raw["refer_mask"]]
    n_points = len([k for k in raw if k.startswith("point_coords.")])
    if n_points:
        inputs["point_coords"] = [[raw[f"point_coords.{i}"] for i in range(n_points)]]
        inputs["point_labels"] = [[raw[f"point_labels.{i}"] for i in range(n_points)]]
        inputs["point_frames"] = [[raw["point_frames"]]]
    return inputs, int(raw["prompt_length"])


def assert_masks_agree(ours: list[torch.Tensor], expected: dict, prefix: str) -> None:
    keys = sorted((k for k in expected if k.startswith(prefix + ".")), key=lambda k: int(k.split(".")[1]))
    assert len(ours) == len(keys), f"{len(ours)} masks, reference has {len(keys)}"
    for mask, key in zip(ours, keys):
        assert mask.shape == expected[key].shape, key
        agreement = (mask == expected[key]).float().mean().item()
        assert agreement >= MASK_AGREEMENT, f"{key}: only {agreement:.5f} of pixels agree"


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case: str) -> None:
    info = golden_cases()[case]
    model, _ = golden_model(info["checkpoint"])
    inputs, _ = reference_inputs(case)
    expected = load_file(GOLDEN / "cases" / case / "expected.safetensors")
    with torch.inference_mode():
        out = model(**inputs)
    diff = (out.logits[0] - expected["logits"]).abs().max().item()
    assert diff <= 1e-4, f"logits differ by {diff}"
    assert len(out.masks) == info["n_forward_masks"]
    assert_masks_agree(out.masks, expected, "masks")


@pytest.mark.parametrize("case", CASES)
def test_greedy_generation_matches_reference(case: str) -> None:
    info = golden_cases()[case]
    model, _ = golden_model(info["checkpoint"])
    inputs, prompt_length = reference_inputs(case)
    inputs["input_ids"] = inputs["input_ids"][:, :prompt_length]
    inputs["attention_mask"] = inputs["attention_mask"][:, :prompt_length]
    expected = load_file(GOLDEN / "cases" / case / "expected.safetensors")
    out = model.generate(**inputs, max_new_tokens=16)
    generated = out.sequences[0, prompt_length:]
    assert generated.tolist() == expected["generated_ids"].tolist()
    assert len(out.masks) == info["n_generated_masks"]
    assert_masks_agree(out.masks, expected, "generated_masks")
