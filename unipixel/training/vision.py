"""Stage 0 of the recipe: a fresh vision tower that knows colours and shapes, for ``train --vision-from``.

    python -m unipixel.training.vision --init CKPT --out DIR [--steps N] [--batch B] [--loaders W]

Trained end to end, the small vision tower learns colour within a few hundred steps but never shape (a probe
on the tokens of the 10,000-step checkpoint reads shape at 0.24, majority 0.21), and once trained that way it
stays blind: taught shape directly it is still at 0.33 after 40,000 crops. Here a freshly drawn tower learns
to name the colour and the shape of the object under each merged token (two linear heads, dropped
afterwards) on *crops*: small scenes (84-196 px, objects of the radii the tower meets in processed full
scenes) given to it unresized, many per step, packed as Qwen2.5-VL packs videos. Crops cost a tenth of a full
scene and carry the same objects, so shape comes within minutes on a CPU. The printed accuracy is measured
on held-out full scenes through the real processor. The output is ``--init`` with its tower replaced (its
other weights are not used by ``train --vision-from``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..loading import load_model, save_checkpoint
from ..processing.vision import (
    VIDEO_PLACEHOLDER,
    build_vision_inputs,
    pad_to_temporal_patch,
)
from . import shapes
from .data import IGNORE, token_owners
from .recipe import record_stage
from .schedule import learning_rate
from .train import seed_everything

VISION_SEED = 7
"""Scene stream of this stage (distinct from the conversation streams of ``train`` and of the evaluation)."""


class SceneTokens(IterableDataset):
    """Endless shapes scenes as vision-tower inputs with per-token colour and shape labels (``IGNORE``: nothing).

    ``crops``: small "crop" scenes at their own size (training); otherwise full "train" scenes resized by the
    processor exactly as at inference (evaluation).
    """

    def __init__(self, processor, seed: int, crops: bool = True, video_prob: float = 0.0, max_frames: int = 8) -> None:
        self.processor, self.seed, self.crops = processor, seed, crops
        self.video_prob, self.max_frames = video_prob, max_frames

    def item(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scene ``index``: ``(patches, grid_thw (1, 3), labels (2, tokens))``."""
        rng = np.random.default_rng([self.seed, index, 3])
        video = rng.random() < self.video_prob
        frames = int(rng.integers(4, self.max_frames + 1)) if video else None
        scene = shapes.make_scene(rng, video, "crop" if self.crops else "train", num_frames=frames)
        images = [Image.fromarray(f) for f in scene.frames]
        if self.crops:
            inputs = self.processor.video_processor(
                videos=[pad_to_temporal_patch(images)], do_resize=False, do_sample_frames=False,
                cap_pixels_per_frame=False, return_tensors="pt",
            )
        else:
            inputs = build_vision_inputs(self.processor, images, VIDEO_PLACEHOLDER)
        grid = inputs["video_grid_thw"]
        table = torch.tensor(
            [[shapes.COLOURS_L.index(o.colour), shapes.SHAPES.index(o.shape)] for o in scene.objects] + [[IGNORE, IGNORE]]
        )
        return inputs["pixel_values_videos"], grid, table[token_owners(scene.masks, grid)].T

    def __iter__(self):
        worker = get_worker_info()
        index, stride = (worker.id, worker.num_workers) if worker else (0, 1)
        while True:
            yield self.item(index)
            index += stride


def pack(items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    """Scenes as one packed vision sequence (the tower attends within each scene only)."""
    patches, grids, labels = zip(*items)
    return torch.cat(patches), torch.cat(grids), torch.cat(labels, dim=1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Colour and shape accuracy over the labelled tokens."""
    keep = labels[0] != IGNORE
    colour = (logits[keep, : len(shapes.COLOURS_L)].argmax(-1) == labels[0, keep]).float().mean()
    shape = (logits[keep, len(shapes.COLOURS_L):].argmax(-1) == labels[1, keep]).float().mean()
    return float(colour), float(shape)


def train_vision(args: argparse.Namespace) -> Path:
    """Redraw ``--init``'s vision tower, train it on token labels and save the checkpoint with it to ``--out``."""
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load_model(args.init)
    visual = model.model.visual
    visual.apply(model._init_weights)  # transformers' initialisation, as a fresh model gets it
    visual.to(device).train()
    classes = len(shapes.COLOURS_L) + len(shapes.SHAPES)
    head = torch.nn.Linear(model.config.vision_config.out_hidden_size, classes).to(device)
    norm = torch.nn.LayerNorm(model.config.vision_config.out_hidden_size, elementwise_affine=False)
    params = list(visual.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    loader = DataLoader(
        SceneTokens(processor, VISION_SEED, video_prob=args.video_prob), batch_size=args.batch, collate_fn=pack,
        num_workers=args.loaders, persistent_workers=args.loaders > 0,
    )
    held_out = pack([SceneTokens(processor, VISION_SEED + 1, crops=False).item(i) for i in range(args.eval_scenes)])
    started, scores, step = time.time(), (0.0, 0.0), 0

    def evaluate() -> tuple[float, float]:
        visual.eval()
        with torch.no_grad():
            tokens = visual(held_out[0].to(device), grid_thw=held_out[1].to(device)).pooler_output
            result = accuracy(head(norm(tokens)).cpu(), held_out[2])
        visual.train()
        return result

    for step, (patches, grids, labels) in enumerate(loader):
        if step == args.steps or (args.time_limit and time.time() - started > args.time_limit):
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        logits = head(norm(visual(patches.to(device), grid_thw=grids.to(device)).pooler_output))
        labels = labels.to(device)
        loss = sum(
            torch.nn.functional.cross_entropy(part, target, ignore_index=IGNORE)
            for part, target in zip(logits.split([len(shapes.COLOURS_L), len(shapes.SHAPES)], -1), labels)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if (step + 1) % args.log_every == 0:
            scores = evaluate()
            print(f"step={step + 1} elapsed_s={time.time() - started:.0f} loss={float(loss.detach()):.4f} "
                  f"held_out_colour={scores[0]:.3f} held_out_shape={scores[1]:.3f}", flush=True)
    scores = evaluate()
    print(f"vision stage done: {step} steps, held-out colour {scores[0]:.3f}, shape {scores[1]:.3f}", flush=True)
    model.model.visual.to("cpu", torch.float32)
    out = Path(args.out)
    save_checkpoint(model, processor, out)
    record_stage(args.init, out, "vision", {
        "args": vars(args), "steps": step, "scenes": step * args.batch, "seconds": round(time.time() - started),
        "device": device, "held_out_colour": round(scores[0], 4), "held_out_shape": round(scores[1], 4),
    })
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True, help="checkpoint whose configuration and processor are used")
    parser.add_argument("--out", required=True, help="where the checkpoint with the trained tower is written")
    parser.add_argument("--steps", type=int, default=2000, help="optimiser steps (the cosine schedule's length)")
    parser.add_argument("--batch", type=int, default=32, help="crops per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    parser.add_argument("--video-prob", type=float, default=0.0, help="share of clips among the crops")
    parser.add_argument("--loaders", type=int, default=0, help="processes generating crops (0: in the main one)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--eval-scenes", type=int, default=60, help="held-out full scenes of the printed accuracy")
    parser.add_argument("--log-every", type=int, default=100, help="steps between held-out evaluations")
    parser.add_argument("--time-limit", type=float, help="seconds after which training stops early")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tower's and the heads' initialisation")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    train_vision(parse_args(argv))


if __name__ == "__main__":
    main()
