"""The UniPixel model: Qwen2.5-VL with pixel-prompt encoders, a segmentation head and SAM 2.

Data flow of one call (spec §1.0): token embeddings -> video features scattered into ``<|video_pad|>`` ->
``<|ref|>`` / ``<|mem|>`` embeddings scattered into their tokens -> language model with 4.53.3-style
m-RoPE positions -> logits. For every ``<|seg|>`` the hidden state *before* the final norm at the position
that predicts it goes through ``seg_head`` into two SAM 2 prompt tokens, and SAM 2 segments and tracks
the object over all frames.

Masks are computed without model state: ``forward`` returns the masks of the ``<|seg|>`` tokens in its
input, and ``generate`` (with ``frames``) returns the masks of every ``<|seg|>`` in the final sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.modeling_outputs import ModelOutput
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRMSNorm

from ..configuration import UniPixelConfig
from .positions import mrope_position_ids
from .prompt_encoder import TemporalPositionEncoding, pool_mask_tokens
from .sam2 import (
    LEGACY_TO_STOCK_KEYS,
    STOCK_TO_LEGACY_KEYS,
    FrameFeatures,
    TrackResult,
    UniPixelSAM2,
    adapt_prompt_encoder,
    build_sam2,
)

PREFILL_ONLY_INPUTS = (
    "pixel_values",
    "pixel_values_videos",
    "refer_mask",
    "point_coords",
    "point_labels",
    "point_frames",
)


@dataclass
class Segmentation:
    """SAM 2's answer for n ``<|seg|>`` tokens: bool masks ``(T, H, W)``, per-frame scores, the prompt tokens
    ``(n, k, C)`` that produced them (reusable for dense tracking) and the tracker states (for refinement)."""

    masks: list[torch.Tensor]
    scores: list[dict[str, torch.Tensor]]
    prompts: torch.Tensor
    track: TrackResult | None


@dataclass
class UniPixelOutput(ModelOutput):
    """Logits plus one boolean mask ``(T, H, W)`` per ``<|seg|>`` of the input, with SAM 2's confidences."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Any = None
    masks: list[torch.Tensor] | None = None
    segmentation: Segmentation | None = None


@dataclass
class UniPixelGenerateOutput(GenerateDecoderOnlyOutput):
    """``generate`` output with the masks of the ``<|seg|>`` tokens in ``sequences`` (prompt ones first)."""

    masks: list[torch.Tensor] | None = None
    segmentation: Segmentation | None = None


class UniPixelForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL + UniPixel's extra modules, named as in the released checkpoints."""

    config_class = UniPixelConfig
    #: Released files use transformers 4.x prefixes and SAM 2's renamed layer scale; in-memory names differ.
    checkpoint_key_mapping: dict[str, str] = {
        r"^visual\.": "model.visual.",
        r"^model\.(?!visual\.|language_model\.)": "model.language_model.",
        **LEGACY_TO_STOCK_KEYS,
    }
    #: The inverse, used when saving in the released layout.
    saved_key_mapping: dict[str, str] = {
        r"^model\.visual\.": "visual.",
        r"^model\.language_model\.": "model.",
        **STOCK_TO_LEGACY_KEYS,
    }

    def __init__(self, config: UniPixelConfig, sam2_yaml: str | Path | None = None) -> None:
        super().__init__(config)
        width = config.text_config.hidden_size
        self.sam2_yaml = Path(sam2_yaml) if sam2_yaml is not None else None
        self.sam2: UniPixelSAM2 = build_sam2(config.sam2_config, config.sam2_image_size, sam2_yaml)
        c_sam = self.sam2.hidden_dim
        size, grid = config.sam2_image_size, config.sam2_image_size // 16
        merger_width = config.vision_config.hidden_size * config.vision_config.spatial_merge_size**2
        self.seg_head = nn.Sequential(
            Qwen2_5_VLRMSNorm(width, eps=1e-6),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Linear(width, c_sam * config.sam2_hidden_tokens),
        )
        self.ref_encoder = PromptEncoder(
            embed_dim=c_sam, image_embedding_size=(grid, grid), input_image_size=(size, size), mask_in_chans=16
        )
        adapt_prompt_encoder(self.ref_encoder)
        self.ref_proj_single = nn.Linear(c_sam * 2, c_sam * 3)
        self.ref_proj_double = nn.Linear(c_sam * 3, c_sam * 3)
        self.tem_pe = TemporalPositionEncoding(c_sam // 2)
        self.tem_emb = nn.Embedding(1, c_sam)
        self.tem_proj = nn.Linear(c_sam, c_sam * 3)
        self.ref_proj = nn.Sequential(nn.GELU(), nn.Linear(c_sam * 6, width))
        self.msk_proj = nn.Sequential(
            nn.Linear(merger_width, merger_width), nn.GELU(), nn.Linear(merger_width, width)
        )
        self.post_init()

    # ------------------------------------------------------------------ input embeddings
    def _ref_embeddings(
        self,
        point_coords: Sequence[torch.Tensor],
        point_labels: Sequence[torch.Tensor],
        point_frames: torch.Tensor,
        num_frames: int,
    ) -> torch.Tensor:
        """One ``<|ref|>`` embedding per object from its point/box on a frame (spec §1.5.1)."""
        dtype = self.tem_emb.weight.dtype
        rows = []
        for coords, labels in zip(point_coords, point_labels):
            coords = coords.to(self.device, torch.float32)
            tokens = self.ref_encoder._embed_points(coords, labels.to(self.device), pad=True).to(dtype)
            flat = tokens.flatten(1)
            proj = self.ref_proj_single if tokens.shape[1] == 2 else self.ref_proj_double
            rows.append(proj(flat))
        spatial = torch.cat(rows)
        temporal = self.tem_pe(point_frames.to(self.device), num_frames, dtype) + self.tem_emb.weight[0]
        return self.ref_proj(torch.cat([spatial, self.tem_proj(temporal)], dim=-1))

    def _scatter(self, embeds: torch.Tensor, input_ids: torch.Tensor, token_id: int, rows: torch.Tensor) -> torch.Tensor:
        """Write ``rows`` into the positions of ``token_id`` in sequence order; counts must agree."""
        where = input_ids == token_id
        if int(where.sum()) != rows.shape[0]:
            raise ValueError(
                f"{int(where.sum())} placeholder tokens (id {token_id}) but {rows.shape[0]} embeddings to place"
            )
        return embeds.masked_scatter(where.unsqueeze(-1).to(embeds.device), rows.to(embeds.dtype))

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        refer_mask: torch.Tensor | Sequence[torch.Tensor] | None = None,
        point_coords: Sequence | None = None,
        point_labels: Sequence | None = None,
        point_frames: Any = None,
        video_features: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Token embeddings with vision features and pixel-prompt embeddings in place (prefill only).

        ``video_features`` = ``(merged, merger_inputs)`` from :meth:`encode_video` lets a chat session reuse
        the vision tower's output across turns on the same media.
        """
        embeds = self.model.language_model.embed_tokens(input_ids)
        if pixel_values is not None:
            out = self.model.visual(pixel_values.to(self.model.visual.dtype), grid_thw=image_grid_thw)
            embeds = self._scatter(embeds, input_ids, self.config.image_token_id, out.pooler_output)
        if video_features is None and pixel_values_videos is not None:
            video_features = self.encode_video(pixel_values_videos, video_grid_thw)
        if video_features is not None:
            merged, merger_inputs = video_features
            embeds = self._scatter(embeds, input_ids, self.config.video_token_id, merged)
        if point_coords is not None:
            if video_grid_thw is None:
                raise ValueError("point/box prompts need video inputs (video_grid_thw)")
            coords, labels, frames = _flatten_point_prompts(point_coords, point_labels, point_frames)
            refs = self._ref_embeddings(coords, labels, frames, num_frames=2 * int(video_grid_thw[0, 0]))
            embeds = self._scatter(embeds, input_ids, self.config.ref_token_id, refs)
        if refer_mask is not None:
            if video_features is None:
                raise ValueError("mask prompts need video inputs (pixel_values_videos)")
            masks = [refer_mask] if torch.is_tensor(refer_mask) else list(refer_mask)
            pooled = pool_mask_tokens(merger_inputs, masks, video_grid_thw, self.config.vision_config.spatial_merge_size)
            mems = self.msk_proj(pooled) if pooled.shape[0] else pooled[:, : embeds.shape[-1]]
            embeds = self._scatter(embeds, input_ids, self.config.mem_token_id, mems)
        return embeds

    def encode_video(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vision tower on video patches: ``(merged tokens in raster order, merger-MLP inputs in window order)``."""
        visual = self.model.visual
        out = visual(pixel_values_videos.to(visual.dtype), grid_thw=video_grid_thw)
        merger = visual.merger
        merger_inputs = merger.ln_q(out.last_hidden_state).view(-1, merger.hidden_size)
        return out.pooler_output, merger_inputs

    def rope_positions(
        self,
        input_ids: torch.Tensor,
        image_grid_thw: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """3D positions ``(3, B, L)`` of a whole sequence (see :mod:`unipixel.modeling.positions`)."""
        positions, _ = mrope_position_ids(
            input_ids,
            vision_start_token_id=self.config.vision_start_token_id,
            image_token_id=self.config.image_token_id,
            video_token_id=self.config.video_token_id,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            second_per_grid_ts=second_per_grid_ts,
            spatial_merge_size=self.config.vision_config.spatial_merge_size,
            tokens_per_second=self.config.vision_config.tokens_per_second,
        )
        return positions

    # ------------------------------------------------------------------ masks
    def segment(
        self,
        hidden_states: torch.Tensor,
        frames: torch.Tensor | FrameFeatures,
        frame_size: Sequence[int],
    ) -> Segmentation:
        """Masks for pre-norm hidden states ``(n, D)`` that predict ``<|seg|>`` (spec §2).

        ``frames`` are SAM 2 inputs ``(T, 3, S, S)``, features already encoded by ``sam2.encode_frames`` (a chat
        session keeps them between turns), or a callable returning either, called only if there is a mask to
        make (a text-only answer then costs no SAM 2 encoding).
        """
        prompts = self.seg_head(hidden_states).view(hidden_states.shape[0], self.config.sam2_hidden_tokens, self.sam2.hidden_dim)
        if prompts.shape[0] == 0:
            return Segmentation([], [], prompts, None)
        frames = frames() if callable(frames) else frames
        features = frames if isinstance(frames, FrameFeatures) else self.sam2.encode_frames(frames.to(self.device))
        size = tuple(int(v) for v in (frame_size.tolist() if torch.is_tensor(frame_size) else frame_size))
        track = self.sam2.track(features, size, prompts, batch_mode=self.config.sam2_batch_mode)
        return Segmentation(
            masks=[(logits > 0).cpu() for logits in track.logits],
            scores=[
                {"iou": iou.float().cpu(), "object_score": score.float().cpu()}
                for iou, score in zip(track.iou, track.object_score)
            ],
            prompts=prompts,
            track=track,
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        frames: Any = None,
        frame_size: Any = None,
        refer_mask: Any = None,
        point_coords: Any = None,
        point_labels: Any = None,
        point_frames: Any = None,
        video_features: tuple[torch.Tensor, torch.Tensor] | None = None,
        logits_to_keep: int = 0,
        return_pre_norm_states: bool = False,
        **kwargs: Any,
    ) -> UniPixelOutput:
        """Reference-compatible forward; ``frames``/``frame_size`` (batch size 1) turn on mask prediction.

        ``frames`` and ``frame_size`` may be given bare or as the reference's one-element lists.
        """
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(
                input_ids,
                pixel_values=pixel_values,
                image_grid_thw=image_grid_thw,
                pixel_values_videos=pixel_values_videos,
                video_grid_thw=video_grid_thw,
                refer_mask=refer_mask,
                point_coords=point_coords,
                point_labels=point_labels,
                point_frames=point_frames,
                video_features=video_features,
            )
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            if past:
                raise ValueError("position_ids are required when continuing from a cache")
            position_ids = self.rope_positions(input_ids, image_grid_thw, video_grid_thw, second_per_grid_ts)
        pre_norm: list[torch.Tensor] = []
        hook = self.model.language_model.norm.register_forward_pre_hook(lambda _m, args: pre_norm.append(args[0]))
        try:
            outputs = self.model.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids.to(inputs_embeds.device),
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        finally:
            hook.remove()
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size)

        segmentation = None
        if frames is not None and self.config.sam2_enable_decoder and input_ids is not None:
            frames, frame_size = _unwrap_single(frames), _unwrap_single(frame_size)
            positions = seg_prompt_positions(input_ids[0], self.config.seg_token_id)
            segmentation = self.segment(pre_norm[0][0, positions], frames, frame_size)
        output = UniPixelOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            masks=segmentation.masks if segmentation else None,
            segmentation=segmentation,
        )
        if return_pre_norm_states:
            output["pre_norm_states"] = pre_norm[0]
        return output

    # ------------------------------------------------------------------ generation
    def _prepare_position_ids_for_generation(self, inputs_tensor: torch.Tensor, model_kwargs: dict) -> torch.Tensor:
        """Prompt positions by the 4.53.3 rule; generation then advances every axis by one per token."""
        input_ids = model_kwargs.get("input_ids", inputs_tensor)
        return self.rope_positions(
            input_ids,
            model_kwargs.get("image_grid_thw"),
            model_kwargs.get("video_grid_thw"),
            model_kwargs.get("second_per_grid_ts"),
        )

    def prepare_inputs_for_generation(self, *args: Any, is_first_iteration: bool = False, **kwargs: Any) -> dict:
        """Vision pixels and pixel prompts feed the prefill only; later steps see plain tokens."""
        if not is_first_iteration:
            for key in PREFILL_ONLY_INPUTS + ("video_features",):
                kwargs.pop(key, None)
        return super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)

    @torch.no_grad()
    def generate(
        self, *args: Any, frames: Any = None, frame_size: Any = None, prompt_masks: bool = True, **kwargs: Any
    ) -> Any:
        """``GenerationMixin.generate``; with ``frames`` also the masks of every ``<|seg|>`` in the sequence.

        The pre-norm hidden state of each processed position is captured during decoding (locally, no model
        state), so a generated ``<|seg|>`` gets its mask from the same state the reference used: the one at
        the position that predicted it. Returns :class:`UniPixelGenerateOutput` when ``frames`` is given;
        ``prompt_masks=False`` skips the ``<|seg|>`` tokens already in the prompt (earlier turns); with a reused
        ``cache`` the prompt tokens it already holds have no states here, so their masks are skipped too.
        """
        if frames is None:
            return super().generate(*args, **kwargs)
        frames, frame_size = _unwrap_single(frames), _unwrap_single(frame_size)
        cache = kwargs.get("cache")
        offset = cache.get_seq_length() if cache is not None else 0  # positions already in a reused cache
        states: list[torch.Tensor] = []
        hook = self.model.language_model.norm.register_forward_pre_hook(lambda _m, a: states.append(a[0][0]))
        try:
            kwargs["return_dict_in_generate"] = True
            out = super().generate(*args, **kwargs)
        finally:
            hook.remove()
        hidden = torch.cat(states, dim=0)
        prompt_length = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
        positions = seg_prompt_positions(out.sequences[0], self.config.seg_token_id)
        first = max(offset, 0 if prompt_masks else prompt_length - 1)
        positions = positions[(positions >= first) & (positions < offset + hidden.shape[0])]
        segmentation = self.segment(hidden[positions - offset], frames, frame_size)
        return UniPixelGenerateOutput(**{**out, "masks": segmentation.masks, "segmentation": segmentation})


def seg_prompt_positions(ids: torch.Tensor, seg_token_id: int) -> torch.Tensor:
    """Positions whose next token is ``<|seg|>``: the hidden states that prompt SAM 2."""
    return torch.nonzero(ids[1:] == seg_token_id).flatten()


def _unwrap_single(value: Any) -> Any:
    """Accept the reference's one-element lists (batch size 1) as well as bare values."""
    if isinstance(value, (list, tuple)) and len(value) == 1 and (torch.is_tensor(value[0]) or isinstance(value[0], (list, tuple, FrameFeatures))):
        return value[0]
    return value


def _flatten_point_prompts(coords: Sequence, labels: Sequence, frames: Any) -> tuple[list, list, torch.Tensor]:
    """Reference nesting ``[[c0, c1, ...]]`` / ``[[LongTensor]]`` (batch 1) or flat lists -> flat per-object lists."""
    if len(coords) == 1 and isinstance(coords[0], (list, tuple)):
        coords, labels = coords[0], labels[0]
    while isinstance(frames, (list, tuple)):
        frames = frames[0] if len(frames) == 1 else torch.as_tensor(frames)
    frames = torch.as_tensor(frames, dtype=torch.long).flatten()
    if not (len(coords) == len(labels) == frames.numel()):
        raise ValueError(f"{len(coords)} point prompts, {len(labels)} label sets and {frames.numel()} frame indices")
    return list(coords), list(labels), frames
