"""Stage 0 of a recipe: SAM 2 alone learns to follow clicks, with one mask per prompt.

    python -m unipixel.training.clicks --init CKPT --out DIR [--fresh] [--steps N]

SAM 2 of the shipped shapes model ignores its prompts (``probe.py``): with multimask output its three
candidates learned to enumerate objects, which the "best candidate" loss rewards without any use of the
prompt, and the predicted-IoU pick does not look at the prompt either. With one mask per prompt the same
training follows the click. This stage turns multimask output off (stock ``multimask_output_in_sam`` /
``multimask_output_for_tracking``, written into the output's ``sam2_config.yaml``), optionally redraws SAM 2
(``--fresh``), and trains it on one random click per object of shapes scenes; every other weight is kept.
The printed held-out score is the IoU with the clicked object when clicking its middle pixel.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from ..loading import load_model, save_checkpoint
from ..modeling.sam2 import UniPixelSAM2, build_sam2
from ..processing.vision import sam2_frames
from . import shapes
from .data import resize_masks
from .losses import FrameOutput, frame_losses, random_clicks, sam_heads

CLICK_SEED, HELD_OUT_SEED = 5, 77
"""Scene streams of this stage (training, held-out)."""


def click_scene(seed: int, index: int, objects: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``index`` of stream ``seed`` with ``objects`` shapes: SAM 2 input ``(1, 3, S, S)`` and the
    non-empty object masks ``(N, S, S)``."""
    scene = shapes.make_scene(np.random.default_rng([seed, index]), False, num_objects=objects)
    masks = resize_masks(scene.masks[:, 0], size)
    return sam2_frames(scene.frames, size), masks[masks.flatten(1).any(1)]


def frame_features(sam2: UniPixelSAM2, frames: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Image features of one prompted frame without memory, as stock SAM 2 builds them."""
    backbone = sam2.forward_image(frames)
    _, features, _, sizes = sam2._prepare_backbone_features(backbone)
    pix_feat = (features[-1] + sam2.no_mem_embed).permute(1, 2, 0).view(1, -1, *sizes[-1])
    high_res = [x.permute(1, 2, 0).reshape(1, x.shape[2], *s) for x, s in zip(features[:-1], sizes[:-1])]
    return pix_feat, high_res


def click_outputs(sam2: UniPixelSAM2, frames: torch.Tensor, clicks: tuple[torch.Tensor, torch.Tensor]) -> FrameOutput:
    """SAM 2's heads for one click per object ``(N, 1, 2)`` on ``frames`` ``(1, 3, S, S)``."""
    pix_feat, high_res = frame_features(sam2, frames)
    n = len(clicks[0])
    masks, ious, _, scores = sam_heads(sam2, pix_feat.expand(n, -1, -1, -1), [x.expand(n, -1, -1, -1) for x in high_res],
                                    None, clicks)
    return FrameOutput(masks, ious, scores)


@torch.no_grad()
def held_out_click_iou(sam2: UniPixelSAM2, scenes: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean IoU between each object and SAM 2's chosen mask for a click on the object's middle pixel."""
    sam2.eval()
    scores = []
    for frames, masks in scenes:
        coords = []
        for mask in masks:
            ys, xs = torch.nonzero(mask, as_tuple=True)
            coords.append([[float(xs[len(xs) // 2]), float(ys[len(ys) // 2])]])
        out = click_outputs(sam2, frames, (torch.tensor(coords), torch.ones(len(coords), 1, dtype=torch.int32)))
        chosen = out.masks[torch.arange(len(masks)), out.ious.argmax(-1)]
        chosen = torch.nn.functional.interpolate(chosen[:, None], size=masks.shape[-2:], mode="bilinear")[:, 0] > 0
        scores += ((chosen & masks).flatten(1).sum(1) / (chosen | masks).flatten(1).sum(1).clamp(min=1)).tolist()
    sam2.train()
    return float(np.mean(scores))


def one_mask_config(path: Path) -> None:
    """Turn stock SAM 2's multimask output off in the ``sam2_config.yaml`` at ``path``."""
    config = OmegaConf.load(path)
    config.model.multimask_output_in_sam = False
    config.model.multimask_output_for_tracking = False
    path.write_text(OmegaConf.to_yaml(config))


def train_clicks(args: argparse.Namespace) -> Path:
    """Train ``--init``'s SAM 2 on clicks (one mask per prompt) and save the checkpoint to ``--out``."""
    torch.manual_seed(args.seed)
    model, processor = load_model(args.init)
    size = model.config.sam2_image_size
    if args.fresh:
        model.sam2.load_state_dict(build_sam2(model.config.sam2_config, size, model.sam2_yaml).state_dict())
    sam2 = model.sam2.train()
    sam2.multimask_output_in_sam = sam2.multimask_output_for_tracking = False
    optimizer = torch.optim.AdamW(sam2.parameters(), lr=args.lr, weight_decay=0.01)
    held_out = [click_scene(HELD_OUT_SEED, i, args.objects, size) for i in range(args.eval_scenes)]
    generator = torch.Generator().manual_seed(args.seed)
    started = time.time()
    for step in range(args.steps):
        frames, masks = click_scene(CLICK_SEED, step, args.objects, size)
        out = click_outputs(sam2, frames, random_clicks(masks[:, None], generator))
        loss = sum(frame_losses(out, masks, args.loss_size).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam2.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % args.log_every == 0:
            print(f"step={step + 1} elapsed_s={time.time() - started:.0f} loss={float(loss.detach()):.4f} "
                  f"held_out_click_iou={held_out_click_iou(sam2, held_out):.3f}", flush=True)
    out_dir = Path(args.out)
    save_checkpoint(model.eval(), processor, out_dir)
    one_mask_config(out_dir / "sam2_config.yaml")
    return out_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True, help="checkpoint whose SAM 2 is trained")
    parser.add_argument("--out", required=True, help="where the checkpoint is written")
    parser.add_argument("--fresh", action="store_true", help="redraw SAM 2's weights first")
    parser.add_argument("--steps", type=int, default=4000, help="scenes (one optimiser step each)")
    parser.add_argument("--objects", type=int, default=3, help="shapes per scene")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (constant)")
    parser.add_argument("--loss-size", type=int, default=128, help="resolution of the mask losses")
    parser.add_argument("--eval-scenes", type=int, default=20, help="held-out scenes of the printed score")
    parser.add_argument("--log-every", type=int, default=500, help="steps between held-out evaluations")
    parser.add_argument("--seed", type=int, default=0, help="seed of SAM 2's redraw and of the clicks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    train_clicks(parse_args(argv))


if __name__ == "__main__":
    main()
