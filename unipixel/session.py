"""A grounded conversation about one image or video: turns, visual prompts, objects and caches.

The session turns what a user gives (natural language, points/boxes/scribbles numbered ``[0]``, ``[1]``, ...)
into the prompt formats the released model was trained on (spec §6), runs the model, and turns every
``<|seg|>`` of a reply into an object tag ``[obj_k]`` with per-frame masks. Object numbers and region ids
are stable for the whole conversation. Media decoding, the vision tower's output and SAM 2's image
features are computed once per media and reused by follow-up turns.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import limits
from .engine import Engine
from .modeling.sam2 import FrameFeatures, TrackResult
from .processing.media import Media, iter_frames, load_media
from .processing.prompts import (
    BoxPrompt,
    MaskPrompt,
    PointPrompt,
    mem_prefix,
    ref_inputs,
    ref_mention,
    refer_mask,
    seg_object_ids,
)
from .processing.vision import (
    build_vision_inputs,
    decode_response,
    render_chat,
    sam2_frames,
    tokenize_with_video,
    video_grid_thw,
)
from .rendering import color_for

Prompt = PointPrompt | BoxPrompt | MaskPrompt
Progress = Callable[[str, float], None]

SEGMENT_INTENT = re.compile(r"\b(segment\w*|masks?|track\w*|locali[sz]e|highlight|outline)\b", re.IGNORECASE)
QUESTION = re.compile(r"\?|^\s*(what|which|who|where|why|how|is|are|does|do|can|could)\b", re.IGNORECASE)
ID_SEGMENTATION = "Please segment the mentioned objects with IDs in the question: {}"
PIXELQA_LOCALIZE = "{}. Please localize the relevant objects with IDs."
SEG = "<|seg|>"


@dataclass
class Settings:
    """Per-session knobs the UI exposes."""

    num_frames: int = 16
    max_new_tokens: int = 512
    dense_cap: int = limits.DENSE_FRAMES
    reuse_kv: bool = True  # continue follow-up turns from the previous turn's keys/values


@dataclass
class Region:
    """A user's visual prompt with its conversation-wide id (written ``[id]`` in text)."""

    id: int
    prompt: Prompt
    turn: int


@dataclass
class GroundedObject:
    """An object the model segmented: its tag, colour and per-frame masks on the sampled frames.

    ``iou`` and ``presence`` are SAM 2's predicted IoU of the chosen mask and the sigmoid of its
    object-presence logit, per frame. ``region`` is the user's region id written before its ``<|seg|>``.
    ``dense_masks`` (optional) covers every decoded frame ``dense_indices`` of the video.
    """

    tag: str
    masks: np.ndarray
    frame_indices: list[int]
    turn: int
    iou: np.ndarray
    presence: np.ndarray
    region: int | None = None
    prompt: torch.Tensor | None = field(default=None, repr=False)
    corrections: list[tuple[int, list[tuple[float, float, int]]]] = field(default_factory=list)
    states: list = field(default_factory=list, repr=False)
    dense_masks: np.ndarray | None = field(default=None, repr=False)
    dense_indices: list[int] | None = None

    @property
    def color(self) -> str:
        return color_for(self.tag)

    @property
    def confidence(self) -> float:
        """Mean predicted IoU over the frames where SAM 2 says the object is present (0 if never)."""
        present = self.presence > 0.5
        return float(self.iou[present].mean()) if present.any() else 0.0

    def to_dict(self) -> dict:
        return {
            "tag": self.tag,
            "color": self.color,
            "turn": self.turn,
            "region": self.region,
            "frames": self.frame_indices,
            "confidence": round(self.confidence, 4),
            "presence": [round(float(p), 4) for p in self.presence],
            "area": [int(m.sum()) for m in self.masks],
        }


@dataclass
class Reply:
    """One answer: text with ``[obj_k]`` tags, the objects it created, and how long each stage took."""

    text: str
    raw_text: str
    objects: list[GroundedObject]
    regions: list[int]
    turn: int
    timings: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "raw_text": self.raw_text,
            "turn": self.turn,
            "regions": self.regions,
            "objects": [obj.to_dict() for obj in self.objects],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


class ChatSession:
    """State of one conversation about one media file; not thread-safe (one per visitor)."""

    def __init__(self, engine: Engine, settings: Settings | None = None) -> None:
        self.engine = engine
        self.settings = replace(settings) if settings else Settings()  # never shared between sessions
        self.media: Media | None = None
        self.media_path: Path | None = None
        self._segment: tuple[float | None, float | None] = (None, None)
        self.reset()

    # ------------------------------------------------------------------ media and state
    def open(
        self, path: str | Path, num_frames: int | None = None, start_s: float | None = None, end_s: float | None = None,
        progress: Progress | None = None,
    ) -> Media:
        """Load an image or a video (sampled to ``num_frames``); starts a new conversation."""
        _report(progress, "decoding", 0.0)
        frames = limits.check_num_frames(self.settings.num_frames if num_frames is None else num_frames)
        media = load_media(path, num_frames=frames, start_s=start_s, end_s=end_s)
        self.settings.num_frames = frames
        self.media, self.media_path, self._segment = media, Path(path), (start_s, end_s)
        self._vision = None
        self._video_grid: dict[str, torch.Tensor] | None = None
        self._features: FrameFeatures | None = None
        self.dense_frames: np.ndarray | None = None
        self.reset()
        _report(progress, "decoding", 1.0)
        return media

    def reset(self) -> None:
        """Forget the conversation (turns, regions, objects); keep the media and its cached features."""
        self.history: list[dict[str, str]] = []
        self.regions: list[Region] = []
        self.objects: dict[str, GroundedObject] = {}
        self.replies: list[Reply] = []
        self._mem_order: list[int] = []
        self._ref_order: list[int] = []
        self._kv: tuple[torch.Tensor, object] | None = None  # token ids whose keys/values the cache holds

    @property
    def turn(self) -> int:
        return len(self.replies)

    @property
    def next_region_id(self) -> int:
        """The id the next visual prompt gets (the UI numbers prompts on the canvas with it)."""
        return len(self.regions)

    # ------------------------------------------------------------------ one turn
    def ask(self, question: str, prompts: Sequence[Prompt] = (), progress: Progress | None = None) -> Reply:
        """Answer ``question`` about the media, with optional new visual prompts (ids continue the session's).

        Formats (spec §6): scribbles become a ``<|mem|>`` prefix; points/boxes become ``[id] <|ref|>`` at
        their first mention; a request to segment prompted objects uses the ID-based wrapper (one mask
        per object), and a question about them that also asks for masks runs PixelQA (§6.5).
        """
        self._require_media()
        question = limits.clean_question(question)
        limits.check_references(question, len(self.regions) + len(prompts))
        if len(self.objects) >= limits.MAX_OBJECTS:
            raise ValueError(f"this conversation already has {len(self.objects)} objects (the most one holds); "
                             "start a new conversation")
        saved = self._snapshot()
        try:
            return self._ask(question, prompts, progress)
        except BaseException:
            self._restore(saved)  # a failed turn leaves the conversation as it was
            raise

    def _snapshot(self) -> tuple:
        return list(self.regions), dict(self.objects), list(self._mem_order), list(self._ref_order)

    def _restore(self, saved: tuple) -> None:
        regions, objects, mem_order, ref_order = saved
        self.regions, self.objects, self._mem_order, self._ref_order = list(regions), dict(objects), list(mem_order), list(ref_order)

    def _ask(self, question: str, prompts: Sequence[Prompt], progress: Progress | None) -> Reply:
        started = time.perf_counter()
        new = self._add_regions(prompts)
        refs = [r for r in new if not isinstance(r.prompt, MaskPrompt)]
        asks_masks = bool(SEGMENT_INTENT.search(question))
        mentioned, ref_order = _mention_refs(question, refs)
        prefix = self._mem_prefix(new)
        self._mem_order += [r.id for r in new if isinstance(r.prompt, MaskPrompt)]
        self._ref_order += ref_order
        timings: dict[str, float] = {}
        if refs and asks_masks and QUESTION.search(question):
            user_text = prefix + mentioned
            raw, objects = self._pixel_qa(prefix, mentioned, ref_order, timings, progress)
        else:
            user_text = prefix + (ID_SEGMENTATION.format(mentioned) if refs and asks_masks else mentioned)
            raw, objects = self._generate(self.history + [_user(user_text)], timings, progress)
        self.history += [_user(user_text), {"role": "assistant", "content": raw}]
        text = _tag_objects(raw, objects)
        timings["total"] = time.perf_counter() - started
        reply = Reply(text, raw, objects, [r.id for r in new], self.turn + 1, timings)
        self.replies.append(reply)
        return reply

    def _generate(
        self, messages: list[dict], timings: dict, progress: Progress | None, segment: bool = True, **input_options
    ) -> tuple[str, list[GroundedObject]]:
        """Generate the assistant's reply to ``messages``; returns the raw text and the objects it grounded
        (none when ``segment`` is false: the text then keeps no ``<|seg|>``)."""
        _report(progress, "thinking", 0.0)
        inputs = self._inputs(messages, timings, **input_options)
        timings["reused_tokens"] = float(self._reuse_cache(inputs))
        tick = time.perf_counter()
        masks = dict(frames=lambda: self._sam_features(progress, timings), frame_size=self._require_media().size)
        out = self.engine.model.generate(
            **inputs,
            **(masks if segment else {"return_dict_in_generate": True}),
            prompt_masks=False,
            max_new_tokens=limits.check_new_tokens(self.settings.max_new_tokens),
        )
        timings["generate"] = time.perf_counter() - tick - timings.get("sam2_features", 0.0)
        self._keep_cache(out)
        new_ids = out.sequences[0, inputs["input_ids"].shape[1]:]
        timings["new_tokens"] = float(len(new_ids))
        raw = decode_response(self.engine.processor, new_ids).replace("<|endoftext|>", "").strip()
        if not segment:
            return re.sub(r"\s*<\|seg\|>", "", raw), []
        return raw, self._objects(out.segmentation, seg_object_ids(raw))

    def _pixel_qa(
        self, prefix: str, question: str, ref_order: list[int], timings: dict, progress: Progress | None
    ) -> tuple[str, list[GroundedObject]]:
        """PixelQA (spec §6.5): localize the referred objects with IDs (teacher-forced ``[id] <|seg|>``), then
        answer with their predicted masks as ``<|mem|>`` prompts. The reply keeps the answer and the masks."""
        media = self._require_media()
        _report(progress, "segmenting", 0.0)
        localize = prefix + PIXELQA_LOCALIZE.format(question.rstrip("."))
        forced = " ".join(f"[{i}] {SEG}" for i in ref_order)
        inputs = self._inputs(self.history + [_user(localize), {"role": "assistant", "content": forced}], timings, add_generation_prompt=False)
        tick = time.perf_counter()
        with torch.inference_mode():
            out = self.engine.model(**inputs, return_pre_norm_states=True)
        positions = torch.nonzero(inputs["input_ids"][0, 1:] == self.engine.model.config.seg_token_id).flatten()
        segmentation = self.engine.model.segment(
            out["pre_norm_states"][0, positions[-len(ref_order):]], self._sam_features(progress, timings), media.size
        )
        timings["localize"] = time.perf_counter() - tick
        objects = self._objects(segmentation, ref_order)
        # Step 2: the predicted masks as mask prompts; an object never found becomes the whole frame.
        answer_masks = []
        for obj in objects:
            masks = obj.masks if obj.masks.any() else np.ones_like(obj.masks)
            answer_masks.append([MaskPrompt(m, f) for f, m in enumerate(masks) if m.any()])
        answer_text = self._mem_prefix_for(answer_masks, ref_order) + prefix + question.replace(" <|ref|>", "")
        earlier_refs = self._ref_order[: len(self._ref_order) - len(ref_order)]
        raw_answer, _ = self._generate(
            self.history + [_user(answer_text)], timings, progress, segment=False, extra_masks=answer_masks, refs=earlier_refs
        )
        return f"{raw_answer} " + " ".join(f"[{i}] {SEG}" for i in ref_order), objects

    # ------------------------------------------------------------------ refinement and dense tracking
    def refine(self, tag: str, clicks: Sequence[tuple[float, float, int]], frame: int) -> GroundedObject:
        """Correct object ``tag`` with positive (1) / negative (0) clicks on sampled frame ``frame``.

        The clicks add to earlier ones on that frame; SAM 2 corrects the frame on top of the object's memory
        and re-propagates (in ``sam2_batch_mode``, where every frame is segmented on its own, only that frame
        changes). The object keeps its tag and colour. Clicks are in original media pixels.
        """
        obj = self.objects.get(tag)
        if obj is None:
            raise ValueError(f"there is no object {tag} to refine")
        media = self._require_media()
        limits.check_clicks(clicks, media.size, frame, media.num_frames)
        sam = self.engine.model.sam2
        if not obj.states:  # dropped by detach(): rebuild from the prompt and replay the corrections in order
            obj.states = self._track(self._sam_features(None, {}), media.size, obj.prompt[None]).states[0]
            for earlier, earlier_clicks in obj.corrections:
                sam.refine(obj.states, earlier, earlier_clicks)
        on_frame = [c for f, sent in obj.corrections[-1:] if f == frame for c in sent]
        sent = on_frame + [tuple(c) for c in clicks]  # stock replaces a frame's clicks: send them all
        try:
            track = sam.refine(obj.states, frame, sent)
        except BaseException:
            obj.states = []  # maybe half-updated: rebuilt from the prompt and the kept corrections on next use
            raise
        obj.corrections.append((frame, sent))
        obj.masks, obj.iou, obj.presence = _track_arrays(track, 0)
        obj.dense_masks = obj.dense_indices = None
        return obj

    def detach(self) -> ChatSession:
        """Drop the model and move cached tensors to the CPU (ZeroGPU pickles the session between calls).

        Tracker states are dropped too; :meth:`refine` rebuilds them from the object's prompt and clicks.
        """
        self.engine = None
        self._kv = None
        if self._vision is not None:
            self._vision = tuple(t.cpu() for t in self._vision)
        if self._features is not None:
            self._features = self._features.to("cpu")
        for obj in self.objects.values():
            obj.prompt = obj.prompt.cpu() if obj.prompt is not None else None
            obj.states = []
        return self

    def attach(self, engine: Engine) -> ChatSession:
        """Give a detached session its model back; caches move to the model's device."""
        self.engine = engine
        if self._vision is not None:
            self._vision = tuple(t.to(engine.device) for t in self._vision)
        if self._features is not None:
            self._features = self._features.to(engine.device)
        return self

    def track_dense(self, tags: Sequence[str] | None = None, cap: int | None = None, progress: Progress | None = None) -> list[int]:
        """Propagate objects through every decoded frame of the video segment (capped, see ``limits``).

        Beyond the reference, which masks only the sampled frames: the overlay can then play at the source
        frame rate. The decoded frames stay in ``dense_frames`` for rendering; returns their source indices.
        """
        media = self._require_media()
        if media.is_image:
            raise ValueError("dense tracking needs a video")
        unknown = [t for t in tags or () if t not in self.objects]
        if unknown:
            raise ValueError(f"there is no object {unknown[0]} to track")
        chosen = [self.objects[t] for t in (tags or list(self.objects)) if self.objects[t].prompt is not None]
        if not chosen:
            return []
        cap = limits.dense_frame_cap(media.size, cap or self.settings.dense_cap)
        _report(progress, "tracking", 0.0)
        start, end = self._segment
        decoded = []
        for frame in iter_frames(self.media_path, start_s=start, end_s=end):
            decoded.append(frame)
            if len(decoded) == cap:
                break
        self.dense_frames = np.stack([f.rgb for f in decoded])
        sam = self.engine.model.sam2
        features = sam.encode_frames(sam2_frames(self.dense_frames, self.engine.sam_image_size))
        indices = [f.index for f in decoded]
        position = {index: i for i, index in enumerate(indices)}
        per_pass = limits.DENSE_OBJECTS_PER_PASS
        for first in range(0, len(chosen), per_pass):  # objects tracked together, a bounded number at a time
            group = chosen[first:first + per_pass]
            track = self._track(features, media.size, torch.stack([obj.prompt for obj in group]))
            for n, obj in enumerate(group):
                logits = track.logits[n]
                for frame, clicks in obj.corrections:  # refinements carry over to the dense track
                    source = media.frame_indices[frame]
                    if source in position:
                        logits = sam.refine(track.states[n], position[source], clicks).logits[0]
                obj.dense_masks = (logits > 0).cpu().numpy()
                obj.dense_indices = indices
                _report(progress, "tracking", (first + n + 1) / len(chosen))
            del track
        return indices

    # ------------------------------------------------------------------ helpers
    def _track(self, features: FrameFeatures, size: tuple[int, int], prompts: torch.Tensor) -> TrackResult:
        """SAM 2 tracking of ``prompts`` as the model's answers do it (memory, or every frame on its own in
        ``sam2_batch_mode``), so refinement and dense tracking agree with the first masks."""
        model = self.engine.model
        return model.sam2.track(features, size, prompts.to(model.sam2.device), batch_mode=model.config.sam2_batch_mode)

    def _require_media(self) -> Media:
        if self.media is None:
            raise ValueError("open an image or a video first")
        return self.media

    def _add_regions(self, prompts: Sequence[Prompt]) -> list[Region]:
        media = self._require_media()
        limits.check_prompts(prompts, len(self.regions), media.size, media.num_frames)
        new = [Region(self.next_region_id + i, p, self.turn) for i, p in enumerate(prompts)]
        self.regions += new
        return new

    def _mem_prefix(self, new: list[Region]) -> str:
        masks = [r for r in new if isinstance(r.prompt, MaskPrompt)]
        return self._mem_prefix_for([[r.prompt] for r in masks], [r.id for r in masks]) if masks else ""

    def _mem_prefix_for(self, objects: list[list[MaskPrompt]], ids: list[int]) -> str:
        media = self._require_media()
        _, slots = refer_mask(objects, media.num_frames, self._grid())
        return mem_prefix(slots, media.num_frames, media.is_image, ids)

    def _grid(self) -> tuple[int, int, int]:
        media = self._require_media()
        return video_grid_thw(*media.size, media.num_frames, self.settings.num_frames)

    def _inputs(
        self,
        messages: list[dict],
        timings: dict,
        add_generation_prompt: bool = True,
        extra_masks: Sequence[list[MaskPrompt]] = (),
        refs: list[int] | None = None,
    ) -> dict:
        """Model inputs for ``messages``: tokens, the cached vision features, and the pixel prompts of every
        ``<|mem|>`` (conversation order, then ``extra_masks``) and ``<|ref|>`` (``refs``, default all)."""
        media = self._require_media()
        model = self.engine.model
        tick = time.perf_counter()
        text = render_chat(self.engine.processor, messages, add_generation_prompt=add_generation_prompt)
        if self._vision is None:
            inputs = build_vision_inputs(self.engine.processor, media.llm_frames, text, self.settings.num_frames)
            timings["prepare"] = timings.get("prepare", 0.0) + time.perf_counter() - tick
            tick = time.perf_counter()
            with torch.inference_mode():
                self._vision = model.encode_video(
                    inputs["pixel_values_videos"].to(model.device), inputs["video_grid_thw"].to(model.device)
                )
            self._video_grid = {k: inputs[k] for k in ("video_grid_thw", "second_per_grid_ts")}
            timings["vision_encoder"] = time.perf_counter() - tick
        else:  # vision features cached: only the text needs tokenising
            inputs = {**tokenize_with_video(self.engine.processor, text, self._grid()), **self._video_grid}
            timings["prepare"] = timings.get("prepare", 0.0) + time.perf_counter() - tick
        keys = ("input_ids", "attention_mask", "video_grid_thw", "second_per_grid_ts")
        kwargs = {k: inputs[k].to(model.device) for k in keys}
        kwargs["video_features"] = self._vision
        masks = [[self.regions[i].prompt] for i in self._mem_order] + list(extra_masks)
        if masks:
            kwargs["refer_mask"], _ = refer_mask(masks, media.num_frames, self._grid())
        refs = self._ref_order if refs is None else refs
        if refs:
            prompts = [self.regions[i].prompt for i in refs]
            ref = ref_inputs(prompts, media.size, self.engine.sam_image_size, media.num_frames)
            kwargs.update(point_coords=ref.point_coords, point_labels=ref.point_labels, point_frames=ref.point_frames)
        return kwargs

    def _reuse_cache(self, inputs: dict) -> int:
        """Continue from the previous turn's keys/values where the new prompt starts with the same tokens.

        Exact reuse only: the cache is cut back to the longest common token prefix, and only when the rest
        holds plain text (no video, ``<|ref|>`` or ``<|mem|>`` tokens, whose embeddings need the prefill).
        The pixel inputs are then dropped: what they fed is already in the cache. Returns the reused length.
        """
        if self._kv is None or not self.settings.reuse_kv:
            return 0
        previous, cache = self._kv
        self._kv = None  # the cache is handed to this turn's generation
        ids = inputs["input_ids"][0]
        n = min(len(previous), len(ids) - 1)
        differs = (previous[:n].to(ids.device) != ids[:n]).nonzero()
        common = int(differs[0]) if len(differs) else n
        config = self.engine.model.config
        special = torch.tensor([config.video_token_id, config.ref_token_id, config.mem_token_id], device=ids.device)
        if common == 0 or torch.isin(ids[common:], special).any():
            return 0
        if cache.get_seq_length() > common:
            cache.crop(common - cache.get_seq_length())
        for key in ("video_features", "refer_mask", "point_coords", "point_labels", "point_frames"):
            inputs.pop(key, None)
        inputs["cache"] = cache
        return common

    def _keep_cache(self, out) -> None:
        """Remember the keys/values of this turn's tokens for the next turn (all but the last token)."""
        sequence = out.sequences[0]
        cache = getattr(out, "cache", None)
        if self.settings.reuse_kv and cache is not None and cache.get_seq_length() == len(sequence) - 1:
            self._kv = (sequence[:-1].clone(), cache)

    def _sam_features(self, progress: Progress | None, timings: dict) -> FrameFeatures:
        """SAM 2 image features of the sampled frames, computed on first need and kept for the media."""
        _report(progress, "segmenting", 0.0)
        if self._features is None:
            tick = time.perf_counter()
            media = self._require_media()
            self._features = self.engine.model.sam2.encode_frames(sam2_frames(media.frames, self.engine.sam_image_size))
            timings["sam2_features"] = time.perf_counter() - tick
        return self._features

    def _objects(self, segmentation, regions: Sequence[int | None]) -> list[GroundedObject]:
        """One new object per mask, tagged ``obj_k`` with k continuing the conversation's numbering."""
        media = self._require_media()
        if segmentation is None or segmentation.track is None:
            return []
        objects = []
        for i in range(len(segmentation.masks)):
            masks, iou, presence = _track_arrays(segmentation.track, i)
            tag = f"obj_{len(self.objects) + 1}"
            obj = GroundedObject(
                tag, masks, list(media.frame_indices), self.turn + 1, iou, presence,
                region=regions[i] if i < len(regions) else None,
                prompt=segmentation.prompts[i].detach(), states=segmentation.track.states[i],
            )
            self.objects[tag] = obj
            objects.append(obj)
        return objects


def _mention_refs(question: str, refs: list[Region]) -> tuple[str, list[int]]:
    """Write ``[id] <|ref|>`` at the first mention of each point/box region (appending unmentioned ones);
    returns the text and the region ids in ``<|ref|>`` order (the order their embeddings are placed)."""
    for region in refs:
        pattern = re.compile(rf"\[{region.id}\](?!\s*<\|ref\|>)")
        if pattern.search(question):
            question = pattern.sub(ref_mention(region.id), question, count=1)
        else:
            question = f"{question.rstrip()} {ref_mention(region.id)}"
    order = [int(m[1]) for m in re.finditer(r"\[(\d+)\] <\|ref\|>", question)]
    return question, order


def _tag_objects(raw: str, objects: list[GroundedObject]) -> str:
    """Replace each ``<|seg|>`` (left to right) by its object's ``[obj_k]`` tag; drop other special tokens."""
    tags = iter(obj.tag for obj in objects)
    text = re.sub(r"\s*<\|seg\|>", lambda _m: f" [{next(tags, 'no mask')}]", raw)
    return re.sub(r"<\|[a-z_]+\|>", "", text).strip()


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _track_arrays(track: TrackResult, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    masks = (track.logits[i] > 0).cpu().numpy()
    iou = track.iou[i].float().cpu().numpy()
    presence = torch.sigmoid(track.object_score[i].float()).cpu().numpy()
    return masks, iou, presence


def _report(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, fraction)
