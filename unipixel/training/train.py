"""Train a small UniPixel from scratch on procedural shapes, end to end, on a CPU.

    python -m unipixel.training.train --out assets/unipixel-shapes

Everything is built here: a BPE tokenizer trained on the shapes text (``tokenizer.py``), a tiny
Qwen2.5-VL + SAM 2 (``sam2_shapes.yaml``) of the released model class, and one optimiser over all of it.
Each step encodes one shapes conversation exactly as inference would (``data.py``) and minimises

* the LM loss on the assistant turns;
* SAM 2's mask losses (``losses.py``) for every ``<|seg|>``, the SAM 2 prompt taken from the pre-norm
  hidden state before the ``<|seg|>`` through ``seg_head`` as at inference, tracked over the first frames;
* three auxiliary terms that make learning from scratch feasible in a CPU hour: classic click-prompted
  SAM 2 on frame 0 (``click_*``), attribute words read by the LM head at every visual, ``<|mem|>`` and
  ``<|ref|>`` token (``attributes``, see ``data.attribute_labels``), and a penalty on the vision tower's
  common offset (``vision_dc``, see :func:`common_share`);
* with ``--codes`` (a code book of ``codes.py``), the squared distance between ``seg_head``'s SAM 2 prompt
  and the code of the colour/shape words the answer names before each ``<|seg|>`` (``code``);
* pointing terms for every ``<|ref|>`` (``pointing.py``): the cell its prompt names, read from its early
  state (``ref_cell``), and one attention head's mass on the object there (``ref_attention``);

The checkpoint is written in the released format (``save_checkpoint``) every ``--save-every`` steps and
at the end, with ``training_args.json`` and a JSON-lines log of mean losses beside it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..configuration import UniPixelConfig
from ..loading import load_model, reference_generation_config, save_checkpoint
from ..modeling.sam2 import build_sam2
from ..modeling.unipixel import UniPixelForConditionalGeneration, seg_prompt_positions
from .codes import CodeBook, load_codebook
from .data import IGNORE, Encoded, encode, training_sample
from .losses import SAM2_YAML, frame_losses, mask_losses, random_clicks, track_for_training
from .pointing import ATTENTION_WEIGHT, CELL_WEIGHT, PointingHeads, capture, pointing_losses
from .recipe import RECIPE_FILE, STAGE_SUFFIX, stages
from .schedule import learning_rate
from .tokenizer import build_processor, shapes_corpus, train_tokenizer

TRAIN_SEED = 0
CLICK_WEIGHT = 0.5
DC_WEIGHT = 1.0
ATTRIBUTE_WEIGHT = 0.5
CODE_WEIGHT = 1.0
OPTIMIZER_STATE = "optimizer.pt"
"""AdamW's state beside the checkpoint (``torch.save``; loaded with ``weights_only``), for ``--resume``."""
POINTING_STATE = "pointing_heads.pt"
"""The pointing heads beside the checkpoint (training only, not part of the model), kept by ``--resume``/``--init``."""

TASK_MIX = {
    "referring_seg": 0.26, "reasoning_seg": 0.08, "mask_region": 0.16, "ref_caption": 0.14,
    "id_seg": 0.1, "pixelqa": 0.06, "pixelqa_two_step": 0.12, "multi_turn": 0.08,
}
"""Task mix of the training stream (shapes' default, shifted towards the measured tasks)."""


@dataclass
class Sizes:
    """Architecture of the small model (the SAM 2 part is ``sam2_shapes.yaml``)."""

    hidden: int = 192
    layers: int = 4
    heads: int = 6
    kv_heads: int = 2
    intermediate: int = 512
    rope_theta: float = 100.0
    mrope_section: list[int] = field(default_factory=lambda: [2, 3, 3, 2, 3, 3])
    vision_hidden: int = 96
    vision_depth: int = 3
    vision_heads: int = 2
    vision_intermediate: int = 192
    vision_window: int = 1792
    sam2_image_size: int = 256
    untied_embed_std: float | None = None
    """``None``: input embeddings tied to the LM head (std 0.02); a number: untied, drawn with this std, so a text
    token's identity is not drowned in the residual stream by what the first layers add to it."""


def build_config(tokenizer, sizes: Sizes) -> UniPixelConfig:
    """A UniPixel config for ``tokenizer``'s ids and ``sizes``.

    The vision window (1792 px = 64 merged tokens) covers any frame up to the largest LLM frame size, so
    the tower's window order equals raster order and ``<|mem|>`` pools exactly the tokens under the mask
    (spec §1.5.2). ``mrope_section`` interleaves the t/h/w bands (six sections, a multiple of three, so
    transformers 4.53.3 and 5.x assign the same frequencies) to give both spatial axes usable frequencies.
    """
    ids = lambda *tokens: tokenizer.convert_tokens_to_ids(list(tokens))  # noqa: E731
    bos, eos, vstart, vend, vpad, ipad, video = ids(
        "<|endoftext|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"
    )
    ref, seg, mem = ids("<|ref|>", "<|seg|>", "<|mem|>")
    vocab = 64 * math.ceil(len(tokenizer) / 64)
    text = dict(
        vocab_size=vocab, hidden_size=sizes.hidden, intermediate_size=sizes.intermediate,
        num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads, num_key_value_heads=sizes.kv_heads,
        max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=sizes.rope_theta,
        rope_scaling={"type": "mrope", "mrope_section": list(sizes.mrope_section)},
        bos_token_id=bos, eos_token_id=eos, tie_word_embeddings=sizes.untied_embed_std is None,
    )
    vision = dict(
        depth=sizes.vision_depth, hidden_size=sizes.vision_hidden, intermediate_size=sizes.vision_intermediate,
        num_heads=sizes.vision_heads, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
        tokens_per_second=2, window_size=sizes.vision_window, out_hidden_size=sizes.hidden,
        fullatt_block_indexes=[sizes.vision_depth - 1],
    )
    return UniPixelConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=sizes.untied_embed_std is None,
        sam2_config="configs/unipixel_shapes", sam2_image_size=sizes.sam2_image_size, sam2_hidden_tokens=2,
        bos_token_id=bos, eos_token_id=eos, vision_start_token_id=vstart, vision_end_token_id=vend,
        vision_token_id=vpad, image_token_id=ipad, video_token_id=video,
        ref_token_id=ref, seg_token_id=seg, mem_token_id=mem,
    )


def build_model(
    config: UniPixelConfig, sam2_yaml: Path = SAM2_YAML, embed_std: float | None = None
) -> UniPixelForConditionalGeneration:
    """A freshly initialised model.

    The Qwen2.5-VL parts keep transformers' initialisation; SAM 2 and the ``<|ref|>`` prompt encoder get
    their own PyTorch/SAM 2 initialisation back (transformers' ``post_init`` redraws every layer with
    std 0.02, e.g. SAM 2's unit-scale prompt and mask tokens, which slows SAM 2 down a lot). ``<|ref|>``'s
    point encoder shares SAM 2's random-Fourier basis, so positions reach SAM 2 in its own coordinates;
    ``msk_proj`` starts as a copy of the vision merger MLP (as the reference initialised it), so a
    ``<|mem|>`` token starts as the mean of the visual tokens under its mask. ``embed_std`` redraws the
    (untied) input embeddings with that std.
    """
    model = UniPixelForConditionalGeneration(config, sam2_yaml=sam2_yaml)
    with torch.no_grad():
        model.sam2.load_state_dict(build_sam2(config.sam2_config, config.sam2_image_size, sam2_yaml).state_dict())
        for module in model.ref_encoder.modules():
            if module is not model.ref_encoder and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        model.ref_encoder.pe_layer.positional_encoding_gaussian_matrix.copy_(
            model.sam2.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        )
        model.msk_proj.load_state_dict(model.model.visual.merger.mlp.state_dict())
        if embed_std is not None:
            model.get_input_embeddings().weight.normal_(0.0, embed_std)
    model.generation_config = reference_generation_config(config)
    return model


def training_loss(
    model: UniPixelForConditionalGeneration, example: Encoded, loss_size: int, clicks: torch.Generator,
    masks: bool = True, book: CodeBook | None = None, code_weight: float = CODE_WEIGHT,
    pointer: PointingHeads | None = None, pointing_weights: tuple[float, float] = (CELL_WEIGHT, ATTENTION_WEIGHT),
) -> dict[str, torch.Tensor]:
    """All loss terms of one conversation (weighted; the training objective is their sum).

    ``clicks`` draws the random click of the auxiliary SAM 2 task; ``masks=False`` leaves SAM 2 out (a phase
    that trains the LLM alone runs about four times faster); ``book`` (``codes.py``, frozen) adds
    the squared distance between ``seg_head``'s prompt tokens and the code of the words each ``<|seg|>``
    follows; ``pointer`` (with ``pointing_weights``: cell, attention) adds the pointing terms of ``pointing.py``.
    """
    inputs = dict(example.inputs)
    features = model.encode_video(inputs.pop("pixel_values_videos"), inputs["video_grid_thw"])
    pointing = pointer is not None and example.pointing is not None and any(pointing_weights)
    language_model = model.model.language_model
    with capture(language_model) if pointing else contextlib.nullcontext() as captured:
        out = model(**inputs, video_features=features, labels=example.labels, return_pre_norm_states=True)
    terms = {"lm": out.loss, "vision_dc": DC_WEIGHT * sum(common_share(f) for f in features)}
    if pointing:
        terms.update(pointing_losses(language_model, pointer, captured, example.pointing, pointing_weights))
    if example.attributes is not None and (example.attributes != IGNORE).any():
        logits = out.logits[0].float()
        terms["attributes"] = ATTRIBUTE_WEIGHT * sum(
            torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE) for target in example.attributes
        )
    if example.targets:
        targets = torch.stack(example.targets)
        positions = seg_prompt_positions(example.inputs["input_ids"][0], model.config.seg_token_id)
        states = out["pre_norm_states"][0, positions]
        hidden = model.seg_head(states).view(len(positions), model.config.sam2_hidden_tokens, -1)
        if book is not None:
            terms["code"] = code_weight * torch.nn.functional.mse_loss(hidden, book(example.codes))
        if not masks:
            return terms
        outputs, clicked = track_for_training(model.sam2, example.frames, hidden, random_clicks(targets, clicks))
        terms.update(mask_losses(outputs, targets, loss_size))
        terms.update({f"click_{key}": CLICK_WEIGHT * value for key, value in frame_losses(clicked, targets[:, 0], loss_size).items()})
    return terms


def common_share(tokens: torch.Tensor) -> torch.Tensor:
    """Share of the tokens' energy in their common (mean) vector: ``|mean|² / mean(|x|²)``, in [0, 1].

    Trained from scratch, the vision tower otherwise drifts into a huge constant offset within a few
    hundred steps (the cheapest way for the LM to ignore still-useless image features); after the LLM's
    RMSNorm every visual token then looks the same and the image can never be used. Penalising this share
    keeps the content visible. (A tower taught colour and shape beforehand, ``vision.py``, keeps a large share
    and is still read when frozen: the content it carries was learned, not left to drift.)
    """
    return tokens.mean(0).pow(2).sum() / tokens.pow(2).sum(-1).mean().clamp(min=1e-6)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, lr: float, scales: dict[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, embeddings and SAM 2's learned tokens/encodings. ``scales``
    sets the learning rate of a part (``"sam2"``, ``"vision"``) relative to the rest (each group's ``scale``);
    a part at scale 0 is frozen instead (``requires_grad`` off: no backward pass through it, a step costs less)."""
    scales = scales or {}
    groups: dict[tuple[bool, str], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        decay = param.ndim >= 2 and "embed" not in name and "tokens" not in name
        part = "sam2" if ".sam2." in f".{name}" else "vision" if name.startswith("model.visual.") else "rest"
        if scales.get(part, 1.0) == 0:
            param.requires_grad_(False)
            continue
        groups.setdefault((decay, part), []).append(param)
    return torch.optim.AdamW(
        [{"params": params, "weight_decay": 0.01 if decay else 0.0, "scale": scales.get(part, 1.0)}
         for (decay, part), params in groups.items()],
        lr=lr, betas=(0.9, 0.98),
    )


LOGGED = (
    "lm", "vision_dc", "attributes", "code", "ref_cell", "ref_attention", "focal", "dice", "iou", "object", "click_focal", "click_dice", "click_iou", "click_object",
)
"""Loss terms of the log, in a fixed order (workers average them over the whole batch)."""


def train(args: argparse.Namespace) -> Path:
    """Build, train and save; returns the checkpoint directory. With ``--workers N`` the batch is split over
    N processes (data parallel, gloo): the same optimisation as ``--accumulate N`` in one process, N times faster
    where N cores are free."""
    if args.workers == 1:
        return _train_worker(0, args, None)
    with tempfile.TemporaryDirectory(prefix="unipixel-train-") as rendezvous:
        mp.spawn(_train_worker, args=(args, f"file://{rendezvous}/store"), nprocs=args.workers, join=True)
    return Path(args.out)


def average_gradients(model: torch.nn.Module) -> None:
    """Sum every worker's gradients (each already divided by the global batch) in one flat all-reduce.

    Flat, with zeros for parameters a worker's samples did not reach, so every worker sends the same layout;
    a parameter no worker reached gets no gradient, as in one process (AdamW then leaves it alone).
    """
    params = list(model.parameters())
    reached = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
    flat = torch.cat([p.grad.flatten() if p.grad is not None else p.new_zeros(p.numel()) for p in params])
    dist.all_reduce(flat)
    dist.all_reduce(reached)
    for param, grad, used in zip(params, flat.split([p.numel() for p in params]), reached.tolist()):
        param.grad = grad.view_as(param) if used else None


def _train_worker(rank: int, args: argparse.Namespace, rendezvous: str | None) -> Path:
    """One process of the run: worker ``rank`` of ``args.workers`` (rank 0 logs and saves); ``rendezvous``: the
    process group's init method (``None``: a single process)."""
    distributed = rendezvous is not None
    if distributed:
        dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=args.workers)
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = Sizes(untied_embed_std=args.untied_embed_std)
    history: list[dict] = []
    if args.resume or args.init:
        source = out if args.resume else Path(args.init)
        model, processor = load_model(source)
        recorded = json.loads((source / RECIPE_FILE).read_text())
        history = recorded.get("history", [])
        first = recorded["step"] if args.resume else 0
        if args.init:  # a new phase: fresh optimiser and schedule, the data stream goes on after the init's samples
            history = history + [{k: v for k, v in recorded.items()
                                  if k in ("step", "samples", "args", "donors") or k.endswith(STAGE_SUFFIX)}]
        print(f"{'resuming' if args.resume else 'starting from'} {source} at step {first}", flush=True)
    else:
        processor = build_processor(train_tokenizer(shapes_corpus(args.corpus), vocab_size=args.vocab))
        sam2_yaml = Path(args.sam2_yaml) if args.sam2_yaml else SAM2_YAML
        model = build_model(build_config(processor.tokenizer, sizes), sam2_yaml, sizes.untied_embed_std)
        first = 0
    if args.sam2_from:
        take_sam2(model, Path(args.sam2_from))
    if args.vision_from:
        take_vision(model, Path(args.vision_from))
    model.config.sam2_batch_mode = model.config.sam2_batch_mode or args.sam2_batch_mode
    if model.config.sam2_batch_mode and not args.skip_masks:
        raise ValueError("a model in sam2_batch_mode trains with --skip-masks only: the training SAM 2 path tracks "
                         "with memory, which that model does not use")
    donors = {flag: {"path": path, **stages(path)}
              for flag, path in (("sam2_from", args.sam2_from), ("vision_from", args.vision_from)) if path}
    book = load_codebook(args.codes).requires_grad_(False) if args.codes else None
    model.train()
    optimizer = make_optimizer(model, args.lr, {"sam2": args.sam2_lr_scale, "vision": args.vision_lr_scale})
    pointer = PointingHeads(model.config.text_config.hidden_size)
    source = out if args.resume else Path(args.init) if args.init else None
    if source is not None and (source / POINTING_STATE).exists():
        pointer.load_state_dict(torch.load(source / POINTING_STATE, weights_only=True))
    optimizer.add_param_group({"params": list(pointer.parameters()), "weight_decay": 0.0, "scale": 1.0})
    weights = (args.ref_cell_weight, args.ref_attention_weight)
    state = out / OPTIMIZER_STATE
    resumed_moments = args.resume and state.exists()
    if resumed_moments:
        optimizer.load_state_dict(torch.load(state, weights_only=True))
    if distributed:
        for tensor in [*model.state_dict().values(), *pointer.state_dict().values()]:  # rank 0's weights for all
            dist.broadcast(tensor, 0)
    offset = sum(consumed(phase) for phase in history)  # the data stream goes on after earlier phases' samples
    batch = args.accumulate * args.workers
    window = torch.zeros(2, len(LOGGED), dtype=torch.float64)  # sums and counts of the logged terms
    started = time.time()
    appending = args.resume or (args.init and (out / "train_log.jsonl").exists())  # a new phase extends the log
    log = (out / "train_log.jsonl").open("a" if appending else "w") if rank == 0 else None
    for step in range(first, args.steps):
        # a run resumed without its AdamW moments warms up again briefly
        rewarm = min(1.0, (step - first + 1) / args.warmup) if first and not resumed_moments else 1.0
        lr = rewarm * learning_rate(step, args.steps, args.lr, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["scale"]
        for micro in range(args.accumulate):
            index = offset + step * batch + rank * args.accumulate + micro
            sample = training_sample(TRAIN_SEED, index, args.task_mix, args.video_prob, args.max_frames)
            example = encode(processor, sample, model.config.sam2_image_size, sam_frames=args.sam_frames)
            clicks = torch.Generator().manual_seed(args.seed * 1_000_003 + index)  # the same whichever worker draws it
            terms = training_loss(model, example, args.loss_size, clicks, not args.skip_masks, book, args.code_weight,
                                  pointer, weights)
            (sum(terms.values()) / batch).backward()
            for key, value in terms.items():
                window[:, LOGGED.index(key)] += torch.tensor([float(value.detach()), 1.0], dtype=torch.float64)
        if distributed:
            average_gradients(model)
            average_gradients(pointer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % args.log_every == 0:
            if distributed:
                dist.all_reduce(window)
            if log is not None:
                record = {"phase": len(history), "step": step + 1, "lr": lr, "elapsed_s": round(time.time() - started, 1)}
                record.update({key: round(float(window[0, i] / window[1, i]), 5) for i, key in enumerate(LOGGED) if window[1, i]})
                log.write(json.dumps(record) + "\n")
                log.flush()
                print(" ".join(f"{key}={value}" for key, value in record.items()), flush=True)
            window.zero_()
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            if rank == 0:
                save(model, processor, out, args, sizes, step + 1, history, donors)
                torch.save(optimizer.state_dict(), state)
                torch.save(pointer.state_dict(), out / POINTING_STATE)
            if out_of_time(started, args.time_limit, distributed):
                print(f"time limit reached: stopped after the checkpoint of step {step + 1}", flush=True)
                break
    if log is not None:
        log.close()
    if distributed:
        dist.destroy_process_group()
    return out


def take_sam2(model: UniPixelForConditionalGeneration, donor: Path) -> None:
    """Put the SAM 2 of checkpoint ``donor`` (weights and ``sam2_config.yaml``, e.g. a ``codes.py`` output) into
    ``model``, so a recipe can join an LLM and a SAM 2 trained in separate stages."""
    other, _ = load_model(donor)
    keys = ("sam2_config", "sam2_image_size", "sam2_hidden_tokens")
    if any(getattr(other.config, key) != getattr(model.config, key) for key in keys):
        raise ValueError(f"{donor}: its SAM 2 ({keys}) differs from the model's")
    model.sam2, model.sam2_yaml = other.sam2, other.sam2_yaml


def take_vision(model: UniPixelForConditionalGeneration, donor: Path) -> None:
    """Put the vision tower of checkpoint ``donor`` (e.g. a ``vision.py`` output) into ``model``; ``msk_proj``
    becomes a copy of its merger MLP, as in a fresh model, so a ``<|mem|>`` token starts as the mean of the
    visual tokens under its mask."""
    other, _ = load_model(donor)
    layout = lambda config: {k: v for k, v in config.vision_config.to_dict().items() if k != "dtype"}  # noqa: E731
    if layout(other.config) != layout(model.config):
        raise ValueError(f"{donor}: its vision tower's configuration differs from the model's")
    with torch.no_grad():
        model.model.visual.load_state_dict(other.model.visual.state_dict())
        model.msk_proj.load_state_dict(model.model.visual.merger.mlp.state_dict())


def out_of_time(started: float, limit: float | None, distributed: bool) -> bool:
    """Whether ``limit`` seconds have passed since ``started``, as rank 0 sees it (so all workers stop together)."""
    flag = torch.tensor([limit is not None and time.time() - started > limit], dtype=torch.int32)
    if distributed:
        dist.broadcast(flag, 0)
    return bool(flag)


def consumed(recipe: dict) -> int:
    """Conversations a saved phase trained on (``samples``; older records: steps x accumulate x workers)."""
    args = recipe["args"]
    return recipe.get("samples", recipe["step"] * args.get("accumulate", 1) * args.get("workers", 1))


def save(
    model: UniPixelForConditionalGeneration, processor, out: Path, args: argparse.Namespace, sizes: Sizes, step: int,
    history: list[dict] | None = None, donors: dict | None = None,
) -> None:
    """Checkpoint in the released format, plus the recipe that produced it (``history``: the earlier phases of
    an ``--init`` chain; ``samples``: conversations this phase has trained on; ``donors``: the checkpoints
    ``--sam2-from``/``--vision-from`` took parts from, with their stage records)."""
    save_checkpoint(model, processor, out)
    recipe = {"step": step, "samples": step * args.accumulate * args.workers, "args": vars(args), "sizes": asdict(sizes)}
    if donors:
        recipe["donors"] = donors
    if history:
        recipe["history"] = history
    (out / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="checkpoint directory")
    parser.add_argument("--steps", type=int, default=10000, help="optimiser steps")
    parser.add_argument("--accumulate", type=int, default=1, help="conversations per optimiser step and worker")
    parser.add_argument("--workers", type=int, default=1,
                        help="data-parallel processes (gloo on this machine); the batch is accumulate x workers")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up steps")
    parser.add_argument("--sam2-lr-scale", type=float, default=1.0, help="SAM 2's learning rate relative to --lr")
    parser.add_argument("--vision-lr-scale", type=float, default=1.0,
                        help="the vision tower's learning rate relative to --lr (0: frozen, a faster step)")
    parser.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    parser.add_argument("--video-prob", type=float, default=0.3, help="share of video samples")
    parser.add_argument("--max-frames", type=int, default=8, help="frames of the longest training clip")
    parser.add_argument("--sam-frames", type=int, default=4, help="frames SAM 2 tracks in training")
    parser.add_argument("--loss-size", type=int, default=128, help="resolution of the mask losses")
    parser.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary size (before special tokens)")
    parser.add_argument("--corpus", type=int, default=2000, help="shapes conversations the tokenizer is trained on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run checkpointed in --out from its last saved step (weights, data stream and, "
                             f"when {OPTIMIZER_STATE} is there, AdamW's moments; else AdamW re-warms briefly)")
    parser.add_argument("--init", help="start a new phase from this checkpoint's weights: fresh optimiser and schedule, "
                                       "the data stream continuing after the samples it was trained on")
    parser.add_argument("--code-weight", type=float, default=CODE_WEIGHT, help="weight of the code term")
    parser.add_argument("--ref-cell-weight", type=float, default=CELL_WEIGHT,
                        help="weight of the pointing term that reads a <|ref|> prompt's cell (pointing.py; 0: off)")
    parser.add_argument("--ref-attention-weight", type=float, default=ATTENTION_WEIGHT,
                        help="weight of the pointing term on one head's attention to the object (pointing.py; 0: off)")
    parser.add_argument("--sam2-from", help="take SAM 2 (weights and sam2_config.yaml) from this checkpoint")
    parser.add_argument("--vision-from", help="take the vision tower from this checkpoint (`python -m unipixel.training.vision`)")
    parser.add_argument("--codes", help="a code book (codes.pt of `python -m unipixel.training.codes`): seg_head "
                                        "learns to produce the code of what each answer names")
    parser.add_argument("--skip-masks", action="store_true",
                        help="leave SAM 2 and its losses out (a phase that trains the LLM alone)")
    parser.add_argument("--sam2-batch-mode", action="store_true",
                        help="save the model in sam2_batch_mode: SAM 2 segments every frame on its own from the "
                             "prompt, without memory (kept by later --init runs; needs --skip-masks)")
    parser.add_argument("--sam2-yaml", help="SAM 2 architecture of a fresh model (stock format; default: the package's "
                        f"{SAM2_YAML.name})")
    parser.add_argument("--untied-embed-std", type=float,
                        help="untie the input embeddings from the LM head and draw them with this std (fresh model)")
    parser.add_argument("--task-mix", type=json.loads, default=TASK_MIX, help="JSON {task: weight} of the training stream")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--log-every", type=int, default=100, help="steps per line of train_log.jsonl (mean losses)")
    parser.add_argument("--time-limit", type=float,
                        help="seconds after which the run stops at its next checkpoint (continue it with --resume)")
    parser.add_argument("--save-every", type=int, default=500, help="steps between checkpoints (same directory)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
