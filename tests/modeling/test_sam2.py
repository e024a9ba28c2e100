"""UniPixel's SAM 2 (unipixel/modeling/sam2.py) against stock `sam2` 1.1.0 and the spec.

A tiny SAM 2 is built from the golden `tiny-tied/sam2_config.yaml` with seeded random weights
(perturbed so that no parameter is trivially zero and objects are detected on every frame).
"""
from __future__ import annotations

import copy
import json
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from sam2.modeling.position_encoding import PositionEmbeddingRandom
from sam2.sam2_video_predictor import SAM2VideoPredictor

from tests.conftest import GOLDEN, MANIFESTS, requires_golden, requires_manifests
from unipixel.modeling.sam2 import (
    FourierPositionEncoding,
    FrameFeatures,
    UniPixelSAM2,
    build_sam2,
    rename_legacy_sam2_keys,
)

TINY_YAML = GOLDEN / "checkpoints" / "tiny-tied" / "sam2_config.yaml"
IMAGE_SIZE = 128
HIDDEN_DIM = 32  # tiny SAM 2 hidden dim (neck d_model)
H, W, T = 45, 61, 5  # odd original frame size


@pytest.fixture(scope="module")
def model() -> UniPixelSAM2:
    torch.manual_seed(0)
    sam = build_sam2("configs/golden_tiny-tied", IMAGE_SIZE, TINY_YAML)
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(0.05 * torch.randn_like(p))
        sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(1.0)
    return sam


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return torch.randn(T, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def hidden() -> torch.Tensor:
    return torch.randn(3, 2, HIDDEN_DIM, generator=torch.Generator().manual_seed(2))


def stock_twin(model: UniPixelSAM2) -> SAM2VideoPredictor:
    """The stock video predictor with the same config and weights."""
    config = OmegaConf.load(TINY_YAML).model
    config._target_ = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    config.image_size = IMAGE_SIZE
    config.add_all_frames_to_correct_as_cond = True
    stock = instantiate(config).eval()
    stock.load_state_dict(model.state_dict())
    return stock


def encode_frame_by_frame(model: UniPixelSAM2, images: torch.Tensor) -> FrameFeatures:
    """Features computed one frame at a time, as stock does (batched convolutions differ in the last bit)."""
    per_frame = [model.encode_frames(images[t : t + 1]) for t in range(len(images))]
    fpn = [torch.cat(level) for level in zip(*(f.backbone_fpn for f in per_frame))]
    return FrameFeatures(images, fpn, per_frame[0].vision_pos_enc)


def propagate(stock: SAM2VideoPredictor, state: dict) -> torch.Tensor:
    """Stock propagation -> (objects, T, H, W) logits, with memory kept in float32 like the reference (N13).

    Stock rounds memory features to bfloat16 even for a float32 model; the reference (and ours) keeps
    them in the model dtype, so the stock run gets that one cast neutralised for the comparison.
    """
    with mock.patch.object(torch, "bfloat16", torch.float32):
        out = {t: masks[:, 0] for t, _, masks in stock.propagate_in_video(state)}
    return torch.stack([out[t] for t in range(len(out))], dim=1)


def test_legacy_key_rename_touches_only_the_layer_scale():
    keys = {
        "sam2.memory_encoder.fuser.layers.0.weight": 0,
        "sam2.memory_encoder.fuser.layers.1.weight": 1,
        "sam2.memory_encoder.fuser.layers.0.dwconv.weight": 2,
        "sam2.memory_encoder.fuser.layers.1.norm.weight": 3,
        "sam2.memory_encoder.fuser.layers.1.pwconv2.weight": 4,
        "ref_encoder.point_embeddings.0.weight": 5,
    }
    stock = rename_legacy_sam2_keys(keys)
    assert stock["sam2.memory_encoder.fuser.layers.0.gamma"] == 0
    assert stock["sam2.memory_encoder.fuser.layers.1.gamma"] == 1
    renamed = {"sam2.memory_encoder.fuser.layers.0.gamma", "sam2.memory_encoder.fuser.layers.1.gamma"}
    assert set(stock) - set(keys) == renamed
    assert rename_legacy_sam2_keys(stock, to_legacy=True) == keys


@requires_manifests
def test_meta_build_matches_released_3b_manifest():
    with torch.device("meta"):
        sam = build_sam2("configs/sam2.1_hiera_b+", 768)
    assert isinstance(sam, UniPixelSAM2) and not sam.training
    assert all(t.is_meta for t in sam.state_dict().values())
    saved = json.loads((MANIFESTS / "unipixel-3b.json").read_text())["saved_keys"]
    expected = {k.removeprefix("sam2."): shape for k, shape in saved.items() if k.startswith("sam2.")}
    ours = {k: list(t.shape) for k, t in rename_legacy_sam2_keys(sam.state_dict(), to_legacy=True).items()}
    assert ours == expected
    assert sam.sam_image_embedding_size == 48 and sam.image_size == 768


@requires_golden
def test_meta_built_model_runs_after_loading(model, frames, hidden):
    with torch.device("meta"):
        sam = build_sam2("configs/golden_tiny-tied", IMAGE_SIZE, TINY_YAML)
    sam.load_state_dict(model.state_dict(), assign=True)  # RoPE tables are not state: still meta
    features = model.encode_frames(frames)
    expected = model.track(features, (H, W), hidden[:1])
    assert torch.equal(sam.track(sam.encode_frames(frames), (H, W), hidden[:1]).logits, expected.logits)


@pytest.mark.parametrize("name", ["sam2.1_hiera_t", "configs/sam2.1_hiera_s.yaml"])
def test_build_maps_released_config_names(name):
    with torch.device("meta"):
        sam = build_sam2(name, 512)
    assert sam.image_size == 512 and sam.add_all_frames_to_correct_as_cond
    assert isinstance(sam.sam_prompt_encoder.pe_layer, FourierPositionEncoding)
    with pytest.raises(ValueError):
        build_sam2("configs/sam2_hiera_x", 512)


def test_fourier_encoding_matches_stock_in_fp32_and_rounds_like_reference_in_bf16():
    torch.manual_seed(0)
    stock = PositionEmbeddingRandom(16)
    ours = FourierPositionEncoding(16)
    ours.load_state_dict(stock.state_dict())
    coords = torch.rand(2, 3, 2) * 100
    assert torch.equal(ours((7, 5)), stock((7, 5)))
    assert torch.equal(ours.forward_with_coords(coords, (100, 120)), stock.forward_with_coords(coords, (100, 120)))

    ours.to(torch.bfloat16)  # the buffer now holds bf16 values; the math still runs in fp32
    stock.positional_encoding_gaussian_matrix = ours.positional_encoding_gaussian_matrix.float()
    assert ours((7, 5)).dtype == torch.bfloat16
    assert torch.equal(ours((7, 5)), stock((7, 5)).to(torch.bfloat16))
    expected = stock.forward_with_coords(coords, (100, 120)).bfloat16()
    assert torch.equal(ours.forward_with_coords(coords, (100, 120)), expected)


@requires_golden
def test_point_prompts_reproduce_stock_predictor_exactly(model, tmp_path):
    """Our state, feature cache, head overrides and output gathering = stock, given the same features."""
    rng = np.random.default_rng(0)
    for t in range(T):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(tmp_path / f"{t:05d}.jpg")
    stock = stock_twin(model)
    stock_state = stock.init_state(str(tmp_path))
    points = [[[10.0, 20.0]], [[40.0, 5.0]]]
    for obj_id, point in enumerate(points):
        stock.add_new_points_or_box(stock_state, 0, obj_id, points=point, labels=[1])
    expected = propagate(stock, stock_state)

    features = encode_frame_by_frame(model, stock_state["images"])
    for obj_id, point in enumerate(points):
        state = model.init_state(features, (H, W))
        model.add_new_points_or_box(state, 0, 0, points=point, labels=[1])
        ours = model._collect([state])
        assert torch.equal(ours.logits[0], expected[obj_id])
        stock_out = stock_state["output_dict_per_obj"][obj_id]
        outs = [stock_out["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] for t in range(T)]
        scores = [out["object_score_logits"] for out in outs]
        assert torch.equal(ours.object_score[0], torch.cat(scores)[:, 0])
    assert (expected > 0).any() and (expected <= 0).any()  # the comparison is not vacuous

    # batching the encoder (16-frame chunks) only changes the last bit of the batched convolutions
    batched = model.encode_frames(stock_state["images"])
    for a, b in zip(batched.backbone_fpn, features.backbone_fpn):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@requires_golden
def test_refine_is_stock_click_correction_in_frame_pixels(model, tmp_path):
    rng = np.random.default_rng(1)
    for t in range(T):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(tmp_path / f"{t:05d}.jpg")
    stock = stock_twin(model)
    stock_state = stock.init_state(str(tmp_path))
    stock.add_new_points_or_box(stock_state, 0, 0, points=[[20.0, 30.0]], labels=[1])
    propagate(stock, stock_state)
    clicks = [(30.0, 22.0, 0), (12.0, 40.0, 1)]
    stock.add_new_points_or_box(stock_state, 2, 0, points=[c[:2] for c in clicks], labels=[c[2] for c in clicks])
    expected = propagate(stock, stock_state)[0]

    state = model.init_state(encode_frame_by_frame(model, stock_state["images"]), (H, W))
    model.add_new_points_or_box(state, 0, 0, points=[[20.0, 30.0]], labels=[1])
    before = model._collect([state])
    after = model.refine(before.states[0], 2, clicks)
    assert torch.equal(after.logits[0], expected)
    assert after.states[0][0] is state and 2 in state["output_dict_per_obj"][0]["cond_frame_outputs"]
    changed = (after.logits - before.logits).abs().amax(dim=(2, 3))[0]
    assert changed[0] == 0 and changed[2] > 0  # the prompted frame is kept, the clicked one is corrected


@requires_golden
def test_hidden_tokens_follow_two_padding_points_on_the_first_frame_only(model, frames, hidden):
    calls = []
    handle = model.sam_mask_decoder.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True
    )
    try:
        model.track(model.encode_frames(frames), (H, W), hidden[:1])
    finally:
        handle.remove()
    assert len(calls) == T and all(c["multimask_output"] for c in calls)
    not_a_point = model.sam_prompt_encoder.not_a_point_embed.weight[0]
    first = calls[0]["sparse_prompt_embeddings"]
    assert first.shape == (1, 4, HIDDEN_DIM)
    assert torch.equal(first[0, 0], not_a_point) and torch.equal(first[0, 1], not_a_point)
    assert torch.equal(first[0, 2:], hidden[0])
    for c in calls[1:]:  # tracked frames: memory only, no hidden tokens
        assert torch.equal(c["sparse_prompt_embeddings"], not_a_point.expand(1, 2, -1))


@requires_golden
def test_frames_are_encoded_once_in_chunks_of_16_for_all_objects(model, hidden):
    batch_sizes = []
    handle = model.image_encoder.register_forward_pre_hook(lambda module, args: batch_sizes.append(len(args[0])))
    try:
        features = model.encode_frames(torch.randn(17, 3, IMAGE_SIZE, IMAGE_SIZE))
        model.track(features, (H, W), hidden[:2])
        model.track(features, (H, W), hidden[2:])  # a follow-up turn reuses the cached features
    finally:
        handle.remove()
    assert batch_sizes == [16, 1]
    assert [f.shape[0] for f in features.backbone_fpn] == [17, 17, 17]


@requires_golden
def test_objects_tracked_together_equal_objects_tracked_alone(model, frames, hidden):
    """One batched pass over N objects gives each object its own result (up to float rounding of batched
    products), and each object's state refines like one tracked alone."""
    features = model.encode_frames(frames)
    together = model.track(features, (H, W), hidden)
    alone = [model.track(features, (H, W), hidden[i : i + 1]) for i in range(len(hidden))]
    for name in ("logits", "iou", "object_score"):
        torch.testing.assert_close(getattr(together, name), torch.cat([getattr(r, name) for r in alone]),
                                   rtol=1e-4, atol=1e-4)
    masks, masks_alone = together.logits > 0, torch.cat([r.logits for r in alone]) > 0
    assert (masks == masks_alone).float().mean() > 0.9999
    assert not torch.equal(together.logits[0], together.logits[1])  # hidden tokens matter
    clicks = [(W * 0.3, H * 0.4, 1), (W * 0.7, H * 0.6, 0)]
    refined = model.refine(together.states[1], 2, clicks)
    refined_alone = model.refine(alone[1].states[0], 2, clicks)
    torch.testing.assert_close(refined.logits, refined_alone.logits, rtol=1e-4, atol=1e-4)
    assert refined.logits.shape == (1, T, H, W)


@requires_golden
def test_outputs_are_low_res_logits_resized_directly_to_odd_frame_sizes(model, frames, hidden):
    result = model.track(model.encode_frames(frames), (37, 53), hidden[:2])
    assert result.logits.shape == (2, T, 37, 53) and result.iou.shape == result.object_score.shape == (2, T)
    assert len(result.states) == 2 and all(len(s) == 1 for s in result.states)
    outputs = result.states[1][0]["output_dict_per_obj"][0]
    for t in range(T):
        out = outputs["cond_frame_outputs"].get(t) or outputs["non_cond_frame_outputs"][t]
        assert out["pred_masks"].shape[-2:] == (IMAGE_SIZE // 4, IMAGE_SIZE // 4)
        resized = F.interpolate(out["pred_masks"], size=(37, 53), mode="bilinear", align_corners=False)
        assert torch.equal(result.logits[1, t], resized[0, 0])
        assert torch.equal(result.object_score[1, t], out["object_score_logits"][0, 0])
    assert ((result.iou > 0) & (result.iou < 1)).all()


@requires_golden
def test_objects_scored_absent_are_gated_to_no_obj_score(model, frames, hidden):
    sam = copy.deepcopy(model)
    with torch.no_grad():
        sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(-100.0)
    result = sam.track(sam.encode_frames(frames), (H, W), hidden[:1])
    assert (result.object_score < 0).all() and (result.logits < -1000).all()
    for outputs in result.states[0][0]["output_dict_per_obj"][0].values():
        assert all((out["pred_masks"] == -1024).all() for out in outputs.values())


@requires_golden
def test_batch_mode_segments_every_frame_on_its_own(model, frames, hidden):
    features = model.encode_frames(frames)
    result = model.track(features, (H, W), hidden[:2], batch_mode=True)
    assert result.logits.shape == (2, T, H, W) and all(len(s) == T for s in result.states)
    for t in range(T):
        alone = model.track(features.select(t), (H, W), hidden[:2])
        assert torch.equal(result.logits[:, t], alone.logits[:, 0])
    video = model.track(features, (H, W), hidden[:2])
    assert torch.equal(result.logits[:, 0], video.logits[:, 0]) and not torch.equal(result.logits, video.logits)

    refined = model.refine(result.states[0], 3, [(20.0, 20.0, 0)])
    changed = (refined.logits[0] - result.logits[0]).abs().amax(dim=(1, 2))
    assert changed[3] > 0 and (changed[[0, 1, 2, 4]] == 0).all()


@requires_golden
def test_bf16_runs_in_pure_bf16(model, frames, hidden):
    reference = model.track(model.encode_frames(frames), (H, W), hidden[:1])
    sam = copy.deepcopy(model).to(torch.bfloat16)
    leaks = []

    def no_fp32(name):
        def hook(module, args, kwargs):
            for value in [*args, *kwargs.values()]:
                for x in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.bfloat16:
                        leaks.append((name, x.dtype, tuple(x.shape)))

        return hook

    for name in ("sam_mask_decoder", "memory_attention", "memory_encoder", "obj_ptr_proj", "obj_ptr_tpos_proj"):
        getattr(sam, name).register_forward_pre_hook(no_fp32(name), with_kwargs=True)
    features = sam.encode_frames(frames)
    result = sam.track(features, (H, W), hidden[:1])
    refined = sam.refine(result.states[0], 2, [(30.0, 22.0, 0), (12.0, 40.0, 1)])
    assert not leaks
    assert {x.dtype for x in features.backbone_fpn + features.vision_pos_enc} == {torch.bfloat16}
    for r in (result, refined):
        assert r.logits.dtype == r.iou.dtype == r.object_score.dtype == torch.bfloat16
    for outputs in result.states[0][0]["output_dict_per_obj"][0].values():
        for out in outputs.values():
            for key in ("pred_masks", "maskmem_features", "obj_ptr", "object_score_logits", "iou"):
                assert out[key].dtype == torch.bfloat16, key
    agreement = ((result.logits > 0) == (reference.logits > 0)).float().mean()
    assert agreement > 0.99
