"""Evaluate a UniPixel checkpoint on held-out shapes data through the real inference path.

    python -m unipixel.training.evaluate --model assets/unipixel-shapes [--n N] [--seed S] [--json PATH]

The checkpoint is loaded with ``load_model`` and every answer comes from ``generate`` with SAM 2 frames,
on a stream (``--seed``) the training never used. Reported:

* referring segmentation mIoU on images, and on videos over all frames (per-frame IoU, a frame where
  both masks are empty counts 1, averaged per video); a missing mask counts IoU 0;
* region captioning accuracy (colour and shape both right) for mask, point and box prompts;
* PixelQA with the reference protocol (spec §6.5): masks from a teacher-forced ``[id] <|seg|>`` answer to
  point/box prompts (mIoU), then the answer letter with those masks as ``<|mem|>`` prompts (accuracy);
* the share of generated ``<|seg|>`` tokens that gave a non-empty mask;
* the same referring and captioning metrics on out-of-distribution scenes (``style="ood"``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..loading import load_model
from ..processing.vision import decode_response
from . import shapes
from .data import encode

BARS = {
    "image_referring_miou": 0.85, "video_referring_miou": 0.75, "caption_accuracy_mask": 0.90,
    "caption_accuracy_point": 0.90, "caption_accuracy_box": 0.90, "pixelqa_answer_accuracy": 0.80,
    "seg_mask_rate": 1.0,
}
"""The acceptance bars of the bundled model on the held-out set."""

VIDEO_PROB = 0.35
MAX_NEW_TOKENS = 48


@dataclasses.dataclass
class Prediction:
    text: str
    masks: list[np.ndarray]


class Evaluator:
    """Runs a loaded model on shapes samples exactly as a user request would."""

    def __init__(self, model, processor) -> None:
        self.model, self.processor = model, processor
        self.image_size = model.config.sam2_image_size
        self.seg_tokens = 0
        self.seg_masks = 0

    @torch.inference_mode()
    def generate(self, sample: shapes.Sample, prefix: str = "", segment: bool = True) -> Prediction:
        """Answer the last user turn (``prefix`` continues the assistant turn); masks when ``segment``."""
        example = encode(self.processor, sample, self.image_size, prompt_only=True, prefix=prefix)
        kwargs = dict(frames=example.frames, frame_size=example.frame_size) if segment else {}
        out = self.model.generate(**example.inputs, max_new_tokens=MAX_NEW_TOKENS, return_dict_in_generate=True, **kwargs)
        new = out.sequences[0, example.inputs["input_ids"].shape[1] :]
        masks = [m.numpy() for m in out.masks] if segment else []
        if segment:
            self.seg_tokens += int((new == self.model.config.seg_token_id).sum())
            self.seg_masks += sum(bool(m.any()) for m in masks)
        return Prediction(decode_response(self.processor, new), masks)

    @torch.inference_mode()
    def teacher_forced_masks(self, sample: shapes.Sample) -> list[np.ndarray]:
        """Masks of the ``<|seg|>`` tokens of the sample's own answer (one forward pass, spec §6.5 step 1)."""
        example = encode(self.processor, sample, self.image_size)
        out = self.model(**example.inputs, frames=example.frames, frame_size=example.frame_size)
        return [m.numpy() for m in out.masks]


def iou(pred: np.ndarray | None, gt: np.ndarray) -> float:
    """Mean per-frame IoU of ``(T, H, W)`` masks (both empty = 1); ``None`` (no mask) scores 0."""
    if pred is None:
        return 0.0
    inter = (pred & gt).sum((1, 2))
    union = (pred | gt).sum((1, 2))
    return float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean())


def referring(ev: Evaluator, seed: int, n: int, video: bool, style: str = "train") -> float:
    """mIoU over the ``<|seg|>`` targets of referring-segmentation requests (one per sample or several)."""
    scores = []
    for i in range(n):
        sample = shapes.sample_at(seed, i, style=style, task="referring_seg", video=video)
        pred = ev.generate(sample)
        for k, gt in enumerate(sample.seg_masks()):
            scores.append(iou(pred.masks[k] if k < len(pred.masks) else None, gt))
    return float(np.mean(scores))


def caption_sample(seed: int, index: int, kind: str, style: str = "train") -> shapes.Sample:
    """A short-caption request about one object given by a ``kind`` prompt (mask, point or box) on the
    frame where it shows most."""
    rng = np.random.default_rng([seed, index, 7])
    scene = shapes.make_scene(rng, video=rng.random() < VIDEO_PROB, style=style)
    obj = int(rng.integers(len(scene.objects)))
    obj_id = int(rng.integers(16)) if rng.random() < 0.3 else 0
    frame = int(scene.masks[obj].sum((1, 2)).argmax())
    mask = scene.masks[obj, frame]
    question = shapes.SHORT_CAPTION_TEMPLATES[scene.medium][int(rng.integers(len(shapes.SHORT_CAPTION_TEMPLATES[scene.medium])))]
    if kind == "mask":
        prompt_mask = np.zeros_like(scene.masks[obj])
        prompt_mask[frame] = mask
        prompt = shapes.RegionPrompt(obj, obj_id, "mask", (frame,), mask=prompt_mask)
        text = shapes.mem_prefix([prompt_mask], [obj_id], scene.is_image) + question.format(f"[{obj_id}]")
        mem, ref = [prompt], []
    else:
        coords = shapes.point_prompt(mask) if kind == "point" else shapes.box_prompt(mask)
        prompt = shapes.RegionPrompt(obj, obj_id, kind, (frame,), coords)
        text = question.format(f"[{obj_id}] <|ref|>")
        mem, ref = [], [prompt]
    turn = shapes.Turn(text, shapes.caption(scene.objects[obj]))
    return shapes.Sample("caption", scene.frames, scene.masks, scene.objects, scene.is_image, [turn], mem, ref,
                         scene.background, style)


def captioning(ev: Evaluator, seed: int, n: int, kind: str, style: str = "train") -> float:
    """Share of captions naming the prompted object's colour and shape."""
    hits = []
    for i in range(n):
        sample = caption_sample(seed, i, kind, style)
        obj = sample.objects[(sample.mem_prompts or sample.ref_prompts)[0].obj]
        hits.append(shapes.caption_correct(ev.generate(sample, segment=False).text, obj))
    return float(np.mean(hits))


_LETTER = re.compile(r"\(([A-D])\)")


def pixelqa(ev: Evaluator, seed: int, n: int) -> tuple[float, float]:
    """PixelQA two-step protocol (spec §6.5): (mask mIoU of step 1, answer accuracy of step 2)."""
    ious, hits = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 8])
        scene = shapes.make_scene(rng, video=rng.random() < VIDEO_PROB)
        localize, answer = shapes.pixelqa_two_step(rng, scene)
        masks = ev.teacher_forced_masks(localize)
        predicted = {}
        for (obj,), gt, pred in zip(localize.seg_targets, localize.seg_masks(), masks):
            ious.append(iou(pred, gt))
            predicted[obj] = pred if pred.any() else np.ones_like(pred)
        prompts = [dataclasses.replace(p, mask=predicted[p.obj], frames=tuple(np.flatnonzero(predicted[p.obj].any((1, 2)))))
                   for p in answer.mem_prompts]
        old = shapes.mem_prefix([p.mask for p in answer.mem_prompts], [p.obj_id for p in answer.mem_prompts], scene.is_image)
        new = shapes.mem_prefix([p.mask for p in prompts], [p.obj_id for p in prompts], scene.is_image)
        turn = shapes.Turn(new + answer.turns[0].user[len(old):], answer.turns[0].assistant)
        reply = ev.generate(dataclasses.replace(answer, turns=[turn], mem_prompts=prompts), prefix="The best option is (",
                            segment=False).text
        words = reply.split()
        guess = words[0].strip("().") if words else ""
        hits.append(guess == _LETTER.search(answer.turns[0].assistant)[1])
    return float(np.mean(ious)), float(np.mean(hits))


def evaluate(model_dir: str | Path, n: int = 100, seed: int = shapes.HELDOUT_SEED, ood_n: int | None = None,
             log: Callable[[str], None] = print) -> dict[str, float]:
    """All metrics on ``n`` held-out samples per metric (``ood_n`` per OOD metric, default ``n // 2``)."""
    torch.manual_seed(0)
    model, processor = load_model(model_dir)
    ev = Evaluator(model, processor)
    ood_n = n // 2 if ood_n is None else ood_n
    metrics: dict[str, float] = {}
    jobs: list[tuple[str, Callable[[], float | tuple[float, float]]]] = [
        ("image_referring_miou", lambda: referring(ev, seed, n, video=False)),
        ("video_referring_miou", lambda: referring(ev, seed + 1, n, video=True)),
        *[(f"caption_accuracy_{kind}", lambda kind=kind: captioning(ev, seed + 2, n, kind)) for kind in ("mask", "point", "box")],
        (("pixelqa_mask_miou", "pixelqa_answer_accuracy"), lambda: pixelqa(ev, seed + 3, n)),
    ]
    if ood_n:
        jobs += [
            ("ood_image_referring_miou", lambda: referring(ev, seed + 4, ood_n, video=False, style="ood")),
            ("ood_video_referring_miou", lambda: referring(ev, seed + 5, ood_n, video=True, style="ood")),
            *[(f"ood_caption_accuracy_{kind}", lambda kind=kind: captioning(ev, seed + 6, ood_n, kind, style="ood"))
              for kind in ("mask", "point", "box")],
        ]
    for names, job in jobs:
        started = time.time()
        values = job()
        names, values = (names, values) if isinstance(names, tuple) else ((names,), (values,))
        for name, value in zip(names, values):
            metrics[name] = value
            log(f"{name:32s} {value:.4f}{_bar(name, value)}   ({time.time() - started:.0f} s)")
    metrics["seg_mask_rate"] = ev.seg_masks / max(ev.seg_tokens, 1)
    metrics["seg_tokens"] = ev.seg_tokens
    log(f"{'seg_mask_rate':32s} {metrics['seg_mask_rate']:.4f}{_bar('seg_mask_rate', metrics['seg_mask_rate'])}"
        f"   ({ev.seg_masks}/{ev.seg_tokens} generated <|seg|>)")
    return metrics


def _bar(name: str, value: float) -> str:
    if name not in BARS:
        return ""
    return f"  (bar {BARS[name]:.2f}: {'pass' if value >= BARS[name] else 'FAIL'})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--n", type=int, default=100, help="samples per metric")
    parser.add_argument("--ood-n", type=int, default=None, help="samples per out-of-distribution metric (default n/2)")
    parser.add_argument("--seed", type=int, default=shapes.HELDOUT_SEED, help="held-out stream seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    metrics = evaluate(args.model, args.n, args.seed, args.ood_n)
    if args.json:
        recipe = Path(args.model) / "training_args.json"
        record = {
            "step": json.loads(recipe.read_text())["step"] if recipe.exists() else None,
            "samples_per_metric": args.n,
            "seed": args.seed,
            "metrics": {name: round(value, 4) for name, value in metrics.items()},
            "seconds": round(time.time() - started, 1),
            "bars": BARS,
            "meets_bars": all(metrics[name] >= bar for name, bar in BARS.items()),
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
