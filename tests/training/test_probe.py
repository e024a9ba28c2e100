"""The diagnostic probes: a linear probe finds what is there and not what is not, targets are sorted by
how they can be told apart, and a run on the bundled model reads the colour its visual tokens carry."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unipixel.loading import load_model
from unipixel.training import shapes
from unipixel.training.probe import Collected, collect, collect_layers, difficulty, linear_probe, report

MODEL = Path(__file__).resolve().parents[2] / "assets" / "unipixel-shapes"


def test_linear_probe_reads_linear_information_only():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(4, (800,), generator=generator)
    signal = torch.nn.functional.one_hot(labels, 4).float() @ torch.randn(4, 16, generator=generator)
    noise = torch.randn(800, 16, generator=generator)
    assert linear_probe(signal + 0.3 * noise, labels).accuracy > 0.95
    blind = linear_probe(noise, labels)
    assert blind.accuracy < 0.4 and blind.samples == 200
    assert 0.15 < blind.majority < 0.35


def _object(colour: str, shape: str) -> shapes.ObjectInfo:
    return shapes.ObjectInfo(colour, shape, "small", "still", 0.0, 10.0, 300, shapes.COLOURS[colour],
                             np.zeros((1, 2), int))


def test_difficulty_names_what_singles_out_the_target():
    def sample(*objects):
        return shapes.Sample("referring_seg", np.zeros((1, 8, 8, 3), np.uint8), np.zeros((len(objects), 1, 8, 8), bool),
                             list(objects), True, [])

    assert difficulty(sample(_object("red", "star")), 0) == "only object"
    assert difficulty(sample(_object("red", "star"), _object("blue", "star")), 0) == "unique colour"
    assert difficulty(sample(_object("red", "star"), _object("red", "circle")), 0) == "unique shape"
    assert difficulty(sample(_object("red", "star"), _object("red", "circle"), _object("blue", "star")), 0) == "neither"


@pytest.mark.skipif(not (MODEL / "model.safetensors").exists(), reason="bundled model not found")
def test_bundled_visual_tokens_carry_colour():
    model, processor = load_model(MODEL)
    collected = collect(model, processor, n=16)
    lines: list[str] = []
    results = report(collected, log=lines.append)
    assert len(lines) >= 6 and any(line.startswith("mIoU, target:") for line in lines)
    assert results["visual token -> colour"] > 0.9  # the model card's claim (0.99 at n=300)
    assert len(collected.zero_prompt_agreement) >= len(collected.seg) > 0
    assert all(0.0 <= value <= 1.0 for value in results.values())


@pytest.mark.skipif(not (MODEL / "model.safetensors").exists(), reason="bundled model not found")
def test_bundled_llm_works_out_where_visual_tokens_are():
    """The tower's tokens carry no position on a flat background; the LLM's layers add it (the card's "Why")."""
    model, processor = load_model(MODEL)
    collected = Collected()
    collect_layers(model, processor, n=32, out=collected)
    lines: list[str] = []
    results = report(collected, log=lines.append)
    layers = len(model.model.language_model.layers)
    assert sum(line.startswith("LLM layer") for line in lines) == layers + 1
    assert len(collected.layer_ref_labels) == 32 and collected.layer_visual_labels[0].shape == (12, 2)
    assert f"LLM layer {layers}: token before it -> same" in results
    assert results[f"LLM layer {layers}: row third"] > results["LLM layer 0: row third"] + 0.15
