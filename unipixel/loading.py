"""Loading and saving UniPixel checkpoints in the released format (safetensors only, no remote code).

A checkpoint is a directory (or a Hugging Face hub id resolved to one) holding ``config.json``
(``model_type`` ``pixel_qwen2_5_vl``), ``model.safetensors`` or shards with an index, the processor and
tokenizer files, and optionally ``sam2_config.yaml`` describing a custom SAM 2 size. Weights use the legacy
names written by transformers 4.53.3; :attr:`UniPixelForConditionalGeneration.checkpoint_key_mapping`
translates them, and loading fails loudly on any missing or unexpected tensor.
"""
from __future__ import annotations

import json
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import GenerationConfig
from transformers.initialization import no_init_weights

from .configuration import UniPixelConfig
from .modeling.unipixel import UniPixelForConditionalGeneration
from .processing.vision import load_processor

SAM2_YAML = "sam2_config.yaml"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found or does not match the model (one-line, user-facing message)."""


def resolve_checkpoint(path_or_hub_id: str | Path) -> Path:
    """Local directory for a path or a hub id; the network is used only for a hub id that is not cached."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} has no config.json: not a UniPixel checkpoint directory")
        return path
    repo_id = str(path_or_hub_id)
    if repo_id.count("/") != 1 or path.exists():
        raise CheckpointError(f"checkpoint not found: {path_or_hub_id} (neither a directory nor a hub id)")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.yaml", "*.model"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not cached: one download attempt
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:
        raise CheckpointError(f"could not download {repo_id} ({type(err).__name__}); no cached copy either") from err


def load_config(checkpoint: Path) -> UniPixelConfig:
    """The checkpoint's config, with SAM 2 in inference mode as the reference forces when loading."""
    config = UniPixelConfig.from_pretrained(checkpoint)
    config.sam2_inference_mode = True
    return config


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(
    config: UniPixelConfig, sam2_yaml: Path | None = None, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
) -> UniPixelForConditionalGeneration:
    """An uninitialised model (weights to be loaded) with parameters in ``dtype``.

    Built under ``dtype`` as the default, like transformers does: buffers that must stay float32 (rotary
    frequencies, SAM 2's RoPE tables) are created with an explicit float32 dtype and are unaffected.
    """
    config._attn_implementation = attn_implementation
    for part in (config, config.text_config, config.vision_config):
        part.dtype = dtype  # sub-models are built with their config's dtype as the default
    with no_init_weights(), _default_dtype(dtype):
        model = UniPixelForConditionalGeneration(config, sam2_yaml=sam2_yaml)
    return model.eval()


def _checkpoint_tensors(checkpoint: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the checkpoint's safetensors files, one at a time (sharded or single file)."""
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (checkpoint / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{checkpoint} has no model.safetensors (only safetensors weights are loaded)")
    for name in files:
        with safe_open(checkpoint / name, framework="pt") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)


def _rename(key: str, mapping: dict[str, str]) -> str:
    for pattern, replacement in mapping.items():
        key = re.sub(pattern, replacement, key)
    return key


def to_memory_key(saved_key: str) -> str:
    """Map a released-checkpoint tensor name to our module's name."""
    return _rename(saved_key, UniPixelForConditionalGeneration.checkpoint_key_mapping)


def to_saved_key(memory_key: str) -> str:
    """Inverse of :func:`to_memory_key`: the name the released format uses."""
    return _rename(memory_key, UniPixelForConditionalGeneration.saved_key_mapping)


def expected_tensors(model: UniPixelForConditionalGeneration) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers a checkpoint must provide (the tied ``lm_head`` excluded)."""
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


@torch.no_grad()
def load_weights(model: UniPixelForConditionalGeneration, checkpoint: Path) -> None:
    """Copy the checkpoint's tensors into ``model`` (in place, keeping tied weights tied); strict."""
    targets = expected_tensors(model)
    missing, unexpected = set(targets), []
    for saved_key, tensor in _checkpoint_tensors(checkpoint):
        key = to_memory_key(saved_key)
        target = targets.get(key)
        if target is None or target.shape != tensor.shape:
            unexpected.append(saved_key if target is None else f"{saved_key} {tuple(tensor.shape)}≠{tuple(target.shape)}")
            continue
        target.copy_(tensor)
        missing.discard(key)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {checkpoint.name} does not match the model: {len(missing)} missing "
            f"({', '.join(sorted(missing)[:5])}), {len(unexpected)} unexpected ({', '.join(unexpected[:5])})"
        )
    model.tie_weights()


def reference_generation_config(config: UniPixelConfig, checkpoint: Path | None = None) -> GenerationConfig:
    """Greedy decoding with no logits processors, stopping at the checkpoint's end tokens (spec §7)."""
    eos = config.text_config.eos_token_id
    if checkpoint is not None and (checkpoint / "generation_config.json").exists():
        eos = GenerationConfig.from_pretrained(checkpoint).eos_token_id or eos
    return GenerationConfig(
        do_sample=False,
        temperature=None,
        top_k=None,
        top_p=None,
        repetition_penalty=None,
        eos_token_id=eos,
        pad_token_id=eos[0] if isinstance(eos, list) else eos,
        max_new_tokens=512,
    )


def load_model(
    path_or_hub_id: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
):
    """Load a UniPixel checkpoint: returns ``(model, processor)``, model in eval mode on ``device``.

    Works for the released ``PolyU-ChenLab/UniPixel-3B``/``-7B`` (stock SAM 2.1 config named by
    ``sam2_config``) and for local directories carrying their own ``sam2_config.yaml``.
    """
    checkpoint = resolve_checkpoint(path_or_hub_id)
    config = load_config(checkpoint)
    sam2_yaml = checkpoint / SAM2_YAML
    model = build_model(config, sam2_yaml if sam2_yaml.exists() else None, dtype, attn_implementation)
    load_weights(model, checkpoint)
    model.generation_config = reference_generation_config(config, checkpoint)
    model.name_or_path = str(path_or_hub_id)
    processor = load_processor(checkpoint)
    return model.to(device), processor


def save_checkpoint(model: UniPixelForConditionalGeneration, processor, directory: str | Path) -> Path:
    """Write ``model`` and ``processor`` in the released format (legacy names, safetensors, SAM 2 yaml)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {to_saved_key(k): v.detach().contiguous().cpu() for k, v in expected_tensors(model).items()}
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    model.config.save_pretrained(directory)
    model.generation_config.save_pretrained(directory)
    target = directory / SAM2_YAML
    if model.sam2_yaml is not None and not (target.exists() and target.samefile(model.sam2_yaml)):
        shutil.copyfile(model.sam2_yaml, target)
    processor.save_pretrained(directory)
    return directory
