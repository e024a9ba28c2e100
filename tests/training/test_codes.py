"""Stage 1 (SAM 2 learns codes and clicks): code targets, what trains, what is saved, and the code term of ``train``."""
from __future__ import annotations

import json

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from unipixel.loading import load_model
from unipixel.modeling.presets import TINY_SAM2_YAML
from unipixel.training import shapes
from unipixel.training.codes import CODES_FILE, code_scene, load_codebook, parse_args, train_codes
from unipixel.training.data import encode, training_sample
from unipixel.training.tokenizer import build_processor, shapes_corpus, train_tokenizer
from unipixel.training.train import Sizes, build_config, build_model, save, training_loss
from unipixel.training.train import parse_args as train_args

TINY = Sizes(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vision_hidden=32, vision_depth=2,
             vision_heads=2, vision_intermediate=64, sam2_image_size=128, mrope_section=[1, 2, 1, 1, 2, 1])
ANY_COLOUR, ANY_SHAPE = len(shapes.COLOURS_L), len(shapes.SHAPES)


def test_a_code_targets_every_object_it_matches():
    checked = 0
    for index in range(40):
        frames, targets, codes, own = code_scene(5, index, 128, video_prob=0.5)
        assert frames.shape[1:] == (3, 128, 128) and targets.shape == own.shape == (len(codes), len(frames), 128, 128)
        assert own[:, 0].flatten(1).any(1).all()  # every prompted object is on frame 0
        assert (targets & own).flatten(1).sum(1).equal(own.flatten(1).sum(1))  # its own object is in the target
        for (colour, shape), target, mine in zip(codes.tolist(), targets, own):
            assert (colour, shape) != (ANY_COLOUR, ANY_SHAPE)
            checked += bool((target & ~mine).any())  # the code also matches another object
    assert checked > 0  # "any" codes often cover several objects


def test_codes_name_each_targets_own_colour_and_shape():
    for index in range(60):
        for task in ("referring_seg", "reasoning_seg", "id_seg", "multi_turn"):
            sample = shapes.sample_at(8, index, task=task)
            for code, target in zip(sample.seg_codes(), sample.seg_targets, strict=True):
                obj = sample.objects[target[0]]  # answers complete the asked words; `[3] <|seg|>` reads its object
                assert code == (shapes.COLOURS_L.index(obj.colour), shapes.SHAPES.index(obj.shape)), sample.turns


def _tiny_start(tmp_path):
    processor = build_processor(train_tokenizer(shapes_corpus(40), vocab_size=300))
    start = tmp_path / "start"
    save(build_model(build_config(processor.tokenizer, TINY), TINY_SAM2_YAML), processor, start,
         train_args(["--out", str(start)]), TINY, step=1)
    return start, processor


def test_only_sam2_trains_and_the_code_book_is_saved_beside(tmp_path):
    torch.manual_seed(0)
    start, _ = _tiny_start(tmp_path)
    out = train_codes(parse_args(["--init", str(start), "--out", str(tmp_path / "out"), "--steps", "3",
                                  "--video-prob", "0.5", "--click-weight", "0.5", "--eval-scenes", "1",
                                  "--log-every", "3", "--loss-size", "64", "--threads", "1"]))
    before, after = load_file(start / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.startswith("sam2.") for key in changed), sorted(changed)[:5]
    config = OmegaConf.load(out / "sam2_config.yaml").model  # the shapes SAM 2: one mask per prompt
    assert config.multimask_output_in_sam is False and config.multimask_output_for_tracking is False
    model, _ = load_model(out)
    book = load_codebook(out / CODES_FILE)
    assert book(torch.tensor([[0, ANY_SHAPE]])).shape == (1, 2, model.sam2.sam_prompt_encoder.embed_dim)
    recipe = json.loads((out / "training_args.json").read_text())
    assert recipe["step"] == 1 and recipe["codes_stage"]["args"]["steps"] == 3


def test_a_given_code_book_stays_frozen(tmp_path):
    torch.manual_seed(0)
    start, _ = _tiny_start(tmp_path)
    args = ["--init", str(start), "--steps", "2", "--eval-scenes", "1", "--log-every", "2", "--loss-size", "64",
            "--threads", "1"]
    first = train_codes(parse_args(args + ["--out", str(tmp_path / "first")]))
    second = train_codes(parse_args(args + ["--out", str(tmp_path / "second"), "--book", str(first / CODES_FILE),
                                            "--seed", "1"]))
    kept, given = torch.load(second / CODES_FILE, weights_only=True), torch.load(first / CODES_FILE, weights_only=True)
    assert all(torch.equal(kept[key], given[key]) for key in given)
    before, after = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert any(not torch.equal(before[key], after[key]) for key in before if key.startswith("sam2."))


def test_the_code_term_trains_seg_head_towards_the_named_code(tmp_path):
    torch.manual_seed(0)
    start, processor = _tiny_start(tmp_path)
    model, _ = load_model(start)
    book = load_codebook(train_codes(parse_args(["--init", str(start), "--out", str(tmp_path / "codes"), "--steps", "1",
                                                 "--eval-scenes", "1", "--loss-size", "64", "--threads", "1"])) / CODES_FILE)
    example = encode(processor, training_sample(3, 0, {"referring_seg": 1.0}, 0.0, 4), 128)
    optimizer = torch.optim.AdamW(model.seg_head.parameters(), lr=1e-2)
    clicks = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        terms = training_loss(model.train(), example, 64, clicks, masks=False, book=book)
        assert set(terms) >= {"lm", "code"} and "focal" not in terms
        optimizer.zero_grad()
        terms["code"].backward()
        optimizer.step()
        losses.append(terms["code"].item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_take_sam2_joins_stages_and_refuses_another_sam2(tmp_path):
    from unipixel.training.train import take_sam2

    torch.manual_seed(0)
    start, processor = _tiny_start(tmp_path)
    donor = train_codes(parse_args(["--init", str(start), "--out", str(tmp_path / "codes"), "--steps", "1",
                                    "--eval-scenes", "1", "--loss-size", "64", "--threads", "1"]))
    model, _ = load_model(start)
    take_sam2(model, donor)
    donated = load_model(donor)[0].sam2.state_dict()
    for key, value in model.sam2.state_dict().items():
        assert torch.equal(value, donated[key]), key
    assert model.sam2.multimask_output_in_sam is False
    save(model, processor, tmp_path / "joined", train_args(["--out", str(tmp_path / "joined")]), TINY, step=1)
    assert OmegaConf.load(tmp_path / "joined" / "sam2_config.yaml").model.multimask_output_in_sam is False
    bigger = Sizes(**{**TINY.__dict__, "sam2_image_size": 256})
    other = build_model(build_config(processor.tokenizer, bigger), TINY_SAM2_YAML)
    try:
        take_sam2(other, donor)
    except ValueError as error:
        assert "differs" in str(error)
    else:
        raise AssertionError("a SAM 2 of another size was taken")
