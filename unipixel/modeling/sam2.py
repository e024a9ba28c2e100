"""SAM 2 for UniPixel: the stock `sam2` 1.1.0 video predictor, prompted by LLM hidden tokens.

The reference vendors a modified SAM 2; here the stock package is composed instead (spec §3.4):
`UniPixelSAM2` subclasses the stock `SAM2VideoPredictor` and changes only what the spec requires:

* frames are encoded once, in 16-frame chunks, into a reusable `FrameFeatures` (F5, N6) that
  pre-fills the stock per-frame feature cache, so several objects and several chat turns share it;
* two hidden tokens per object are appended after the padding points of the sparse prompt on the
  initial conditioning frame (F1-F3);
* all objects of a turn ride the batch axis of one stock state and go through each frame together
  (stock 1.1.0 runs one object at a time), then each gets its own stock state for click correction;
* with bfloat16 weights everything runs in pure bfloat16 without autocast, with the reference's
  float32 islands and casts (N1, N3-N7, N9, N11-N15), and memory features stay in the SAM 2 dtype
  (N13: stock would round them to bfloat16 even for a float32 model).

Everything else (memory attention, memory encoding, multimask selection, object-score gating,
propagation, click correction) is the stock code path.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import sam2
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.position_encoding import PositionEmbeddingRandom
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import RoPEAttention
import sam2.sam2_video_predictor as stock_video_predictor
from sam2.sam2_video_predictor import SAM2VideoPredictor
from torch import Tensor, nn
from tqdm import tqdm

FRAMES_PER_CHUNK = 16  # trunk + neck batch size of the image encoder (N6)
WINDOWS_PER_CHUNK = 64  # window-batch size of the Hiera block attention (N6)

# Stock propagation draws a progress bar per object on stderr; ours reports progress through the session.
stock_video_predictor.tqdm = partial(tqdm, disable=True)

# Checkpoint (reference) name <-> stock name of the CXBlock layer scale (spec §4.3). Only the
# direct `layers.<i>.weight` matches, never `layers.<i>.dwconv.weight` or other weights of the block.
LEGACY_TO_STOCK_KEYS: dict[str, str] = {r"\b(memory_encoder\.fuser\.layers\.\d+)\.weight$": r"\1.gamma"}
STOCK_TO_LEGACY_KEYS: dict[str, str] = {r"\b(memory_encoder\.fuser\.layers\.\d+)\.gamma$": r"\1.weight"}


def rename_legacy_sam2_keys(state_dict: Mapping[str, Tensor], to_legacy: bool = False) -> dict[str, Tensor]:
    """Rename checkpoint SAM 2 keys to stock names (or back, for saving in the released layout)."""
    mapping = STOCK_TO_LEGACY_KEYS if to_legacy else LEGACY_TO_STOCK_KEYS
    rules = [(re.compile(pattern), repl) for pattern, repl in mapping.items()]

    def rename(key: str) -> str:
        for pattern, repl in rules:
            key = pattern.sub(repl, key)
        return key

    return {rename(key): value for key, value in state_dict.items()}


class FourierPositionEncoding(PositionEmbeddingRandom):
    """Stock random-Fourier positional encoding with the reference's numerics (spec N1).

    The projection runs in float32 on the exactly upcast Gaussian matrix, whatever the storage dtype
    of the buffer (after `.to(torch.bfloat16)` it holds the checkpoint's bfloat16 values), and the
    result is cast to the buffer's dtype, i.e. the dtype of the SAM 2 weights. In float32 this is
    the stock computation, bit for bit. Buffer name and shape are unchanged, so checkpoints load.
    """

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        gaussian = self.positional_encoding_gaussian_matrix
        angles = 2 * math.pi * ((2 * coords.float() - 1) @ gaussian.float())
        return torch.cat([angles.sin(), angles.cos()], dim=-1).to(gaussian.dtype)


def adapt_prompt_encoder(encoder: PromptEncoder) -> PromptEncoder:
    """Give a stock `PromptEncoder` the reference's dtype behaviour (N1-N3), in place.

    Swaps its `pe_layer` for `FourierPositionEncoding` (same buffer tensor) and casts the sparse
    output to the dtype of the dense output (the weights' dtype): stock starts the sparse prompt from
    an empty float32 tensor, which would promote bfloat16 point embeddings to float32. Idempotent.
    Used for SAM 2's own prompt encoder and for UniPixel's `ref_encoder`.
    """
    if isinstance(encoder.pe_layer, FourierPositionEncoding):
        return encoder
    gaussian = encoder.pe_layer.positional_encoding_gaussian_matrix
    with torch.device(gaussian.device):
        encoder.pe_layer = FourierPositionEncoding(gaussian.shape[1])
    encoder.pe_layer.positional_encoding_gaussian_matrix = gaussian
    encoder.register_forward_hook(_cast_sparse_to_dense_dtype)
    return encoder


def _cast_sparse_to_dense_dtype(encoder: PromptEncoder, args: tuple, outputs: tuple[Tensor, Tensor]) -> tuple:
    """N3: the sparse prompt in the weights' dtype (that of the dense prompt); exact."""
    sparse, dense = outputs
    return sparse.to(dense.dtype), dense


@dataclass
class FrameFeatures:
    """Image-encoder outputs of all frames of one video, computed once and shared by every object.

    `backbone_fpn` holds, per level (highest resolution first), `(T, C, H, W)` features with the two
    high-resolution levels already projected by the mask decoder's `conv_s0` / `conv_s1`;
    `vision_pos_enc` holds one `(1, C, H, W)` sine encoding per level (it does not depend on the frame).
    """

    frames: Tensor
    backbone_fpn: list[Tensor]
    vision_pos_enc: list[Tensor]

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    def to(self, device: torch.device | str) -> FrameFeatures:
        """The same features on ``device``."""
        return FrameFeatures(self.frames.to(device), [f.to(device) for f in self.backbone_fpn], [p.to(device) for p in self.vision_pos_enc])

    def select(self, frame_idx: int) -> FrameFeatures:
        """The features of one frame, as a one-frame video (views, no copy)."""
        window = slice(frame_idx, frame_idx + 1)
        return FrameFeatures(self.frames[window], [f[window] for f in self.backbone_fpn], self.vision_pos_enc)

    def cache_entry(self, frame_idx: int) -> tuple[Tensor, dict[str, list[Tensor]]]:
        """One frame in the format of the stock predictor's `cached_features`."""
        frame = self.select(frame_idx)
        return frame.frames, {"backbone_fpn": frame.backbone_fpn, "vision_pos_enc": self.vision_pos_enc}


@dataclass
class TrackResult:
    """Per-object, per-frame outputs of SAM 2 at the original frame resolution.

    `logits` `(N, T, H, W)` mask logits (the mask is `logits > 0`), `iou` `(N, T)` the predicted IoU
    of the chosen mask, `object_score` `(N, T)` the object-score logit (> 0: object present), all in
    the SAM 2 dtype. `states[n]` are object n's stock inference states, kept for `refine`: one over
    all frames, or one per frame in batch mode.
    """

    logits: Tensor
    iou: Tensor
    object_score: Tensor
    states: list[list[dict]]


def _cast_neck_outputs(neck: nn.Module, args: tuple, outputs: tuple[list[Tensor], list[Tensor]]) -> tuple:
    """N9: the FPN top-down path upsamples in float32; return features and encodings in the weight dtype."""
    dtype = neck.convs[0].conv.weight.dtype
    features, pos = outputs
    return [f.to(dtype) for f in features], [p.to(dtype) for p in pos]


def _cast_input_to_weight(module: nn.Linear, args: tuple) -> tuple:
    """N11: the object-pointer temporal sine encoding is float32; project it in the weight dtype."""
    return (args[0].to(module.weight.dtype), *args[1:])


def _drop_meta_rope_table(module: RoPEAttention, args: tuple) -> None:
    """A model built on the meta device keeps a meta RoPE table (a plain attribute, not state):
    drop it so that stock `RoPEAttention.forward` recomputes it for the actual feature size."""
    if module.freqs_cis.is_meta:
        module.freqs_cis = torch.empty(0)


def _pos_embed_resized_in_fp32(trunk: Hiera, hw: tuple[int, int]) -> Tensor:
    """N7: Hiera's absolute position embedding, bicubically resized in float32 and rounded back to
    the weight dtype, plus the tiled window embedding; `(1, H, W, C)` like stock `_get_pos_embed`."""
    dtype = trunk.pos_embed.dtype
    background = F.interpolate(trunk.pos_embed.float(), size=hw, mode="bicubic").to(dtype)
    window = trunk.pos_embed_window
    repeats = [size // tile for size, tile in zip(background.shape, window.shape)]
    return (background + window.tile(repeats)).permute(0, 2, 3, 1)


def _in_window_chunks(attention: Callable[[Tensor], Tensor], windows: Tensor) -> Tensor:
    """N6: run a Hiera block's attention over the window batch in chunks, as the reference does."""
    return torch.cat([attention(chunk) for chunk in windows.split(WINDOWS_PER_CHUNK)])


class UniPixelSAM2(SAM2VideoPredictor):
    """Stock SAM 2 video predictor that segments objects prompted by UniPixel's hidden tokens.

    Use `encode_frames` once per video, then `track` for any number of objects and `refine` to
    correct one object with clicks. Each object gets its own stock inference state (independent
    memory, `sam2_batch_mode` false) whose feature cache points into the shared `FrameFeatures`.
    Calls are not re-entrant (per-call values pass through the instance): serialise them, as the
    reference does (spec §10.14).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._prompt_hidden: Tensor | None = None  # hidden tokens of the frame being prompted
        self._scratch: dict[str, Tensor] = {}  # per-frame outputs stock drops (IoU, unrounded memory)
        adapt_prompt_encoder(self.sam_prompt_encoder)
        self.sam_prompt_encoder.register_forward_hook(self._append_hidden_tokens)
        self.image_encoder.neck.register_forward_hook(_cast_neck_outputs)
        if isinstance(self.obj_ptr_tpos_proj, nn.Linear):
            self.obj_ptr_tpos_proj.register_forward_pre_hook(_cast_input_to_weight)
        trunk = self.image_encoder.trunk
        trunk._get_pos_embed = partial(_pos_embed_resized_in_fp32, trunk)
        for block in trunk.blocks:
            block.attn.forward = partial(_in_window_chunks, block.attn.forward)
        for module in self.memory_attention.modules():
            if isinstance(module, RoPEAttention):
                module.register_forward_pre_hook(_drop_meta_rope_table)

    @property
    def dtype(self) -> torch.dtype:
        """The SAM 2 compute dtype: that of the patch-embedding weight (F6)."""
        return self.image_encoder.trunk.patch_embed.proj.weight.dtype

    # ----------------------------------------------------------------------------- public API

    @torch.inference_mode()
    def encode_frames(self, frames: Tensor) -> FrameFeatures:
        """Run the image encoder on all `(T, 3, S, S)` normalised frames (spec §2.2 step 1, F5).

        Trunk, neck and the high-resolution projections (`conv_s0` / `conv_s1`, 1x1 convolutions, so per
        frame) run on chunks of 16 frames: only one chunk's 256-channel stride-4 maps and positional
        encodings (the same for every frame, so one is kept) are alive at a time, which bounds the peak
        memory of long clips (64 frames of the 3B's SAM 2 at 768 px: 13.7 -> about 10 GB).
        """
        frames = frames.to(self.device, self.dtype)
        levels, pos = [], None
        for chunk in frames.split(FRAMES_PER_CHUNK):
            encoded = self.image_encoder(chunk)
            fpn = list(encoded["backbone_fpn"])
            if self.use_high_res_features_in_sam:
                fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
                fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
            levels.append(fpn)
            pos = pos or [p[:1] for p in encoded["vision_pos_enc"]]
            del encoded
        return FrameFeatures(frames, [torch.cat(level) for level in zip(*levels)], pos)

    @torch.inference_mode()
    def track(
        self, features: FrameFeatures, frame_size: tuple[int, int], hidden: Tensor, batch_mode: bool = False
    ) -> TrackResult:
        """Segment N objects, each prompted by its `(k, C)` hidden tokens in `hidden` `(N, k, C)`.

        Per object (spec §2.2): the hidden tokens on frame 0 as the initial conditioning frame, forward
        propagation with memory, low-res logits resized to `frame_size` `(H, W)`. With `batch_mode` (spec
        §2.3) every frame is its own one-frame video instead. All N objects go through each frame in one
        batched pass (stock 1.1.0 loops over objects; each object still only attends to its own memory, so
        the result is the per-object one), then each gets its own stock state for `refine`.
        """
        if not len(hidden):
            T, (H, W) = features.num_frames, frame_size
            empty = features.frames.new_empty
            return TrackResult(empty(0, T, H, W), empty(0, T), empty(0, T), [])
        videos = [features.select(t) for t in range(features.num_frames)] if batch_mode else [features]
        states = [self.init_state(video, frame_size) for video in videos]
        for state in states:
            state[OBJECTS_IN_BATCH] = len(hidden)
            self.add_new_hidden_state(state, frame_idx=0, obj_id=0, hidden=hidden)
        result = self._collect(states)
        result.states = [[_object_state(state, n) for state in states] for n in range(len(hidden))]
        return result

    @torch.inference_mode()
    def refine(self, states: list[dict], frame_idx: int, clicks: Sequence[tuple[float, float, int]]) -> TrackResult:
        """Correct one tracked object with clicks on one frame and re-propagate (N = 1 result).

        `states` is the object's entry of `TrackResult.states` (updated in place); `clicks` are all
        the `(x, y, label)` clicks on that frame, in original-frame pixels, label 1 positive, 0
        negative. Stock `add_new_points_or_box` semantics: the clicks replace earlier clicks on that
        frame and are decoded together with the frame's current mask logits on top of the object's
        memory; the frame then becomes a conditioning frame and the video is propagated again.
        """
        if not clicks:
            raise ValueError("refine needs at least one click")
        state, local_idx = (states[0], frame_idx) if len(states) == 1 else (states[frame_idx], 0)
        points = torch.tensor([(x, y) for x, y, _ in clicks], dtype=torch.float32)
        labels = torch.tensor([label for _, _, label in clicks], dtype=torch.int32)
        self.add_new_points_or_box(state, frame_idx=local_idx, obj_id=0, points=points, labels=labels)
        return self._collect(states)

    # ---------------------------------------------------------------- stock predictor overrides

    def init_state(self, features: FrameFeatures, frame_size: tuple[int, int]) -> dict:  # type: ignore[override]
        """A stock inference state over pre-encoded frames (F4): video size = `frame_size` `(H, W)`,
        no offloading, and a feature cache holding every frame so the encoder never runs again."""
        per_object = ("point_inputs_per_obj", "mask_inputs_per_obj", "output_dict_per_obj",
                      "temp_output_dict_per_obj", "frames_tracked_per_obj")
        return {
            "images": features.frames,
            "num_frames": features.num_frames,
            "offload_video_to_cpu": False,
            "offload_state_to_cpu": False,
            "video_height": frame_size[0],
            "video_width": frame_size[1],
            "device": self.device,
            "storage_device": self.device,
            "cached_features": {t: features.cache_entry(t) for t in range(features.num_frames)},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            **{key: {} for key in per_object},
        }

    @torch.inference_mode()
    def add_new_hidden_state(self, inference_state: dict, frame_idx: int, obj_id: int, hidden: Tensor) -> None:
        """Prompt a new object on an untracked frame with `(B, k, C)` hidden tokens (F3; B objects batched).

        The frame is decoded as an initial conditioning frame without memory, points or mask; the
        output waits in the temporary dict, like stock `add_new_points_or_box`, until propagation
        encodes its memory.
        """
        obj_idx = self._obj_id_to_idx(inference_state, obj_id)
        if frame_idx in inference_state["frames_tracked_per_obj"][obj_idx]:
            raise ValueError(f"frame {frame_idx} is already tracked; correct it with clicks (refine)")
        self._prompt_hidden = hidden
        try:
            out, _ = self._run_single_frame_inference(
                inference_state=inference_state,
                output_dict=inference_state["output_dict_per_obj"][obj_idx],
                frame_idx=frame_idx,
                batch_size=len(hidden),
                is_init_cond_frame=True,
                point_inputs=None,
                mask_inputs=None,
                reverse=False,
                run_mem_encoder=False,
            )
        finally:
            self._prompt_hidden = None
        inference_state["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"][frame_idx] = out

    def _forward_sam_heads(self, *args, **kwargs) -> tuple[Tensor, ...]:
        """Stock heads, outputs returned in the SAM 2 dtype (N4, N5).

        Stock upcasts the bfloat16 low-res logits to float32 (exactly) and upsamples them in float32;
        the object-score factor is a float32 0/1, so the object pointer holds exact bfloat16 values.
        Casting back therefore gives the reference's values; IoUs and object scores are unchanged.
        """
        low_multi, high_multi, ious, low, high, obj_ptr, scores = super()._forward_sam_heads(*args, **kwargs)
        dtype = self.dtype
        return low_multi.to(dtype), high_multi.to(dtype), ious, low.to(dtype), high.to(dtype), obj_ptr.to(dtype), scores

    def _track_step(self, *args, **kwargs) -> tuple:
        """Stock step; keeps the IoU prediction of the chosen mask, which stock discards."""
        current_out, sam_outputs, *rest = super()._track_step(*args, **kwargs)
        self._scratch["iou"] = sam_outputs[2].max(dim=-1).values
        return current_out, sam_outputs, *rest

    def _encode_new_memory(self, *args, **kwargs) -> tuple[Tensor, list[Tensor]]:
        """Stock memory encoding; keeps the features before stock's storage rounding (N13)."""
        features, pos = super()._encode_new_memory(*args, **kwargs)
        self._scratch["maskmem_features"] = features
        return features, pos

    def _run_single_frame_inference(self, inference_state: dict, *args, **kwargs) -> tuple[dict, Tensor]:
        """Stock frame inference over the state's batch of objects; the stored output also gets `iou` and
        memory in the SAM 2 dtype."""
        kwargs["batch_size"] = inference_state.get(OBJECTS_IN_BATCH, 1)
        self._scratch.clear()
        out, pred_masks = super()._run_single_frame_inference(inference_state, *args, **kwargs)
        out["iou"] = self._scratch["iou"]
        if out["maskmem_features"] is not None:
            out["maskmem_features"] = self._scratch["maskmem_features"].to(inference_state["storage_device"])
        return out, pred_masks

    def _run_memory_encoder(self, inference_state: dict, *args, **kwargs) -> tuple[Tensor, list[Tensor]]:
        """Stock memory encoding of a prompted frame (the state's batch of objects), with memory kept in the
        SAM 2 dtype (N13)."""
        kwargs["batch_size"] = inference_state.get(OBJECTS_IN_BATCH, 1)
        _, pos = super()._run_memory_encoder(inference_state, *args, **kwargs)
        return self._scratch.pop("maskmem_features").to(inference_state["storage_device"]), pos

    def _append_hidden_tokens(self, encoder: PromptEncoder, args: tuple, outputs: tuple[Tensor, Tensor]) -> tuple | None:
        """Sparse prompt = stock point embeddings followed by the pending hidden tokens (F1)."""
        sparse, dense = outputs
        if self._prompt_hidden is None:
            return None
        return torch.cat([sparse, self._prompt_hidden.to(sparse)], dim=1), dense

    # ------------------------------------------------------------------------------- helpers

    def _collect(self, states: list[dict]) -> TrackResult:
        """Propagate each state (stock object 0, a batch of N objects) forward and gather its frames in order."""
        logits, ious, scores = [], [], []
        for state in states:
            outputs = state["output_dict_per_obj"][0]
            for t, _, video_res_masks in self.propagate_in_video(state):
                out = outputs["cond_frame_outputs"].get(t)
                if out is None:
                    out = outputs["non_cond_frame_outputs"][t]
                logits.append(video_res_masks[:, 0])
                ious.append(out["iou"])
                scores.append(out["object_score_logits"][:, 0])
        return TrackResult(torch.stack(logits, 1), torch.stack(ious, 1), torch.stack(scores, 1), [states])


OBJECTS_IN_BATCH = "unipixel_objects"
"""Key of an inference state: how many objects its stock object 0 carries along the batch axis."""


def _object_state(state: dict, n: int) -> dict:
    """Object `n` of a batched, propagated state as a stock one-object state (views, no copies), for `refine`."""
    def pick(value):
        if isinstance(value, Tensor) and value.dim() and value.shape[0] == batch:
            return value[n:n + 1]
        if isinstance(value, list):
            return [pick(v) for v in value]
        return value

    batch = state[OBJECTS_IN_BATCH]
    if batch == 1:
        return state
    outputs = {
        key: {t: {name: pick(v) for name, v in out.items()} for t, out in frames.items()}
        for key, frames in state["output_dict_per_obj"][0].items()
    }
    return {**state, OBJECTS_IN_BATCH: 1, "output_dict_per_obj": {0: outputs},
            "frames_tracked_per_obj": {0: dict(state["frames_tracked_per_obj"][0])},
            "temp_output_dict_per_obj": {0: {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}},
            "point_inputs_per_obj": {0: {}}, "mask_inputs_per_obj": {0: {}}}


ALLOWED_TARGETS = "sam2.modeling."


def _check_targets(node: object) -> None:
    """A checkpoint's yaml may only name SAM 2's own layers: hydra would call any ``_target_`` (remote code)."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(ALLOWED_TARGETS):
            raise ValueError(f"sam2_config.yaml names {target!r}; only {ALLOWED_TARGETS}* layers are allowed")
        for value in node.values():
            _check_targets(value)
    elif isinstance(node, list):
        for value in node:
            _check_targets(value)


_STOCK_CONFIG = re.compile(r"(?:^|/)sam2\.1_hiera_(t|s|b\+|l)(?:\.yaml)?$")


def build_sam2(sam2_config: str, image_size: int, config_yaml: str | Path | None = None) -> UniPixelSAM2:
    """Build UniPixel's SAM 2 (random weights, eval mode) on the current default device (spec §4).

    `config_yaml` (a checkpoint's `sam2_config.yaml`, stock format) wins when given; otherwise
    `sam2_config` (`configs/sam2.1_hiera_b+`, `sam2.1_hiera_t`, ...) names the stock package's
    `configs/sam2.1/sam2.1_hiera_<size>.yaml`. Both get `image_size`, the `UniPixelSAM2` target and
    `add_all_frames_to_correct_as_cond` (the reference's setting); none of stock `build_sam2`'s
    postprocessing overrides are applied. Works under `torch.device("meta")`.
    """
    if config_yaml is None:
        match = _STOCK_CONFIG.search(sam2_config)
        if match is None:
            raise ValueError(f"unknown SAM 2 config {sam2_config!r}: expected sam2.1_hiera_{{t,s,b+,l}}")
        config_yaml = Path(sam2.__file__).parent / "configs" / "sam2.1" / f"sam2.1_hiera_{match[1]}.yaml"
    model_config = OmegaConf.load(config_yaml).model
    _check_targets(OmegaConf.to_container(model_config))
    model_config._target_ = f"{UniPixelSAM2.__module__}.{UniPixelSAM2.__qualname__}"
    model_config.image_size = image_size
    model_config.add_all_frames_to_correct_as_cond = True
    prebuilt = {}
    if torch.get_default_device().type == "meta":
        # Hiera reads its drop-path schedule with `.item()`, which a meta tensor cannot do.
        with torch.device("cpu"):
            trunk = instantiate(model_config.image_encoder.trunk).to("meta")
        prebuilt["image_encoder"] = instantiate(model_config.image_encoder, trunk=trunk)
    return instantiate(model_config, **prebuilt).eval()
