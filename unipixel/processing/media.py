"""Loading what a user gives: an image, a video file, an animated image or a directory of frames.

Deviations from the reference loader (spec §5.1), all deliberate:

* Image vs video is decided by **content** (Pillow can open the file as a still image), not by the
  reference's case-sensitive ``jpg``/``png`` path-suffix test (quirk 10.7), so ``.jpeg``, ``.JPG``,
  WebP, BMP, ... are images. Animated GIF / PNG / WebP are videos (decoded frame by frame with Pillow,
  which also composes GIF disposal and handles animated WebP, which FFmpeg cannot decode).
* EXIF orientation is applied (``ImageOps.exif_transpose``); the reference ignores it.
* 16-bit grayscale is scaled to 8 bits (Pillow's ``convert('RGB')``, used by the reference, clips it
  to white). Every mode with transparency (not only RGBA) is composited on white for the LLM.
* Videos are decoded with PyAV instead of decord, streaming: sample indices are computed first
  (same formula), only the sampled frames are converted and kept. ``num_frames == 1`` takes the first
  frame (the reference divides by zero, quirk 10.6).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal, NamedTuple

import av
import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

# The limits are documented in ``unipixel.limits``; imported by name (tests patch them in this module).
from ..limits import MAX_FRAMES, MAX_IMAGE_PIXELS, MAX_ITER_FRAMES, MAX_VIDEO_FRAME_PIXELS, MAX_VIDEO_SECONDS

FRAME_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
"""File suffixes (any case) taken as frames when a directory is given as a video."""

VIDEO_CONTAINERS = frozenset({
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi",
    "gif", "apng", "mpeg", "mpegts", "flv", "ogg", "asf",
})
"""FFmpeg demuxer names accepted for videos; anything else FFmpeg might open is refused."""

ANIMATED_IMAGE_FORMATS = frozenset({"GIF", "PNG", "WEBP"})
"""Pillow formats whose multi-frame files are animations (other multi-frame files, e.g. MPO photos, are images)."""

_Kind = Literal["image", "animated", "frames", "video"]


class MediaError(ValueError):
    """A user-facing, one-line problem with the given media."""


@dataclass(frozen=True)
class Media:
    """Loaded media: the sampled frames for SAM 2 and for the LLM.

    ``frames``: uint8 RGB ``(T, H, W, 3)`` for SAM 2 (alpha dropped). ``llm_frames``: the same frames as
    RGB PIL images, transparency composited on white. ``frame_indices`` index the source frames,
    ``timestamps`` are seconds from the first frame (``None`` for a directory of frames).
    """

    frames: np.ndarray
    llm_frames: list[Image.Image]
    is_image: bool
    frame_indices: list[int]
    timestamps: list[float] | None
    fps: float | None
    source_num_frames: int

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the frames."""
        return self.frames.shape[1], self.frames.shape[2]

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]


class Frame(NamedTuple):
    """One decoded frame: source index, time in seconds (``None`` when unknown), uint8 RGB ``(H, W, 3)``."""

    index: int
    time: float | None
    rgb: np.ndarray


@dataclass(frozen=True)
class _Source:
    kind: _Kind
    path: Path
    num_frames: int
    timestamps: list[float] | None
    fps: float | None
    files: tuple[Path, ...] = ()


def sample_indices(num_source: int, num_frames: int) -> list[int]:
    """The reference's uniform sampling: ``round(arange(0, V, (V-1)/(S-1))[:S])`` when ``0 < S < V``, else all."""
    if num_frames <= 0 or num_source <= num_frames:
        return list(range(num_source))
    if num_frames == 1:
        return [0]
    step = (num_source - 1) / (num_frames - 1)
    return np.round(np.arange(0, num_source, step)[:num_frames]).astype(int).tolist()


def load_media(
    path: str | Path,
    num_frames: int = 16,
    start_s: float | None = None,
    end_s: float | None = None,
    max_frames_cap: int = MAX_FRAMES,
) -> Media:
    """Load an image (T = 1) or ``num_frames`` uniformly sampled frames of a video (``<= 0``: all frames).

    ``start_s``/``end_s`` restrict a timed video to the frames shown in ``[start_s, end_s)``.
    """
    source = _probe(Path(path))
    first, count = _segment(source, start_s, end_s)
    wanted = [first + i for i in sample_indices(count, num_frames)]
    if len(wanted) > max_frames_cap:
        raise MediaError(f"too many frames requested ({len(wanted)} > limit of {max_frames_cap})")
    sam, llm = [], []
    for _, image in _decode(source, wanted):
        rgb, llm_image = _rgb_pair(image)
        if sam and rgb.shape != sam[0].shape:
            raise MediaError("the frames differ in size")
        sam.append(rgb)
        llm.append(llm_image)
    return Media(
        frames=np.stack(sam),
        llm_frames=llm,
        is_image=source.kind == "image",
        frame_indices=wanted,
        timestamps=None if source.timestamps is None else [source.timestamps[i] for i in wanted],
        fps=source.fps,
        source_num_frames=source.num_frames,
    )


def iter_frames(
    path: str | Path, start_s: float | None = None, end_s: float | None = None, max_frames: int = MAX_ITER_FRAMES
) -> Iterator[Frame]:
    """Stream every frame (SAM 2 RGB, alpha dropped) of a video segment, or the single frame of an image."""
    source = _probe(Path(path))
    first, count = _segment(source, start_s, end_s)
    if count > max_frames:
        raise MediaError(f"video too long ({count} frames > limit of {max_frames})")
    for index, image in _decode(source, range(first, first + count)):
        time = None if source.timestamps is None else source.timestamps[index]
        yield Frame(index, time, _rgb_pair(image)[0])


# ---------------------------------------------------------------------------------------------- probing
_RESAVE = "save or export it again and upload the new file"
_SMALLER = f"resize it to at most {MAX_IMAGE_PIXELS // 1_000_000} megapixels"


def _one_line(error: object) -> str:
    return " ".join(str(error).split())


_UNREADABLE = "could not read the file as an image or a video; use a JPEG, PNG, WebP or GIF image or an MP4, WebM or MOV video"


def _probe(path: Path) -> _Source:
    if path.is_dir():
        return _probe_directory(path)
    if not path.is_file():
        raise MediaError(f"file not found: {path.name}")
    if path.stat().st_size == 0:
        raise MediaError("the file is empty; upload an image or a video")
    return _probe_image(path) or _probe_video(path)


def _probe_image(path: Path) -> _Source | None:
    """A still or animated image, or ``None`` when Pillow does not recognise the file."""
    try:
        with Image.open(path) as image:
            _check_image_size(image.size)
            if image.format not in ANIMATED_IMAGE_FORMATS or not getattr(image, "is_animated", False):
                return _Source("image", path, 1, [0.0], None)
            durations = [_frame_duration(frame) for frame in ImageSequence.Iterator(image)]
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError:
        raise MediaError(f"image too large (more than {MAX_IMAGE_PIXELS} pixels); {_SMALLER}") from None
    except (OSError, EOFError, SyntaxError) as error:  # what Pillow raises for damaged files
        raise MediaError(f"the image file is damaged ({_one_line(error)}); {_RESAVE}") from None
    starts = (np.concatenate([[0], np.cumsum(durations[:-1])]) / 1000).tolist()
    total_s = sum(durations) / 1000
    return _Source("animated", path, len(durations), starts, len(durations) / total_s if total_s else None)


def _frame_duration(frame: Image.Image) -> int:
    """Display time of the current animation frame in ms (WebP only reports it once decoded)."""
    frame.load()
    return frame.info.get("duration", 0)


def _probe_directory(path: Path) -> _Source:
    files = [f for f in path.iterdir() if f.is_file() and f.suffix.lower() in FRAME_EXTENSIONS]
    if not files:
        raise MediaError(f"no image frames in directory {path.name}")
    files.sort(key=_frame_sort_key)
    return _Source("frames", path, len(files), None, None, tuple(files))


def _frame_sort_key(file: Path) -> tuple[int, str]:
    """The reference orders frames by the integer after the stem's leading non-digits; others go last by name."""
    digits = re.sub(r"^\D+", "", file.stem)
    return (int(digits), file.name) if digits.isdigit() else (1 << 62, file.name)


def _probe_video(path: Path) -> _Source:
    with _open_video(path) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > MAX_VIDEO_FRAME_PIXELS:
            raise MediaError(f"video frames too large ({width}×{height} > {MAX_VIDEO_FRAME_PIXELS} pixels); "
                             "scale the video down to 4K or less")
        time_base = stream.time_base or Fraction(1)
        if container.duration and container.duration / av.time_base > MAX_VIDEO_SECONDS:
            raise MediaError(_too_long(container.duration / av.time_base))
        stamps, packets = [], 0
        longest = float(MAX_VIDEO_SECONDS / time_base)  # in stream time units: bounds demuxing a lying header too
        try:  # demux only (no decoding): frame count and presentation times, also for variable frame rates
            for packet in container.demux(stream):
                time = packet.pts if packet.pts is not None else packet.dts
                packets += time is not None
                if time is not None and packet.size and not packet.is_discard:
                    stamps.append(time)
                    if time - stamps[0] > longest:
                        raise MediaError(_too_long(float((time - stamps[0]) * time_base)))
        except av.FFmpegError as error:
            raise MediaError(f"the video is damaged ({error.strerror}); {_RESAVE}") from None
        if packets < stream.frames:  # the container's frame count (0 when unknown) is not all there
            raise MediaError(f"the video is truncated ({packets} of {stream.frames} frames present); upload the complete file")
        stamps.sort()
        rate = stream.average_rate or stream.guessed_rate
    if not stamps:
        raise MediaError("the video has no frames")
    timestamps = [float((t - stamps[0]) * time_base) for t in stamps]
    return _Source("video", path, len(stamps), timestamps, float(rate) if rate else None)


def _too_long(seconds: float) -> str:
    return (f"the video is too long ({seconds / 3600:.1f} h; at most {MAX_VIDEO_SECONDS / 3600:g} h); "
            "cut it shorter and upload it again")


def _open_video(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), "r")
    except av.FFmpegError:
        raise MediaError(_UNREADABLE) from None
    if not set(container.format.name.split(",")) & VIDEO_CONTAINERS or not container.streams.video:
        container.close()
        raise MediaError(_UNREADABLE)
    return container


def _segment(source: _Source, start_s: float | None, end_s: float | None) -> tuple[int, int]:
    """``(first index, frame count)`` of the frames shown in ``[start_s, end_s)``."""
    if start_s is None and end_s is None:
        return 0, source.num_frames
    if source.kind == "image" or source.timestamps is None:
        raise MediaError("a start/end time needs a video with timing")
    start = -np.inf if start_s is None else start_s
    end = np.inf if end_s is None else end_s
    inside = [i for i, t in enumerate(source.timestamps) if start <= t < end]
    if not inside:
        raise MediaError(f"no frames between {start_s}s and {end_s}s")
    return inside[0], len(inside)


# ---------------------------------------------------------------------------------------------- decoding
def _decode(source: _Source, wanted: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
    """Yield ``(index, PIL image)`` for the ascending source indices ``wanted``, decoding as a stream."""
    if source.kind == "image":
        yield 0, _load_image(source.path)
    elif source.kind == "frames":
        for index in wanted:
            yield index, _load_image(source.files[index])
    else:
        frames = _animation_frames(source.path) if source.kind == "animated" else _video_frames(source.path)
        pending = iter(wanted)
        target = next(pending, None)
        try:
            for index, frame in enumerate(frames):
                if index == target:
                    yield index, frame()
                    target = next(pending, None)
                    if target is None:
                        break
        except (av.FFmpegError, OSError, EOFError) as error:
            raise MediaError(f"the file is damaged ({_one_line(getattr(error, 'strerror', None) or error)}); {_RESAVE}") from None
        finally:
            frames.close()
        if target is not None:
            raise MediaError(f"the file is truncated or damaged (frame {target + 1} of {source.num_frames} missing); {_RESAVE}")


def _animation_frames(path: Path) -> Iterator[Callable[[], Image.Image]]:
    """Frames of an animated image, each as a thunk that materialises it (only sampled ones pay for it)."""
    with Image.open(path) as image:
        for frame in ImageSequence.Iterator(image):
            yield lambda: _loaded(frame.copy())


def _video_frames(path: Path) -> Iterator[Callable[[], Image.Image]]:
    """Decoded video frames in presentation order, each as a thunk converting it to an RGB PIL image."""
    with _open_video(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_image


def _check_image_size(size: tuple[int, int]) -> None:
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise MediaError(f"image too large ({size[0]}×{size[1]} > {MAX_IMAGE_PIXELS} pixels); {_SMALLER}")


def _load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            _check_image_size(image.size)
            return _loaded(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise MediaError(f"could not read {path.name} as an image") from None
    except Image.DecompressionBombError:
        raise MediaError(f"image too large (more than {MAX_IMAGE_PIXELS} pixels); {_SMALLER}") from None
    except (OSError, EOFError, SyntaxError) as error:
        raise MediaError(f"the image file is truncated or damaged ({_one_line(error)}); {_RESAVE}") from None


def _loaded(image: Image.Image) -> Image.Image:
    """Decode the pixels now (so damage surfaces here) and bring 16-bit grayscale to 8 bits."""
    image.load()
    if image.mode.startswith("I"):
        scaled = np.asarray(image, dtype=np.float64) / 257
        image = Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8))
    return image


def _rgb_pair(image: Image.Image) -> tuple[np.ndarray, Image.Image]:
    """SAM 2 frame (``convert('RGB')``: alpha dropped) and LLM frame (transparency composited on white)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if not image.has_transparency_data:
        return np.asarray(rgb), rgb
    rgba = image.convert("RGBA")
    llm = Image.new("RGB", rgba.size, (255, 255, 255))
    llm.paste(rgba, mask=rgba.getchannel("A"))
    return np.asarray(rgb), llm
