"""Vision stage: per-token labels name the object under each token, and a short run writes a loadable checkpoint
whose tower (and nothing else) changed."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unipixel.loading import load_model
from unipixel.modeling.presets import TINY_SAM2_YAML
from unipixel.training import shapes
from unipixel.training.data import IGNORE
from unipixel.training.tokenizer import build_processor, shapes_corpus, train_tokenizer
from unipixel.training.train import (
    Sizes,
    build_config,
    build_model,
    parse_args,
    save,
    take_vision,
)
from unipixel.training.vision import SceneTokens, pack, train_vision
from unipixel.training.vision import parse_args as vision_args

TINY = Sizes(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vision_hidden=32, vision_depth=2,
             vision_heads=2, vision_intermediate=64, sam2_image_size=128, mrope_section=[1, 2, 1, 1, 2, 1])


@pytest.mark.parametrize("crops", [True, False])
def test_token_labels_name_the_object_under_each_token(crops):
    processor = build_processor(train_tokenizer(shapes_corpus(40), vocab_size=300))
    data = SceneTokens(processor, seed=5, crops=crops, video_prob=0.5, max_frames=4)
    checked = 0
    for index in range(6):
        patches, grid, labels = data.item(index)
        t, h, w = grid[0].tolist()
        assert patches.shape[0] == t * h * w and labels.shape == (2, t * h * w // 4)
        rng = np.random.default_rng([5, index, 3])  # the same scene, drawn again
        video = rng.random() < 0.5
        scene = shapes.make_scene(rng, video, "crop" if crops else "train",
                                  num_frames=int(rng.integers(4, 5)) if video else None)
        height, width = scene.frames.shape[1:3]
        if crops:  # shown unresized: one 14 px patch per 14 px of the crop
            assert (14 * h, 14 * w) == (height, width) and height % 28 == 0 and 84 <= min(height, width) <= 196
        rows, cols = h // 2, w // 2
        for token in torch.nonzero(labels[0, : rows * cols] != IGNORE).flatten().tolist():
            i, j = divmod(token, cols)  # raster order over the first frame's cells
            cell = scene.masks[:, 0, i * height // rows:(i + 1) * height // rows, j * width // cols:(j + 1) * width // cols]
            owner = int(cell.mean(axis=(1, 2)).argmax())
            assert cell[owner].mean() > 0.2
            obj = scene.objects[owner]
            assert labels[:, token].tolist() == [shapes.COLOURS_L.index(obj.colour), shapes.SHAPES.index(obj.shape)]
            checked += 1
    assert checked > 10


def test_short_vision_stage_redraws_and_trains_only_the_tower(tmp_path):
    processor = build_processor(train_tokenizer(shapes_corpus(40), vocab_size=300))
    torch.manual_seed(0)
    start = tmp_path / "start"
    model = build_model(build_config(processor.tokenizer, TINY), TINY_SAM2_YAML)
    with torch.no_grad():
        model.model.visual.patch_embed.proj.weight.fill_(0.3)
    save(model, processor, start, parse_args(["--out", str(start)]), TINY, step=1)
    out = tmp_path / "vision"
    train_vision(vision_args(["--init", str(start), "--out", str(out), "--steps", "3", "--batch", "2", "--loaders", "0",
                              "--eval-scenes", "2", "--log-every", "1"]))
    before, after = load_file(start / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("visual.") for k in changed), sorted(changed)[:5]
    redrawn = after["visual.patch_embed.proj.weight"]  # the start's constant 0.3 is gone: a fresh draw (std 0.02)
    assert abs(float(redrawn.mean())) < 0.01 and 0.01 < float(redrawn.std()) < 0.05
    stage = json.loads((out / "training_args.json").read_text())["vision_stage"]
    assert stage["steps"] == 3 and 0.0 <= stage["held_out_shape"] <= 1.0
    model, _ = load_model(out)
    assert model.model.visual.patch_embed.proj.weight.dtype == torch.float32
    batch = pack([SceneTokens(processor, 9).item(i) for i in range(2)])
    assert batch[1].shape == (2, 3) and batch[2].shape[1] == int((batch[1].prod(1) // 4).sum())


def test_take_vision_joins_the_tower_and_refuses_another_one(tmp_path):
    processor = build_processor(train_tokenizer(shapes_corpus(40), vocab_size=300))
    torch.manual_seed(0)
    donor = tmp_path / "donor"
    save(build_model(build_config(processor.tokenizer, TINY), TINY_SAM2_YAML), processor, donor,
         parse_args(["--out", str(donor)]), TINY, step=1)
    torch.manual_seed(1)
    model = build_model(build_config(processor.tokenizer, TINY), TINY_SAM2_YAML)
    llm_before = {k: v.clone() for k, v in model.model.language_model.state_dict().items()}
    take_vision(model, donor)
    donated = load_model(donor)[0].model.visual.state_dict()
    for key, value in model.model.visual.state_dict().items():
        assert torch.equal(value, donated[key]), key
    for key, value in model.msk_proj.state_dict().items():  # a <|mem|> token starts as the mean visual token
        assert torch.equal(value, model.model.visual.merger.mlp.state_dict()[key]), key
    assert all(torch.equal(v, llm_before[k]) for k, v in model.model.language_model.state_dict().items())
    wider = Sizes(**{**TINY.__dict__, "vision_hidden": 48})
    with pytest.raises(ValueError, match="differs"):
        take_vision(build_model(build_config(processor.tokenizer, wider), TINY_SAM2_YAML), donor)
