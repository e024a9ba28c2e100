"""The released architectures: built on the meta device, our model has exactly the released tensors."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import MANIFESTS, requires_manifests
from unipixel.loading import expected_tensors, to_memory_key, to_saved_key
from unipixel.modeling.presets import released_config
from unipixel.modeling.unipixel import UniPixelForConditionalGeneration

pytestmark = requires_manifests


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_meta_model_matches_release_manifest(size: str) -> None:
    manifest = json.loads((MANIFESTS / f"unipixel-{size}.json").read_text())
    with torch.device("meta"):
        model = UniPixelForConditionalGeneration(released_config(size))
    ours = {to_saved_key(k): list(v.shape) for k, v in expected_tensors(model).items()}
    released = manifest["saved_keys"]
    assert sorted(set(released) - set(ours)) == []
    assert sorted(set(ours) - set(released)) == []
    mismatched = {k: (ours[k], released[k]) for k in released if ours[k] != released[k]}
    assert mismatched == {}
    assert model.config.tie_word_embeddings is manifest["tie_word_embeddings"]
    buffers = {to_saved_key(name) for name, _ in model.named_buffers() if name in model.state_dict()}
    assert set(manifest["buffers_in_saved_keys"]) <= buffers


def test_key_mapping_round_trips() -> None:
    for saved in ["visual.blocks.0.attn.qkv.weight", "model.layers.3.mlp.up_proj.weight", "model.embed_tokens.weight",
                  "sam2.memory_encoder.fuser.layers.1.weight", "sam2.memory_encoder.fuser.layers.1.dwconv.weight",
                  "seg_head.0.weight", "lm_head.weight"]:
        assert to_saved_key(to_memory_key(saved)) == saved
    assert to_memory_key("model.layers.0.self_attn.q_proj.weight") == "model.language_model.layers.0.self_attn.q_proj.weight"
    assert to_memory_key("visual.merger.mlp.0.weight") == "model.visual.merger.mlp.0.weight"
    assert to_memory_key("sam2.memory_encoder.fuser.layers.0.weight") == "sam2.memory_encoder.fuser.layers.0.gamma"
