"""Every path of the model on tiny random configurations: images and videos, seg/ref/mem, several objects,
odd frame counts, generation with masks, and the stateless mask API."""
from __future__ import annotations

import pytest
import torch

from unipixel.modeling.positions import mrope_position_ids
from unipixel.modeling.presets import TINY_SAM2_YAML, tiny_config
from unipixel.modeling.unipixel import UniPixelForConditionalGeneration, seg_prompt_positions


@pytest.fixture(scope="module")
def model() -> UniPixelForConditionalGeneration:
    torch.manual_seed(0)
    model = UniPixelForConditionalGeneration(tiny_config(), sam2_yaml=TINY_SAM2_YAML).eval()
    model.generation_config.do_sample = False
    return model


def video_inputs(model, frames: int, height: int = 56, width: int = 84, text: list[int] | None = None) -> dict:
    """Hand-built inputs: system text, one video block, then ``text`` ids (no tokenizer needed)."""
    cfg = model.config
    t = (frames + 1) // 2
    gh, gw = height // 14, width // 14
    n_tokens = t * (gh // 2) * (gw // 2)
    ids = [5, 6, 7, cfg.vision_start_token_id] + [cfg.video_token_id] * n_tokens + [cfg.vision_end_token_id] + (text or [8, 9])
    return {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "pixel_values_videos": torch.randn(t * gh * gw, 3 * 2 * 14 * 14),
        "video_grid_thw": torch.tensor([[t, gh, gw]]),
        "second_per_grid_ts": torch.tensor([1.0]),
        "frames": torch.randn(frames, 3, 128, 128),
        "frame_size": (height + 3, width + 5),
    }


@pytest.mark.parametrize("frames", [1, 5, 6])
def test_one_mask_per_seg_token_at_original_size(model, frames: int) -> None:
    seg = model.config.seg_token_id
    inputs = video_inputs(model, frames, text=[8, seg, 9, 10, seg, 11])
    with torch.inference_mode():
        out = model(**inputs)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert len(out.masks) == 2
    for mask in out.masks:
        assert mask.dtype == torch.bool and mask.shape == (frames, 59, 89)
    scores = out.segmentation.scores[0]
    assert scores["iou"].shape == (frames,) and scores["object_score"].shape == (frames,)
    assert out.segmentation.prompts.shape == (2, model.config.sam2_hidden_tokens, model.sam2.hidden_dim)


def test_masks_follow_the_state_before_each_seg(model) -> None:
    """Different preceding states give different SAM 2 prompts (mask of the k-th <|seg|> uses position k-1)."""
    seg = model.config.seg_token_id
    inputs = video_inputs(model, 2, text=[8, seg, 9, 10, 12, seg])
    with torch.inference_mode():
        out = model(**inputs, return_pre_norm_states=True)
    positions = seg_prompt_positions(inputs["input_ids"][0], seg)
    assert (inputs["input_ids"][0, positions + 1] == seg).all()
    expected = model.seg_head(out["pre_norm_states"][0, positions]).view(2, 2, -1)
    torch.testing.assert_close(out.segmentation.prompts, expected)
    assert not torch.allclose(expected[0], expected[1])


def test_ref_and_mem_prompts_change_the_logits_and_must_match_token_counts(model) -> None:
    cfg = model.config
    inputs = video_inputs(model, 4, text=[8, cfg.ref_token_id, 9, cfg.mem_token_id, cfg.mem_token_id, 10])
    t, gh, gw = inputs["video_grid_thw"][0].tolist()
    refer = torch.zeros(t, 1, gh // 2, gw // 2, dtype=torch.bool)
    refer[:, 0, 0, :2] = True  # one object on both temporal slots -> two <|mem|> rows
    prompts = dict(
        point_coords=[[torch.tensor([[[30.0, 40.0], [90.0, 100.0]]])]],
        point_labels=[[torch.tensor([[2, 3]], dtype=torch.int32)]],
        point_frames=[[torch.tensor([3])]],
        refer_mask=[refer],
    )
    with torch.inference_mode():
        with_prompts = model(**inputs, **prompts).logits
        moved = dict(prompts, point_frames=[[torch.tensor([0])]])
        other_frame = model(**inputs, **moved).logits
    assert not torch.allclose(with_prompts, other_frame), "the prompt frame must reach the <|ref|> embedding"
    with pytest.raises(ValueError, match="does not fit the video grid"):
        model(**inputs, **dict(prompts, refer_mask=[refer[:1]]))
    one_slot = refer.clone()
    one_slot[1] = False
    with pytest.raises(ValueError, match="2 placeholder tokens .* but 1 embeddings"):
        model(**inputs, **dict(prompts, refer_mask=[one_slot]))


def test_generate_returns_masks_of_generated_seg_tokens(model) -> None:
    inputs = video_inputs(model, 3)
    seg = model.config.seg_token_id
    bias = torch.zeros(model.config.text_config.vocab_size)
    bias[seg] = 1e4  # force <|seg|> as every generated token
    hook = model.lm_head.register_forward_hook(lambda _m, _a, out: out + bias)
    try:
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3)
    finally:
        hook.remove()
    prompt_length = inputs["input_ids"].shape[1]
    assert out.sequences[0, prompt_length:].tolist() == [seg] * 3
    assert len(out.masks) == 3  # the last one exists although generation stopped right after it
    assert all(m.shape == (3, 59, 89) for m in out.masks)


def test_positions_follow_the_4_53_rule() -> None:
    """Text after a video starts at 1 + the block's largest coordinate (5.x would start at max(h, w))."""
    ids = torch.tensor([[1, 2, 90] + [91] * (16 * 2 * 2) + [92, 3, 4]])
    positions, delta = mrope_position_ids(
        ids, vision_start_token_id=90, image_token_id=93, video_token_id=91,
        video_grid_thw=torch.tensor([[16, 4, 4]]), second_per_grid_ts=torch.tensor([1.0]),
    )
    video = positions[:, 0, 3:3 + 64]
    assert video[0].max().item() == 3 + 2 * 15  # temporal: s + 2 * tau
    assert positions[0, 0, 3 + 64].item() == 3 + 2 * 15 + 1  # <|vision_end|> right after the block
    assert delta.item() == positions.max().item() + 1 - ids.shape[1]
