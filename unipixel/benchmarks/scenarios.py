"""The benchmark scenarios: generated media, chat turns stage by stage, dense tracking, SAM 2 scaling, start-up."""
from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..engine import Engine, load_engine
from ..modeling.sam2 import FrameFeatures
from ..processing.vision import sam2_frames
from ..rendering import save_overlay_png, save_overlay_video, write_mp4
from ..session import ChatSession, Reply, Settings
from ..training.shapes import make_scene
from .measure import Probe, Run, Sample, measure, synced_time

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app.py"
MEDIA_SIZE = (320, 240)  # (width, height) of the generated media
VIDEO_FPS = 8
OVERLAY_FPS = 2.0


# ---------------------------------------------------------------------------------------------- media
@dataclass(frozen=True)
class BenchMedia:
    """Generated inputs: a still image, a 16-frame video, a longer clip for dense tracking (the video's first frames
    are the clip's), and segmentation questions about their objects (see :func:`grounding_questions`)."""

    image: Path
    video16: Path
    clip: Path
    clip_frames: np.ndarray
    image_questions: tuple[str, ...]
    video_questions: tuple[str, ...]


def make_media(directory: Path, clip_length: int, seed: int = 7) -> BenchMedia:
    """Procedural shapes scenes at 320x240; videos as H.264 MP4 (the clip has ``clip_length`` frames)."""
    rng = np.random.default_rng(seed)
    still = make_scene(rng, num_objects=3)
    moving = make_scene(rng, video=True, num_objects=3, num_frames=max(16, clip_length))
    image = directory / "image.png"
    Image.fromarray(_resized(still.frames)[0]).save(image)
    frames = _resized(moving.frames)
    return BenchMedia(
        image=image,
        video16=write_mp4(directory / "video16.mp4", frames[:16], fps=VIDEO_FPS),
        clip=write_mp4(directory / "clip.mp4", frames[:clip_length], fps=VIDEO_FPS),
        clip_frames=frames,
        image_questions=_questions(still.objects, "image"),
        video_questions=_questions(moving.objects, "video"),
    )


def _resized(frames: np.ndarray) -> np.ndarray:
    """Frames at ``MEDIA_SIZE`` (nearest: flat colours stay flat)."""
    return np.stack([np.asarray(Image.fromarray(f).resize(MEDIA_SIZE, Image.NEAREST)) for f in frames])


def _questions(objects: list, medium: str) -> tuple[str, ...]:
    """Segmentation questions about each object, in two of the training templates."""
    names = [o.description for o in objects]
    return tuple(f"Please segment the {name} in this {medium}." for name in names) + tuple(
        f"Segment the {name} in the {medium}." for name in names
    )


def grounding_questions(engine: Engine, settings: Settings, path: Path, candidates: tuple[str, ...]) -> tuple[str, str]:
    """The first two ``candidates`` the model answers with a mask on ``path`` (each asked in a new conversation),
    so that every turn measures segmentation whatever the checkpoint; padded with the first candidates."""
    grounded: list[str] = []
    for question in candidates:
        session = ChatSession(engine, settings)
        session.open(path)
        if session.ask(question).objects:
            grounded.append(question)
            if len(grounded) == 2:
                break
    chosen = grounded + [q for q in candidates if q not in grounded]
    return chosen[0], chosen[1]


# ---------------------------------------------------------------------------------------------- turns
def _render(session: ChatSession, reply: Reply, directory: Path) -> None:
    """The overlay the app shows: a PNG for an image, an H.264 MP4 of the sampled frames for a video."""
    media = session.media
    masks = {obj.tag: obj.masks for obj in reply.objects}
    if media.is_image:
        save_overlay_png(directory / "overlay.png", media.frames[0], {tag: m[0] for tag, m in masks.items()})
    else:
        save_overlay_video(directory / "overlay.mp4", media.frames, masks, fps=OVERLAY_FPS)


def _ask(session: ChatSession, question: str, probe: Probe, directory: Path) -> Sample:
    """One question on the open media plus rendering, split into stages (``other``: session bookkeeping)."""
    probe.reset()
    start = time.perf_counter()
    reply = session.ask(question)
    rendered = time.perf_counter()
    _render(session, reply, directory)
    end = time.perf_counter()
    timings, frames, objects = reply.timings, session.media.num_frames, len(reply.objects)
    prefill, decode, steps = probe.generation()
    track = probe.total("track")
    stages = {
        "preprocess_s": timings["prepare"],
        "vision_encoder_s": timings.get("vision_encoder", 0.0),
        "llm_prefill_s": prefill,
        "generation_s": decode,
        "sam2_features_s": timings.get("sam2_features", 0.0),
        "mask_track_s": track,
        "render_s": end - rendered,
    }
    stages["other_s"] = end - start - sum(stages.values())
    for name in ("llm_layers", "vision_window", "vision_full"):  # parts of the stages above, when probed
        if name in probe.spans:
            stages[f"{name}_s"] = probe.total(name)
    return end - start, stages, {
        "new_tokens": timings["new_tokens"],
        "decode_tokens_per_second": steps / decode if decode else 0.0,
        "objects": float(objects),
        "frames": float(frames),
        "mask_track_per_frame_object_ms": 1000 * track / (frames * objects) if objects else 0.0,
    }


def _conversation(
    engine: Engine, settings: Settings, path: Path, questions: list[str], probe: Probe, directory: Path
) -> list[Sample]:
    """Open ``path`` in a new conversation and ask ``questions`` in turn; the first turn includes media decoding."""
    session = ChatSession(engine, settings)
    start = time.perf_counter()
    session.open(path)
    decoded = time.perf_counter() - start
    turns = [_ask(session, question, probe, directory) for question in questions]
    seconds, stages, figures = turns[0]
    turns[0] = decoded + seconds, {"decode_s": decoded, **stages}, figures
    return turns


def first_turn(engine: Engine, settings: Settings, path: Path, question: str, probe: Probe, directory: Path) -> Run:
    """A new conversation: decode the media, answer, render."""
    return lambda: _conversation(engine, settings, path, [question], probe, directory)[0]


def followup_turn(
    engine: Engine, settings: Settings, path: Path, questions: tuple[str, str], probe: Probe, directory: Path
) -> Run:
    """The second question on the same media (figure ``first_turn_s``: the first turn, end to end)."""

    def run() -> Sample:
        first, (seconds, stages, figures) = _conversation(engine, settings, path, list(questions), probe, directory)
        return seconds, stages, {**figures, "first_turn_s": first[0], "first_turn_objects": first[2]["objects"]}

    return run


def with_ratio(result: dict) -> dict:
    """A follow-up result with its median as a fraction of the first turns' median."""
    return {**result, "ratio_to_first": result["median_s"] / result["first_turn_s"]}


def dense_track(engine: Engine, settings: Settings, path: Path, question: str, probe: Probe) -> Run | str:
    """``track_dense`` through every frame of ``path`` for the objects of a first turn (or why it cannot run).

    The first turn only has to ground an object: it samples 2 frames when that suffices (dense tracking re-encodes
    every frame anyway), else as many as the app.
    """
    for frames in (2, settings.num_frames):
        session = ChatSession(engine, settings)
        session.open(path, num_frames=frames)
        if session.ask(question).objects:
            break
    else:
        return "the model grounded no object to track"

    def run() -> Sample:
        probe.reset()
        start = time.perf_counter()
        frames = len(session.track_dense())
        seconds = synced_time(engine.device) - start
        features, track = probe.total("encode_frames"), probe.total("track")
        stages = {"decode_preprocess_s": seconds - features - track, "sam2_features_s": features, "mask_track_s": track}
        return seconds, stages, {"frames": float(frames), "fps": frames / seconds}

    return run


# ---------------------------------------------------------------------------------------------- scaling
class Sam2Scaling:
    """SAM 2 on the frames of a clip, encoded once: tracking time against frames and up to ``objects`` objects.

    Prompts come from ``seg_head`` on random hidden states (the model's own path into SAM 2).
    """

    def __init__(self, model: torch.nn.Module, frames: np.ndarray, objects: int) -> None:
        self.sam, self.device = model.sam2, model.device
        self.pixels = sam2_frames(frames, model.config.sam2_image_size)
        self.size = frames.shape[1:3]
        with torch.inference_mode():
            self.features = self.sam.encode_frames(self.pixels)
            states = torch.randn(objects, model.config.text_config.hidden_size, device=self.device, dtype=model.dtype)
            self.prompts = model.seg_head(states).view(objects, model.config.sam2_hidden_tokens, self.sam.hidden_dim)

    def encode(self, runs: int, warmup: int) -> dict:
        """Image features of all frames."""
        result = measure(self._timed(lambda: self.sam.encode_frames(self.pixels)), runs, warmup)
        return {**result, "frames": len(self.pixels), "per_frame_s": result["median_s"] / len(self.pixels)}

    def track(self, frames: int, objects: int, runs: int, warmup: int, previous: dict | None = None) -> dict:
        """Tracking ``objects`` objects over the first ``frames`` frames. Against ``previous`` (the point before,
        along one axis), ``growth_vs_linear`` = time growth / count growth: 1 linear, > 1 worse than linear."""
        encoded = self.features
        features = FrameFeatures(encoded.frames[:frames], [f[:frames] for f in encoded.backbone_fpn], encoded.vision_pos_enc)
        result = measure(self._timed(lambda: self.sam.track(features, self.size, self.prompts[:objects])), runs, warmup)
        result.update(frames=frames, objects=objects, per_frame_object_s=result["median_s"] / (frames * objects))
        if previous and "median_s" in previous:
            count = frames * objects / (previous["frames"] * previous["objects"])
            result["growth_vs_linear"] = result["median_s"] / previous["median_s"] / count
        return result

    def _timed(self, fn: Any) -> Run:
        def run() -> Sample:
            start = synced_time(self.device)
            fn()
            return synced_time(self.device) - start, {}, {}

        return run


# ---------------------------------------------------------------------------------------------- start-up
def model_load(model: str, device: str, dtype: torch.dtype) -> Run:
    """``load_engine`` from disk to a ready model (the OS file cache is warm after the warm-up)."""

    def run() -> Sample:
        start = time.perf_counter()
        engine = load_engine(model, device, dtype)
        return synced_time(engine.device) - start, {}, {}

    return run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    """Whether http://127.0.0.1:port/ answers 200 (loopback, no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def app_ready(model: str, timeout_s: float = 180.0) -> Run:
    """Launch ``app.py --model M --port P`` until its page answers 200, then stop it."""

    def run() -> Sample:
        port = _free_port()
        with tempfile.TemporaryFile() as log:
            start = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, str(APP), "--model", model, "--port", str(port)], cwd=REPO, stdout=log, stderr=log
            )
            try:
                while time.perf_counter() - start < timeout_s:
                    if process.poll() is not None:
                        log.seek(0)
                        tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
                        raise RuntimeError(f"app.py exited with code {process.returncode}: {' | '.join(tail)}")
                    if _answers(port):
                        return time.perf_counter() - start, {}, {}
                    time.sleep(0.05)
                raise TimeoutError(f"app.py did not answer within {timeout_s:.0f} s")
            finally:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    return run
