"""The bundled shapes model still does what its model card says (short held-out evaluation, real inference path)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from unipixel.training.evaluate import evaluate

MODEL = Path(__file__).resolve().parents[2] / "assets" / "unipixel-shapes"

# a little below the acceptance bars (evaluate.BARS): a few dozen samples per metric are noisy
THRESHOLDS = {
    "image_referring_miou": 0.80,
    "video_referring_miou": 0.70,
    "caption_accuracy_mask": 0.85,
    "caption_accuracy_point": 0.85,
    "caption_accuracy_box": 0.85,
    "pixelqa_answer_accuracy": 0.70,
    "seg_mask_rate": 0.95,
}


def _recorded() -> dict:
    record = MODEL / "evaluation.json"
    return json.loads(record.read_text()) if record.exists() else {}


@pytest.mark.slow
@pytest.mark.skipif(not (MODEL / "model.safetensors").exists(), reason="bundled model not found")
@pytest.mark.xfail(
    not _recorded().get("meets_bars", False), strict=True,
    reason="issue 4 open: the shipped checkpoint is undertrained and below its bars (see its evaluation.json)",
)
def test_bundled_model_short_evaluation():
    metrics = evaluate(MODEL, n=20, ood_n=0, log=lambda line: None)
    failed = {name: round(metrics[name], 3) for name, bar in THRESHOLDS.items() if metrics[name] < bar}
    assert not failed, f"below the thresholds: {failed}"
