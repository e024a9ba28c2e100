"""LLM- and SAM-side tensors: golden processor outputs, chat rendering, smart_resize, SAM 2 frames."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms import Normalize, Resize

from tests.conftest import GOLDEN, golden_cases, requires_golden
from unipixel.processing.media import load_media
from unipixel.processing.vision import (
    build_vision_inputs,
    decode_response,
    llm_frame_size,
    load_processor,
    pixel_budget,
    prepare_llm_frames,
    render_chat,
    sam2_frames,
    smart_resize,
    video_grid_thw,
)

CASES = golden_cases()
CHECKPOINT = GOLDEN / "checkpoints" / "tiny-tied"


def sam2_image_size(checkpoint: str) -> int:
    return json.loads((GOLDEN / "checkpoints" / checkpoint / "config.json").read_text())["sam2_image_size"]


@functools.lru_cache(maxsize=None)
def processor_for(checkpoint: str):
    return load_processor(GOLDEN / "checkpoints" / checkpoint)


@functools.lru_cache(maxsize=None)
def golden_media(case: str):
    folder = GOLDEN / "cases" / case
    return load_media(folder / "frames" if (folder / "frames").is_dir() else folder / "image.png")


def conversation(case: dict) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["text"]} for m in case["messages"]]


# ----------------------------------------------------------------------------------------- golden cases
@requires_golden
@pytest.mark.parametrize("name", sorted(CASES))
def test_chat_text_matches_golden(name: str) -> None:
    case, processor = CASES[name], processor_for(CASES[name]["checkpoint"])
    messages = conversation(case)
    assert render_chat(processor, messages) == case["prompt_text"]
    answered = messages + [{"role": "assistant", "content": case["answer"]}]
    assert render_chat(processor, answered, add_generation_prompt=False) == case["full_text"]


@requires_golden
@pytest.mark.parametrize("name", sorted(CASES))
def test_vision_inputs_match_golden(name: str) -> None:
    case, processor = CASES[name], processor_for(CASES[name]["checkpoint"])
    stored = load_file(GOLDEN / "cases" / name / "inputs.safetensors")
    media = golden_media(name)
    inputs = build_vision_inputs(processor, media.llm_frames, case["full_text"], case["sample_frames"])

    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"}
    for key in ("input_ids", "attention_mask", "video_grid_thw", "second_per_grid_ts"):
        assert inputs[key].dtype == stored[key].dtype, key
        assert torch.equal(inputs[key], stored[key]), key
    torch.testing.assert_close(inputs["pixel_values_videos"], stored["pixel_values_videos"], atol=1e-6, rtol=0)
    assert tuple(stored["video_grid_thw"][0].tolist()) == video_grid_thw(*media.size, media.num_frames)

    prompt = build_vision_inputs(processor, media.llm_frames, case["prompt_text"])["input_ids"]
    assert prompt.shape[1] == int(stored["prompt_length"])
    assert torch.equal(prompt, stored["input_ids"][:, : prompt.shape[1]])


@requires_golden
@pytest.mark.parametrize("name", sorted(CASES))
def test_sam2_frames_match_golden(name: str) -> None:
    case = CASES[name]
    stored = load_file(GOLDEN / "cases" / name / "inputs.safetensors")
    media = golden_media(name)
    frames = sam2_frames(media.frames, sam2_image_size(case["checkpoint"]))
    assert frames.dtype == torch.float32
    torch.testing.assert_close(frames, stored["frames"], atol=1e-6, rtol=0)
    assert list(media.size) == stored["frame_size"].tolist() == case["frame_size"]
    assert media.num_frames == case["n_frames"]


@requires_golden
@pytest.mark.parametrize("name", sorted(CASES))
def test_tokenizer_decodes_golden_ids_verbatim(name: str) -> None:
    case, processor = CASES[name], processor_for(CASES[name]["checkpoint"])
    ids = load_file(GOLDEN / "cases" / name / "inputs.safetensors")["input_ids"][0]
    text = processor.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert text.replace("<|video_pad|>" * text.count("<|video_pad|>"), "<|video_pad|>") == case["full_text"]


@requires_golden
def test_processor_special_tokens_match_config() -> None:
    processor = processor_for("tiny-tied")
    config = json.loads((CHECKPOINT / "config.json").read_text())
    tokens = ["<|ref|>", "<|seg|>", "<|mem|>", "<|video_pad|>"]
    ids = processor.tokenizer.convert_tokens_to_ids(tokens)
    assert ids == [config["ref_token_id"], config["seg_token_id"], config["mem_token_id"], config["video_token_id"]]
    assert processor.tokenizer.eos_token_id == config["eos_token_id"]


@requires_golden
def test_decode_response_drops_only_one_final_eos() -> None:
    processor = processor_for("tiny-tied")
    tokenizer = processor.tokenizer
    ids = tokenizer("[0] <|seg|>  [1] <|seg|>.").input_ids
    eos, eot = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert decode_response(processor, ids + [eos]) == "[0] <|seg|>  [1] <|seg|>."
    assert decode_response(processor, torch.tensor([ids + [eos, eos]])) == "[0] <|seg|>  [1] <|seg|>.<|im_end|>"
    assert decode_response(processor, ids + [eos, eot]).endswith("<|im_end|><|endoftext|>")


@requires_golden
def test_render_chat_multi_turn_and_explicit_system() -> None:
    processor = processor_for("tiny-tied")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Segment it."},
        {"role": "assistant", "content": "Sure, it is <|seg|>."},
        {"role": "user", "content": "And the other?"},
    ]
    assert render_chat(processor, messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Segment it.<|im_end|>\n"
        "<|im_start|>assistant\nSure, it is <|seg|>.<|im_end|>\n"
        "<|im_start|>user\nAnd the other?<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="user turn"):
        render_chat(processor, [{"role": "system", "content": "x"}])


@requires_golden
def test_build_vision_inputs_needs_one_video_placeholder() -> None:
    processor = processor_for("tiny-tied")
    with pytest.raises(ValueError, match="exactly one"):
        build_vision_inputs(processor, [Image.new("RGB", (64, 64))], "no video here")


# ----------------------------------------------------------------------------------------- resizing
@pytest.mark.parametrize(
    ("height", "width", "frames", "size", "grid"),
    [  # the spec's worked examples (§5.2.2), demo setting S = 16
        (1080, 1920, 16, (336, 588), (8, 24, 42)),
        (480, 854, 16, (308, 588), (8, 22, 42)),
        (360, 640, 10, (336, 588), (5, 24, 42)),
        (480, 640, 1, (476, 644), (1, 34, 46)),
        (1024, 1024, 1, (1036, 1036), (1, 74, 74)),
    ],
)
def test_smart_resize_worked_examples(height, width, frames, size, grid) -> None:
    assert llm_frame_size(height, width, frames) == size
    assert video_grid_thw(height, width, frames) == grid


def test_smart_resize_checks_min_before_max() -> None:
    # Raising to min_pixels overshoots max_pixels, so the reference shrinks again; 5.24's copy
    # (max check first, as an elif) would return (56, 3612), above max_pixels.
    assert smart_resize(19, 2432, min_pixels=100352, max_pixels=200704) == (28, 5068)
    assert smart_resize(10, 10) == (336, 336)  # tiny input: raised to at least 128 tokens
    assert smart_resize(5, 900) == (28, 4256)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2001)


def test_pixel_budget_scales_with_frame_count() -> None:
    assert pixel_budget(1) == (100352, 3211264)
    assert pixel_budget(16) == (100352, 200704)
    assert pixel_budget(5) == (100352, 200704 * 3)
    assert pixel_budget(40) == (100352, 200704)  # more frames than S: floored at one share


def test_prepare_llm_frames_resizes_bicubic_and_pads_odd_counts() -> None:
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (100, 150, 3), dtype=np.uint8)) for _ in range(3)]
    prepared = prepare_llm_frames(frames)
    assert len(prepared) == 4 and prepared[3] is prepared[2]
    h, w = llm_frame_size(100, 150, 3)
    assert all(frame.size == (w, h) for frame in prepared)
    expected = frames[1].resize((w, h), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(prepared[1]), np.asarray(expected))
    assert len(prepare_llm_frames(frames[:1])) == 2
    with pytest.raises(ValueError, match="same size"):
        prepare_llm_frames([frames[0], frames[0].resize((10, 10))])


def test_sam2_frames_equal_the_batched_reference_transform() -> None:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 45, 70, 3), dtype=np.uint8)
    reference = torch.from_numpy(frames).float() / 255
    reference = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(Resize((32, 32))(reference.permute(0, 3, 1, 2)))
    out = sam2_frames(frames, 32)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, reference)
