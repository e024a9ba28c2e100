"""Stage 0 (SAM 2 learns clicks): only SAM 2 trains, and the saved checkpoint asks for one mask per prompt."""
from __future__ import annotations

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from unipixel.loading import load_model
from unipixel.modeling.presets import TINY_SAM2_YAML
from unipixel.training.clicks import click_scene, parse_args, train_clicks
from unipixel.training.tokenizer import build_processor, shapes_corpus, train_tokenizer
from unipixel.training.train import Sizes, build_config, build_model, save
from unipixel.training.train import parse_args as train_args

TINY = Sizes(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vision_hidden=32, vision_depth=2,
             vision_heads=2, vision_intermediate=64, sam2_image_size=128, mrope_section=[1, 2, 1, 1, 2, 1])


def test_click_scene_masks_are_the_objects():
    frames, masks = click_scene(5, 0, objects=3, size=128)
    assert frames.shape == (1, 3, 128, 128)
    assert 1 <= len(masks) <= 3 and masks.flatten(1).any(1).all()


def test_only_sam2_trains_and_the_config_asks_for_one_mask(tmp_path):
    torch.manual_seed(0)
    processor = build_processor(train_tokenizer(shapes_corpus(40), vocab_size=300))
    start = tmp_path / "start"
    save(build_model(build_config(processor.tokenizer, TINY), TINY_SAM2_YAML), processor, start,
         train_args(["--out", str(start)]), TINY, step=1)
    out = train_clicks(parse_args(["--init", str(start), "--out", str(tmp_path / "out"), "--steps", "3",
                                   "--eval-scenes", "1", "--log-every", "3", "--loss-size", "64"]))
    before, after = load_file(start / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.startswith("sam2.") for key in changed), sorted(changed)[:5]
    config = OmegaConf.load(out / "sam2_config.yaml").model
    assert config.multimask_output_in_sam is False and config.multimask_output_for_tracking is False
    model, _ = load_model(out)
    assert model.sam2.multimask_output_in_sam is False
