"""What a shapes checkpoint's internal states know, to find where the recipe fails (not a benchmark).

    python -m unipixel.training.probe --model assets/unipixel-shapes [--n 300]

On held-out referring-segmentation images (the evaluation's stream), printed as accuracies next to the
majority-class baseline:

* visual tokens (the vision tower's merged tokens, the LLM's image input): colour and shape of the object
  covering each token;
* ``<|seg|>`` states (the pre-norm state before each ``<|seg|>`` of the teacher-forced answer, the one
  ``seg_head`` turns into SAM 2's prompt): the target's colour and shape, and which half of the frame
  holds it;
* the teacher-forced masks' IoU by how the target can be told apart: the only object, the only one of
  its colour, the only one of its shape, or neither;
* how much the masks depend on the prompt at all: their IoU with the masks SAM 2 makes from an all-zero
  prompt instead of ``seg_head``'s (1.0: the LLM's prompt is ignored).

And on held-out point-caption requests (``ref_caption`` on images), after each LLM layer (0: its input):

* visual tokens: which third of the frame, left to right and top to bottom, each lies in (the vision
  tower is translation-equivariant, so on a flat background only the LLM can work out where a token is);
* the ``<|ref|>`` token: the colour of the object under the point (what a caption needs from it), next to
  the token before it, which has seen the image but not the point (the control: what the image alone gives).

Probes are multinomial logistic regressions on standardised features, trained on the first three
quarters of the samples and scored on the rest.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..loading import load_model
from ..modeling.unipixel import seg_prompt_positions
from . import shapes
from .data import encode, token_owners
from .evaluate import iou


@dataclass
class Probe:
    """Held-out accuracy of a linear probe and of always guessing the commonest training label."""

    accuracy: float
    majority: float
    samples: int


def linear_probe(features: torch.Tensor, labels: torch.Tensor, steps: int = 300, train_share: float = 0.75) -> Probe:
    """Fit a logistic regression on the first ``train_share`` of ``features`` ``(N, D)`` and score the rest."""
    split = int(len(labels) * train_share)
    mean, std = features[:split].mean(0), features[:split].std(0) + 1e-6
    x = (features - mean) / std
    classes = int(labels.max()) + 1
    linear = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-3)
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(linear(x[:split]), labels[:split])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (linear(x[split:]).argmax(-1) == labels[split:]).float().mean()
    majority = (labels[split:] == labels[:split].mode().values).float().mean()
    return Probe(float(accuracy), float(majority), len(labels) - split)


@dataclass
class Collected:
    """Features and labels gathered over the samples."""

    visual: list[torch.Tensor] = field(default_factory=list)
    visual_labels: list[torch.Tensor] = field(default_factory=list)  # (tokens, 2): colour, shape
    seg: list[torch.Tensor] = field(default_factory=list)
    seg_labels: list[list[int]] = field(default_factory=list)  # colour, shape, right half
    ious: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    zero_prompt_agreement: list[float] = field(default_factory=list)
    layer_visual: dict[int, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))
    layer_visual_labels: list[torch.Tensor] = field(default_factory=list)  # (tokens, 2): column third, row third
    layer_ref: dict[int, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))
    layer_before_ref: dict[int, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))
    layer_ref_labels: list[int] = field(default_factory=list)  # colour of the object under the point


def difficulty(sample: shapes.Sample, target: int) -> str:
    """How the target of a referring request can be told apart from the other objects."""
    objects, obj = sample.objects, sample.objects[target]
    if len(objects) == 1:
        return "only object"
    if sum(o.colour == obj.colour for o in objects) == 1:
        return "unique colour"
    if sum(o.shape == obj.shape for o in objects) == 1:
        return "unique shape"
    return "neither"


@torch.no_grad()
def collect(model, processor, n: int, seed: int = shapes.HELDOUT_SEED) -> Collected:
    """Run ``n`` teacher-forced referring requests on images and keep what the probes need."""
    out = Collected()
    size = model.config.sam2_image_size
    for index in range(n):
        sample = shapes.sample_at(seed, index, task="referring_seg", video=False)
        example = encode(processor, sample, size)
        inputs = dict(example.inputs)
        features = model.encode_video(inputs.pop("pixel_values_videos"), inputs["video_grid_thw"])
        result = model(**inputs, video_features=features, frames=example.frames, frame_size=example.frame_size,
                       return_pre_norm_states=True)
        owners = token_owners(sample.masks, inputs["video_grid_thw"])
        table = torch.tensor([[shapes.COLOURS_L.index(o.colour), shapes.SHAPES.index(o.shape)] for o in sample.objects])
        keep = owners >= 0
        out.visual.append(features[0][keep].float())
        out.visual_labels.append(table[owners[keep]])
        segmentation = result.segmentation
        if segmentation is not None and segmentation.track is not None:
            blank = model.sam2.track(model.sam2.encode_frames(example.frames), tuple(example.frame_size),
                                     torch.zeros_like(segmentation.prompts))
            out.zero_prompt_agreement += [iou((a > 0).numpy(), m.numpy()) for a, m in zip(blank.logits, result.masks)]
        positions = seg_prompt_positions(example.inputs["input_ids"][0], model.config.seg_token_id)
        states = result["pre_norm_states"][0, positions].float()
        width = sample.masks.shape[-1]
        for k, objects in enumerate(sample.seg_targets):
            if len(objects) != 1:
                continue
            target = objects[0]
            obj, xs = sample.objects[target], np.nonzero(sample.masks[target, 0])[1]
            out.seg.append(states[k])
            out.seg_labels.append([shapes.COLOURS_L.index(obj.colour), shapes.SHAPES.index(obj.shape),
                                   int(xs.mean() >= width / 2)])
            mask = result.masks[k].numpy() if k < len(result.masks) else None
            out.ious[difficulty(sample, target)].append(iou(mask, sample.masks[target]))
    return out


@torch.no_grad()
def collect_layers(model, processor, n: int, out: Collected, seed: int = shapes.HELDOUT_SEED,
                   tokens_per_sample: int = 12) -> None:
    """Run ``n`` point-caption prompts on images and keep per-layer states of visual and ``<|ref|>`` tokens."""
    layers = model.model.language_model.layers
    states: dict[int, torch.Tensor] = {}

    def keep(index: int):
        def hook(module, args, kwargs):
            states[index] = (args[0] if args else kwargs["hidden_states"])[0]
        return hook

    hooks = [layer.register_forward_pre_hook(keep(k), with_kwargs=True) for k, layer in enumerate(layers)]
    hooks.append(model.model.language_model.norm.register_forward_pre_hook(keep(len(layers)), with_kwargs=True))
    generator = torch.Generator().manual_seed(0)
    try:
        for index in range(n):
            sample = shapes.sample_at(seed, index, task="ref_caption", video=False)
            example = encode(processor, sample, model.config.sam2_image_size, prompt_only=True)
            model(**example.inputs, frames=example.frames, frame_size=example.frame_size)
            ids = example.inputs["input_ids"][0]
            merge = model.config.vision_config.spatial_merge_size
            _, height, width = example.inputs["video_grid_thw"][0].tolist()
            rows, cols = height // merge, width // merge  # the merged tokens the LLM sees, in raster order
            visual = (ids == model.config.video_token_id).nonzero()[:, 0]
            chosen = torch.randperm(len(visual), generator=generator)[:tokens_per_sample]
            ref = int((ids == model.config.ref_token_id).nonzero()[0, 0])
            for k, hidden in states.items():
                out.layer_visual[k].append(hidden[visual[chosen]].float())
                out.layer_ref[k].append(hidden[ref].float())
                out.layer_before_ref[k].append(hidden[ref - 1].float())
            out.layer_visual_labels.append(torch.stack([3 * (chosen % cols) // cols, 3 * (chosen // cols) // rows], 1))
            obj = sample.objects[sample.ref_prompts[0].obj]
            out.layer_ref_labels.append(shapes.COLOURS_L.index(obj.colour))
    finally:
        for hook in hooks:
            hook.remove()


def report(collected: Collected, log: Callable[[str], None] = print) -> dict[str, float]:
    """Fit the probes, print one line each, return ``{name: accuracy or mIoU}``."""
    results: dict[str, float] = {}
    probes = {}
    if collected.visual:
        visual, visual_labels = torch.cat(collected.visual), torch.cat(collected.visual_labels)
        probes.update({"visual token -> colour": (visual, visual_labels[:, 0]),
                       "visual token -> shape": (visual, visual_labels[:, 1])})
    if collected.seg:
        seg, seg_labels = torch.stack(collected.seg), torch.tensor(collected.seg_labels)
        probes.update({"<|seg|> state -> target colour": (seg, seg_labels[:, 0]),
                       "<|seg|> state -> target shape": (seg, seg_labels[:, 1]),
                       "<|seg|> state -> target half": (seg, seg_labels[:, 2])})
    for name, (features, labels) in probes.items():
        probe = linear_probe(features, labels)
        results[name] = probe.accuracy
        log(f"{name:34s} {probe.accuracy:.3f}   (majority {probe.majority:.3f}, {probe.samples} held out)")
    for name in ("only object", "unique colour", "unique shape", "neither"):
        scores = collected.ious.get(name, [])
        if scores:
            results[f"mIoU {name}"] = float(np.mean(scores))
            log(f"{'mIoU, target: ' + name:34s} {np.mean(scores):.3f}   ({len(scores)} targets)")
    if collected.layer_visual:
        where, colours = torch.cat(collected.layer_visual_labels), torch.tensor(collected.layer_ref_labels)
        for k in sorted(collected.layer_visual):
            visual, ref = torch.cat(collected.layer_visual[k]), torch.stack(collected.layer_ref[k])
            before = torch.stack(collected.layer_before_ref[k])
            probes = {"column third": (visual, where[:, 0]), "row third": (visual, where[:, 1]),
                      "<|ref|> -> colour under the point": (ref, colours),
                      "token before it -> same": (before, colours)}
            cells = []
            for name, (features, labels) in probes.items():
                probe = linear_probe(features, labels)
                results[f"LLM layer {k}: {name}"] = probe.accuracy
                cells.append(f"{name} {probe.accuracy:.3f} (majority {probe.majority:.3f})")
            log(f"LLM layer {k}, visual token: {cells[0]}, {cells[1]}; {cells[2]}; {cells[3]}")
    if collected.zero_prompt_agreement:
        results["zero-prompt agreement"] = float(np.mean(collected.zero_prompt_agreement))
        log(f"{'mIoU with an all-zero prompt':34s} {results['zero-prompt agreement']:.3f}   (1.0: the prompt is ignored)")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--n", type=int, default=300, help="referring requests (images)")
    parser.add_argument("--ref-n", type=int, default=300, help="point-caption requests (images) for the per-layer probes")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, processor = load_model(args.model)
    collected = collect(model, processor, args.n)
    collect_layers(model, processor, args.ref_n, collected)
    report(collected)


if __name__ == "__main__":
    main()
