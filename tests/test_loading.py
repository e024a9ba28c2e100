"""Loading: local directories and cached hub ids, strict key checks, dtypes, and the released layout on save."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import GOLDEN, golden_cases, requires_golden
from unipixel.loading import CheckpointError, load_model, resolve_checkpoint, save_checkpoint

TINY = GOLDEN / "checkpoints" / "tiny-tied"
pytestmark = requires_golden


def _copy_checkpoint(tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(TINY, target)
    return target


def _offline_cache(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """No network in tests: the hub client offline, with its cache in ``cache``."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))


def test_missing_and_unexpected_weights_fail_loudly(tmp_path: Path) -> None:
    ckpt = _copy_checkpoint(tmp_path)
    state = load_file(ckpt / "model.safetensors")
    state.pop("seg_head.1.weight")
    state["extra.weight"] = torch.zeros(2)
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing \(seg_head\.1\.weight\).*1 unexpected \(extra\.weight\)"):
        load_model(ckpt)


def test_only_safetensors_are_loaded(tmp_path: Path) -> None:
    ckpt = _copy_checkpoint(tmp_path)
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(ckpt)


def test_unknown_path_and_offline_hub_id_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(tmp_path / "nope" / "deeper")
    _offline_cache(monkeypatch, tmp_path / "hub")
    with pytest.raises(CheckpointError, match="could not download Org/Missing"):
        resolve_checkpoint("Org/Missing")


def test_cached_hub_id_resolves_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub"
    repo = cache / "models--PolyU-ChenLab--UniPixel-3B"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(TINY, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    _offline_cache(monkeypatch, cache)
    assert resolve_checkpoint("PolyU-ChenLab/UniPixel-3B") == snapshot


def test_bfloat16_on_cpu_runs_and_stays_close_to_float32() -> None:
    case = "tiny-tied__image_seg"
    inputs = load_file(GOLDEN / "cases" / case / "inputs.safetensors")
    kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
    kwargs.update(frames=[inputs["frames"]], frame_size=[tuple(inputs["frame_size"].tolist())])
    outputs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model, _ = load_model(TINY, dtype=dtype)
        assert model.dtype == dtype and model.sam2.dtype == dtype
        assert model.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
        with torch.inference_mode():
            outputs[dtype] = model(**kwargs)
    ref, low = outputs[torch.float32], outputs[torch.bfloat16]
    assert low.logits.dtype == torch.bfloat16
    assert (ref.logits.argmax(-1) == low.logits.argmax(-1)).float().mean() > 0.95
    assert (ref.masks[0] == low.masks[0]).float().mean() > 0.95
    assert len(golden_cases()[case]["answer"]) > 0


def test_save_round_trip_keeps_the_released_layout(tmp_path: Path) -> None:
    model, processor = load_model(TINY)
    out = save_checkpoint(model, processor, tmp_path / "saved")
    assert sorted(load_file(out / "model.safetensors")) == sorted(load_file(TINY / "model.safetensors"))
    assert (out / "sam2_config.yaml").read_text() == (TINY / "sam2_config.yaml").read_text()
    again, _ = load_model(out)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
