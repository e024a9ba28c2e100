"""Stage 1 of the recipe: SAM 2 alone learns to segment what a code names.

    python -m unipixel.training.codes --init CKPT --out DIR [--steps N]

Trained end to end from the start, SAM 2 learns to ignore its prompt (``probe.py``): while the LLM's
``<|seg|>`` states name nothing, segmenting the most salient object is the best it can do, and once it
ignores the prompt the mask losses send the LLM no gradient. This stage breaks that loop from the SAM 2
side. A *code* stands in for ``seg_head``'s output: its two prompt tokens are a learned colour embedding
(six colours or "any") and a learned shape embedding (four shapes or "any"), and the target is the union
of the objects it matches, on every tracked frame. SAM 2 is redrawn (the init's architecture, with stock
SAM 2's multimask output turned off in the saved ``sam2_config.yaml``: a shapes target is never ambiguous,
and with three candidates SAM 2 learned to enumerate objects instead of reading the prompt) and trained
on codes of shapes images (``--video-prob``: clips too, tracked with memory exactly as in ``train``;
``--click-weight``: a click task sharing the features). Every other weight of ``--init`` is kept. With
``--book`` the code book of an earlier run is kept frozen, so a new SAM 2 can serve an LLM that already
produces those codes. The code book is saved beside the checkpoint (``codes.pt``, training only):
``train --codes`` then teaches ``seg_head`` to produce the code of the words an answer names before each
``<|seg|>``.
The printed held-out scores are the IoU of code prompts and of clicks on an object's middle pixel.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from ..loading import SAM2_YAML as SAM2_CONFIG
from ..loading import load_model, save_checkpoint
from ..modeling.sam2 import UniPixelSAM2, build_sam2
from ..processing.vision import sam2_frames
from . import shapes
from .data import resize_masks
from .losses import frame_losses, mask_losses, sam_heads, track_for_training
from .recipe import record_stage
from .schedule import learning_rate

CODE_SEED, HELD_OUT_SEED = 5, 77
"""Scene streams of this stage (training, held-out)."""
CODES_FILE = "codes.pt"
WARMUP = 200


class CodeBook(nn.Module):
    """Colour and shape embeddings (the last row of each: "any") giving two SAM 2 prompt tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.colour = nn.Embedding(len(shapes.COLOURS_L) + 1, dim)
        self.shape = nn.Embedding(len(shapes.SHAPES) + 1, dim)
        for table in (self.colour, self.shape):
            nn.init.normal_(table.weight)  # unit scale, like SAM 2's own prompt embeddings

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, 2)`` (colour, shape) indices -> ``(B, 2, dim)`` prompt tokens."""
        return torch.stack([self.colour(codes[:, 0]), self.shape(codes[:, 1])], dim=1)


def load_codebook(path: str | Path) -> CodeBook:
    """A saved code book (``torch.load`` with ``weights_only``)."""
    state = torch.load(path, weights_only=True)
    book = CodeBook(state["colour.weight"].shape[1])
    book.load_state_dict(state)
    return book


def code_scene(
    seed: int, index: int, size: int, video_prob: float = 0.3, max_frames: int = 8, sam_frames: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scene ``index`` of stream ``seed`` with one code per object: SAM 2 frames ``(T, 3, S, S)``, the codes'
    targets ``(B, T, S, S)``, the codes ``(B, 2)`` and each prompt's own object ``(B, T, S, S)`` (for clicks).

    A code names its object's colour and shape (half of them), or only one of the two (the other "any");
    its target is every object matching it."""
    rng = np.random.default_rng([seed, index])
    on = torch.zeros(0, dtype=torch.bool)
    while not on.any():  # a clip may start with every object still outside the frame
        video = rng.random() < video_prob
        scene = shapes.make_scene(rng, video, num_frames=int(rng.integers(4, max_frames + 1)) if video else None)
        masks = resize_masks(scene.masks[:, :sam_frames].reshape(-1, *scene.masks.shape[2:]), size)
        masks = masks.view(len(scene.objects), -1, size, size)
        on = masks[:, 0].flatten(1).any(1)  # prompts are given on frame 0
    colours = torch.tensor([shapes.COLOURS_L.index(o.colour) for o in scene.objects])
    kinds = torch.tensor([shapes.SHAPES.index(o.shape) for o in scene.objects])
    codes, targets = [], []
    for k in torch.nonzero(on)[:, 0].tolist():
        form = rng.random()
        code = [int(colours[k]) if form < 0.75 else len(shapes.COLOURS_L),
                int(kinds[k]) if form < 0.5 or form >= 0.75 else len(shapes.SHAPES)]
        match = ((colours == code[0]) | (code[0] == len(shapes.COLOURS_L))) & (
            (kinds == code[1]) | (code[1] == len(shapes.SHAPES)))
        codes.append(code)
        targets.append(masks[match].any(0))
    return sam2_frames(scene.frames[:sam_frames], size), torch.stack(targets), torch.tensor(codes), masks[on]


def code_losses(
    sam2: UniPixelSAM2, book: CodeBook, scene: tuple[torch.Tensor, ...], generator: torch.Generator, loss_size: int,
    click_weight: float,
) -> dict[str, torch.Tensor]:
    """SAM 2's losses (as in ``train``) for one :func:`code_scene`, plus the click task on frame 0 (weighted)."""
    frames, targets, codes, own = scene
    clicks = object_clicks(own, generator) if click_weight else None
    outputs, clicked = track_for_training(sam2, frames, book(codes), clicks)
    terms = mask_losses(outputs, targets, loss_size)
    if clicked is not None:
        terms.update({f"click_{k}": click_weight * v for k, v in frame_losses(clicked, own[:, 0], loss_size).items()})
    return terms


def object_clicks(masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random pixel of each object's frame-0 mask ``(B, T, S, S)`` as a SAM 2 point prompt ``(B, 1, 2)``."""
    coords = []
    for mask in masks[:, 0]:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        k = int(torch.randint(len(xs), (1,), generator=generator))
        coords.append([[float(xs[k]), float(ys[k])]])
    return torch.tensor(coords), torch.ones(len(coords), 1, dtype=torch.int32)


def _iou(logits: torch.Tensor, masks: torch.Tensor) -> list[float]:
    chosen = nn.functional.interpolate(logits, size=masks.shape[-2:], mode="bilinear")[:, 0] > 0
    return ((chosen & masks).flatten(1).sum(1) / (chosen | masks).flatten(1).sum(1).clamp(min=1)).tolist()


@torch.no_grad()
def held_out_scores(sam2: UniPixelSAM2, book: CodeBook, scenes: list[tuple[torch.Tensor, ...]]) -> tuple[float, float]:
    """Mean IoU on frame 0 of code prompts with their targets, and of clicks on each object's middle pixel."""
    sam2.eval()
    codes, clicks = [], []
    for frames, targets, code, own in scenes:
        backbone = sam2.forward_image(frames[:1])
        _, features, _, sizes = sam2._prepare_backbone_features(backbone)
        pix_feat = (features[-1] + sam2.no_mem_embed).permute(1, 2, 0).view(1, -1, *sizes[-1])
        high_res = [x.permute(1, 2, 0).reshape(1, x.shape[2], *s) for x, s in zip(features[:-1], sizes[:-1])]
        n = len(code)
        pix_feat, high_res = pix_feat.expand(n, -1, -1, -1), [x.expand(n, -1, -1, -1) for x in high_res]
        codes += _iou(sam_heads(sam2, pix_feat, high_res, book(code))[0], targets[:, 0])
        middle = []
        for mask in own[:, 0]:
            ys, xs = torch.nonzero(mask, as_tuple=True)
            middle.append([[float(xs[len(xs) // 2]), float(ys[len(ys) // 2])]])
        points = (torch.tensor(middle), torch.ones(n, 1, dtype=torch.int32))
        clicks += _iou(sam_heads(sam2, pix_feat, high_res, None, points)[0], own[:, 0])
    sam2.train()
    return float(np.mean(codes)), float(np.mean(clicks))


def one_mask_config(path: Path) -> None:
    """Turn stock SAM 2's multimask output off in the ``sam2_config.yaml`` at ``path``."""
    config = OmegaConf.load(path)
    config.model.multimask_output_in_sam = False
    config.model.multimask_output_for_tracking = False
    path.write_text(OmegaConf.to_yaml(config))


def train_codes(args: argparse.Namespace) -> Path:
    """Redraw ``--init``'s SAM 2 (its own architecture, one mask per prompt), train it with a code book and
    save both to ``--out``."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model, processor = load_model(args.init)
    size = model.config.sam2_image_size
    model.sam2 = build_sam2(model.config.sam2_config, size, model.sam2_yaml)
    sam2 = model.sam2.train()
    sam2.multimask_output_in_sam = sam2.multimask_output_for_tracking = False
    if args.book:  # an LLM already speaks this code book: SAM 2 learns to read it, the book stays as it is
        book = load_codebook(args.book).requires_grad_(False)
    else:
        book = CodeBook(sam2.sam_prompt_encoder.embed_dim)
    params = list(sam2.parameters()) + [p for p in book.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    held_out = [code_scene(HELD_OUT_SEED, i, size, video_prob=0.0) for i in range(args.eval_scenes)]
    generator = torch.Generator().manual_seed(args.seed)
    started = time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, WARMUP)
        scene = code_scene(CODE_SEED, step, size, args.video_prob, args.max_frames, args.sam_frames)
        loss = sum(code_losses(sam2, book, scene, generator, args.loss_size, args.click_weight).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if (step + 1) % args.log_every == 0:
            code_iou, click_iou = held_out_scores(sam2, book, held_out)
            print(f"step={step + 1} elapsed_s={time.time() - started:.0f} loss={float(loss.detach()):.4f} "
                  f"held_out_code_iou={code_iou:.3f} held_out_click_iou={click_iou:.3f}", flush=True)
    code_iou, click_iou = held_out_scores(sam2, book, held_out)
    out = Path(args.out)
    save_checkpoint(model.eval(), processor, out)
    one_mask_config(out / SAM2_CONFIG)
    torch.save(book.state_dict(), out / CODES_FILE)
    record_stage(args.init, out, "codes", {"args": vars(args), "seconds": round(time.time() - started),
                                           "held_out_code_iou": round(code_iou, 4), "held_out_click_iou": round(click_iou, 4)})
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True, help="checkpoint whose other weights are kept")
    parser.add_argument("--out", required=True, help="where the checkpoint and codes.pt are written")
    parser.add_argument("--book", help="a code book to keep (codes.pt of an earlier run, frozen) instead of a new one")
    parser.add_argument("--steps", type=int, default=8000, help="scenes (one optimiser step each)")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (warm-up, cosine decay)")
    parser.add_argument("--video-prob", type=float, default=0.0, help="share of clips")
    parser.add_argument("--max-frames", type=int, default=8, help="frames of the longest clip")
    parser.add_argument("--sam-frames", type=int, default=4, help="frames SAM 2 tracks")
    parser.add_argument("--click-weight", type=float, default=0.0, help="weight of the click task (0: off)")
    parser.add_argument("--loss-size", type=int, default=128, help="resolution of the mask losses")
    parser.add_argument("--eval-scenes", type=int, default=30, help="held-out images of the printed scores")
    parser.add_argument("--log-every", type=int, default=500, help="steps between held-out evaluations")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of SAM 2's redraw, the code book and the clicks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    train_codes(parse_args(argv))


if __name__ == "__main__":
    main()
