"""Training smoke tests: tokenizer/processor files, encoded inputs, a few steps that reduce the loss, and a
checkpoint that reloads through the inference loader."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unipixel.loading import load_model
from unipixel.modeling.presets import TINY_SAM2_YAML
from unipixel.processing.vision import load_processor, render_chat
from unipixel.training import shapes
from unipixel.training.codes import CodeBook
from unipixel.training.data import IGNORE, encode, training_sample
from unipixel.training.tokenizer import QWEN_SPECIAL_TOKENS, UNIPIXEL_TOKENS, build_processor, shapes_corpus, train_tokenizer
from unipixel.training.train import Sizes, build_config, build_model, save, parse_args, training_loss

TINY = Sizes(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vision_hidden=32, vision_depth=2,
             vision_heads=2, vision_intermediate=64, sam2_image_size=128, mrope_section=[1, 2, 1, 1, 2, 1])


@pytest.fixture(scope="module")
def processor():
    return build_processor(train_tokenizer(shapes_corpus(60), vocab_size=400))


def _sample(task: str, video: bool) -> shapes.Sample:
    mix = {task: 1.0}
    return training_sample(3, 0, mix, video_prob=1.0 if video else 0.0, max_frames=4)


def test_tokenizer_and_processor_files_round_trip(processor, tmp_path):
    tokenizer = processor.tokenizer
    special = list(QWEN_SPECIAL_TOKENS + UNIPIXEL_TOKENS)
    assert tokenizer.convert_tokens_to_ids(special) == list(range(len(tokenizer) - len(special), len(tokenizer)))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    processor.save_pretrained(tmp_path)
    loaded = load_processor(tmp_path)
    text = "Please segment [3] <|ref|> <1>-<2> <|mem|> as <|seg|>."
    assert loaded.tokenizer(text).input_ids == tokenizer(text).input_ids
    assert loaded.tokenizer.decode(tokenizer(text).input_ids) == text
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "<|seg|>."}, {"role": "user", "content": "Ok"}]
    assert render_chat(loaded, messages) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|>Hi?<|im_end|>\n<|im_start|>assistant\n<|seg|>.<|im_end|>\n"
        "<|im_start|>user\nOk<|im_end|>\n<|im_start|>assistant\n"
    )


def test_encoded_inputs_carry_prompts_and_answer_labels(processor):
    tokenizer = processor.tokenizer
    mem = encode(processor, _sample("mask_region", video=True), 128, sam_frames=2)
    ids = mem.inputs["input_ids"][0]
    assert int((ids == tokenizer.convert_tokens_to_ids("<|mem|>")).sum()) == int(mem.inputs["refer_mask"][0].flatten(2).any(-1).sum())
    answer = tokenizer.decode(mem.labels[0][mem.labels[0] != IGNORE])
    assert answer.endswith("<|im_end|>") and "Here is a video" not in answer
    assert mem.frames.shape[0] == 2
    ref = encode(processor, _sample("id_seg", video=False), 128)
    assert len(ref.inputs["point_coords"][0]) == int((ref.inputs["input_ids"] == tokenizer.convert_tokens_to_ids("<|ref|>")).sum())
    assert len(ref.targets) == int((ref.labels == tokenizer.convert_tokens_to_ids("<|seg|>")).sum()) > 0
    assert ref.targets[0].shape == (1, 128, 128) and ref.targets[0].any()


def test_few_steps_reduce_loss_and_checkpoint_reloads(processor, tmp_path):
    torch.manual_seed(0)
    model = build_model(build_config(processor.tokenizer, TINY), TINY_SAM2_YAML).train()
    example = encode(processor, _sample("referring_seg", video=True), 128, sam_frames=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    clicks = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(10):
        terms = training_loss(model, example, loss_size=64, clicks=clicks)
        assert {"lm", "vision_dc", "attributes", "focal", "dice", "iou", "object", "click_dice"} <= set(terms)
        loss = sum(terms.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses

    save(model.eval(), processor, tmp_path, parse_args(["--out", str(tmp_path)]), TINY, step=10)
    loaded, loaded_processor = load_model(tmp_path)
    inputs = encode(loaded_processor, _sample("referring_seg", video=False), 128, prompt_only=True)
    with torch.no_grad():
        expected = model(**inputs.inputs).logits
        out = loaded(**inputs.inputs, frames=inputs.frames, frame_size=inputs.frame_size)
    torch.testing.assert_close(out.logits, expected)
    generated = loaded.generate(**inputs.inputs, frames=inputs.frames, frame_size=inputs.frame_size, max_new_tokens=4)
    assert generated.sequences.shape[1] > inputs.inputs["input_ids"].shape[1]
    assert all(m.shape == (1, *inputs.frame_size) and m.dtype == torch.bool for m in generated.masks)
    assert np.isfinite(losses).all()


def test_workers_split_the_batch_like_accumulation(processor, tmp_path):
    """``--workers 2`` (two processes, gloo) takes the same optimiser steps as ``--accumulate 2`` in one process,
    and ``--init`` starts a new phase whose data stream continues after the init checkpoint's samples."""
    from safetensors.torch import load_file

    from unipixel.training.train import train

    torch.manual_seed(0)
    start = tmp_path / "start"
    model = build_model(build_config(processor.tokenizer, TINY), TINY_SAM2_YAML)
    save(model, processor, start, parse_args(["--out", str(start)]), TINY, step=3)
    book = tmp_path / "codes.pt"  # the code term (a fixed code book) rides along in both runs
    torch.save(CodeBook(model.sam2.sam_prompt_encoder.embed_dim).state_dict(), book)
    common = ["--init", str(start), "--steps", "2", "--warmup", "1", "--threads", "1", "--log-every", "1",
              "--max-frames", "4", "--sam-frames", "2", "--loss-size", "64", "--codes", str(book)]
    train(parse_args(["--out", str(tmp_path / "acc"), "--accumulate", "2", *common]))
    train(parse_args(["--out", str(tmp_path / "dp"), "--workers", "2", *common]))
    weights = [load_file(tmp_path / run / "model.safetensors") for run in ("acc", "dp")]
    initial = load_file(start / "model.safetensors")
    moved = [k for k in initial if not torch.equal(initial[k], weights[0][k])]
    assert len(moved) > len(initial) // 2  # the steps really trained
    for key in initial:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-4, atol=1e-5)
    assert set(weights[1]) == set(initial)
    recipe = json.loads((tmp_path / "dp" / "training_args.json").read_text())
    assert recipe["samples"] == 4 and recipe["history"][0]["step"] == 3
    logged = [json.loads(line) for line in (tmp_path / "dp" / "train_log.jsonl").read_text().splitlines()]
    acc_logged = [json.loads(line) for line in (tmp_path / "acc" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2] and all(r["phase"] == 1 for r in logged)
    assert logged[0]["lm"] == pytest.approx(acc_logged[0]["lm"], rel=1e-4)
    assert logged[0]["code"] == pytest.approx(acc_logged[0]["code"], rel=1e-4)


def test_sam2_and_the_tower_learn_at_their_own_scales_of_the_learning_rate(processor):
    from unipixel.training.train import make_optimizer

    model = build_model(build_config(processor.tokenizer, TINY), TINY_SAM2_YAML)
    optimizer = make_optimizer(model, lr=1e-3, scales={"sam2": 0.25, "vision": 0.1})
    part = {id(p): 0.25 for p in model.sam2.parameters()} | {id(p): 0.1 for p in model.model.visual.parameters()}
    for group in optimizer.param_groups:
        assert {part.get(id(p), 1.0) for p in group["params"]} == {group["scale"]}
    assert {g["scale"] for g in optimizer.param_groups} == {0.25, 0.1, 1.0}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_parts_taken_from_stage_checkpoints_are_recorded_with_their_stage(processor, tmp_path):
    from unipixel.training.recipe import record_stage
    from unipixel.training.train import train

    torch.manual_seed(0)
    start, donor = tmp_path / "start", tmp_path / "tower"
    save(build_model(build_config(processor.tokenizer, TINY), TINY_SAM2_YAML), processor, start,
         parse_args(["--out", str(start)]), TINY, step=1)
    save(build_model(build_config(processor.tokenizer, TINY), TINY_SAM2_YAML), processor, donor,
         parse_args(["--out", str(donor)]), TINY, step=1)
    record_stage(donor, donor, "vision", {"held_out_shape": 0.97})
    common = ["--steps", "1", "--warmup", "1", "--threads", "1", "--max-frames", "4", "--skip-masks"]
    train(parse_args(["--out", str(tmp_path / "joined"), "--init", str(start), "--vision-from", str(donor), *common]))
    recipe = json.loads((tmp_path / "joined" / "training_args.json").read_text())
    assert recipe["donors"] == {"vision_from": {"path": str(donor), "vision_stage": {"held_out_shape": 0.97}}}
    joined, _ = load_model(tmp_path / "joined")
    tower = load_model(donor)[0].model.visual.state_dict()
    moved = [k for k, v in joined.model.visual.state_dict().items() if not torch.equal(v, tower[k])]
    assert moved  # the taken tower then trained on
    train(parse_args(["--out", str(tmp_path / "next"), "--init", str(tmp_path / "joined"), *common]))
    later = json.loads((tmp_path / "next" / "training_args.json").read_text())
    assert "donors" not in later and later["history"][-1]["donors"] == recipe["donors"]


def test_sam2_batch_mode_is_saved_kept_and_refused_with_mask_losses(processor, tmp_path):
    from unipixel.training.train import train

    torch.manual_seed(0)
    start = tmp_path / "start"
    save(build_model(build_config(processor.tokenizer, TINY), TINY_SAM2_YAML), processor, start,
         parse_args(["--out", str(start)]), TINY, step=1)
    common = ["--steps", "1", "--warmup", "1", "--threads", "1", "--max-frames", "4"]
    train(parse_args(["--out", str(tmp_path / "batch"), "--init", str(start), "--sam2-batch-mode", "--skip-masks",
                      *common]))
    assert load_model(tmp_path / "batch")[0].config.sam2_batch_mode
    train(parse_args(["--out", str(tmp_path / "kept"), "--init", str(tmp_path / "batch"), "--skip-masks", *common]))
    assert load_model(tmp_path / "kept")[0].config.sam2_batch_mode
    with pytest.raises(ValueError, match="--skip-masks only"):
        train(parse_args(["--out", str(tmp_path / "masks"), "--init", str(tmp_path / "batch"), *common]))


def test_a_part_at_scale_zero_is_frozen_and_left_out(processor):
    from unipixel.training.train import make_optimizer

    model = build_model(build_config(processor.tokenizer, TINY), TINY_SAM2_YAML)
    optimizer = make_optimizer(model, 1e-3, {"vision": 0.0})
    kept = {id(p) for group in optimizer.param_groups for p in group["params"]}
    visual = list(model.model.visual.parameters())
    assert visual and not any(p.requires_grad or id(p) in kept for p in visual)
    assert all(p.requires_grad and id(p) in kept for n, p in model.named_parameters() if not n.startswith("model.visual."))
