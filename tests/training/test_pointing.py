"""Pointing supervision: targets name the prompted object's tokens, the recomputed attention is the model's own,
and the terms train the `<|ref|>` path."""
from __future__ import annotations

import pytest
import torch

from unipixel.training import shapes
from unipixel.training.data import encode, training_sample
from unipixel.training.pointing import ATTENTION_LAYER, PointingHeads, capture, head_attention
from unipixel.training.tokenizer import build_processor, shapes_corpus, train_tokenizer
from unipixel.training.train import Sizes, build_config, build_model, training_loss

TINY = Sizes(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vision_hidden=32, vision_depth=2,
             vision_heads=2, vision_intermediate=64, sam2_image_size=128, mrope_section=[1, 2, 1, 1, 2, 1])


@pytest.fixture(scope="module")
def processor():
    return build_processor(train_tokenizer(shapes_corpus(60), vocab_size=400))


@pytest.fixture(scope="module")
def model(processor):
    torch.manual_seed(0)
    return build_model(build_config(processor.tokenizer, TINY))


def _encoded(processor, task: str, video: bool, index: int = 0):
    sample = training_sample(5, index, {task: 1.0}, video_prob=1.0 if video else 0.0, max_frames=6)
    return sample, encode(processor, sample, 128)


@pytest.mark.parametrize("task,video", [("ref_caption", False), ("ref_caption", True), ("id_seg", False)])
def test_targets_are_the_prompted_objects_tokens(processor, task, video):
    sample, example = _encoded(processor, task, video)
    targets = example.pointing
    ids = example.inputs["input_ids"][0]
    tokenizer = processor.tokenizer
    video_id, ref_id = tokenizer.convert_tokens_to_ids(["<|video_pad|>", "<|ref|>"])
    assert torch.equal(targets.positions, torch.nonzero(ids == ref_id).flatten())
    assert len(targets.tokens) == len(sample.ref_prompts) == len(targets.positions)
    t, h, w = (int(v) for v in example.inputs["video_grid_thw"][0])
    h, w = h // 2, w // 2
    first_video = int(torch.nonzero(ids == video_id)[0])
    for prompt, tokens, (slot, row, col) in zip(sample.ref_prompts, targets.tokens, targets.cells.tolist()):
        assert (ids[tokens] == video_id).all()
        assert slot == prompt.frames[0] // 2 < t
        index = tokens - first_video
        assert (index // (h * w) == slot).all()  # all in the prompt's temporal slot
        assert slot * h * w + row * w + col in index.tolist()  # the prompt's own cell is a target
        # the object covers (most of) each target cell on the prompt frame
        mask = torch.from_numpy(sample.masks[prompt.obj, prompt.frames[0]]).float()
        cover = torch.nn.functional.interpolate(mask[None, None], size=(h, w), mode="area")[0, 0].flatten()
        cells = index % (h * w)
        assert (cover[cells] > 0).all() and cover[cells].mean() > 0.4


def test_samples_without_points_have_no_pointing_targets(processor):
    assert _encoded(processor, "mask_region", False)[1].pointing is None


def test_recomputed_head_attention_is_the_models_own(processor, model):
    _, example = _encoded(processor, "ref_caption", False)
    language_model = model.model.language_model
    attention = language_model.layers[ATTENTION_LAYER].self_attn
    weights = []
    hook = attention.register_forward_hook(lambda _m, _a, out: weights.append(out[1]))
    implementation = model.config.text_config._attn_implementation
    model.config.text_config._attn_implementation = "eager"
    try:
        with torch.no_grad(), capture(language_model) as captured:
            model(**example.inputs)
    finally:
        model.config.text_config._attn_implementation = implementation
        hook.remove()
    query = int(example.pointing.positions[0])
    ours = head_attention(attention, captured.attention_input, captured.rotary, query).exp()
    theirs = weights[0][0, 0, query, : query + 1]
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert captured.cell_states.shape[1] == example.inputs["input_ids"].shape[1]


def test_pointing_terms_train_the_ref_path(processor, model):
    _, example = _encoded(processor, "ref_caption", True, index=1)
    pointer = PointingHeads(TINY.hidden)
    model.zero_grad()
    terms = training_loss(model, example, 32, torch.Generator().manual_seed(0), masks=False, pointer=pointer)
    assert {"ref_cell", "ref_attention"} <= terms.keys()
    assert all(torch.isfinite(terms[k]) and terms[k] > 0 for k in ("ref_cell", "ref_attention"))
    (terms["ref_cell"] + terms["ref_attention"]).backward()
    assert model.ref_proj[1].weight.grad.abs().sum() > 0 and pointer.row.weight.grad.abs().sum() > 0
    off = training_loss(model, example, 32, torch.Generator().manual_seed(0), masks=False, pointer=pointer,
                        pointing_weights=(0.0, 0.0))
    assert not {"ref_cell", "ref_attention"} & off.keys()


def test_attention_term_falls_when_a_step_follows_it(processor, model):
    """A few steps on the attention term alone move head 0 of the `<|ref|>` token onto the object."""
    _, example = _encoded(processor, "ref_caption", False, index=2)
    pointer = PointingHeads(TINY.hidden)
    params = [p for name, p in model.named_parameters() if not name.startswith(("sam2.", "model.visual."))]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(15):
        terms = training_loss(model, example, 32, torch.Generator().manual_seed(0), masks=False, pointer=pointer,
                              pointing_weights=(0.0, 1.0))
        optimizer.zero_grad()
        terms["ref_attention"].backward()
        optimizer.step()
        losses.append(terms["ref_attention"].item())
    assert losses[-1] < 0.5 * losses[0]
