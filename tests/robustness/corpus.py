"""The corpus of bad and odd inputs, generated on the spot (nothing downloaded): media files, questions and
visual prompts.

Each media :class:`Case` says whether the file must load (``ok``: valid but odd, e.g. CMYK or EXIF-rotated) or be
refused with a one-line message (``error``). ``check`` holds what a correct load must satisfy.
:data:`QUESTIONS` and :func:`prompt_cases` are the text and prompt cases, each with what must happen; the tests
send every case through the session, the CLI and the app (``/ask`` and the UI events).
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
from PIL import Image


@dataclass
class Case:
    name: str
    path: Path
    ok: bool
    frames: int | None = None  # expected number of sampled frames when ok
    size: tuple[int, int] | None = None  # expected (H, W) when ok
    check: Callable[[np.ndarray], bool] | None = field(default=None, repr=False)


def _scene(h: int, w: int) -> np.ndarray:
    """A red square in the top-left quarter on grey, so orientation can be checked."""
    img = np.full((h, w, 3), 128, np.uint8)
    img[: h // 4, : w // 4] = (255, 0, 0)
    return img


def _red_top_left(frame: np.ndarray) -> bool:
    h, w = frame.shape[:2]
    corner = frame[: max(1, h // 8), : max(1, w // 8)].reshape(-1, 3).mean(0)
    return corner[0] > 200 and corner[1] < 60


def _write_video(path: Path, frames: list[np.ndarray], fps: int | Fraction = 10, codec: str = "libx264", times: list[int] | None = None) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = times[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _bomb_png(path: Path, w: int = 50000, h: int = 50000) -> Path:
    """A tiny PNG whose header claims w×h pixels (decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def build_corpus(root: Path, long_video: bool = True) -> list[Case]:
    """Write every case under ``root`` and return them."""
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    scene = _scene(120, 160)

    (root / "empty.png").write_bytes(b"")
    cases.append(Case("zero-byte image", root / "empty.png", ok=False))
    (root / "empty.mp4").write_bytes(b"")
    cases.append(Case("zero-byte video", root / "empty.mp4", ok=False))
    buf = io.BytesIO()
    Image.fromarray(scene).save(buf, "PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    cases.append(Case("truncated image", root / "truncated.png", ok=False))
    good_video = _write_video(root / "good.mp4", [np.roll(scene, 4 * i, axis=1) for i in range(12)])
    data = good_video.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    cases.append(Case("truncated video", root / "truncated.mp4", ok=False))
    fast = root / "fast.mp4"  # index first, so the cut file still opens and its frames are missing
    with av.open(str(good_video)) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    data = fast.read_bytes()
    (root / "truncated_fast.mp4").write_bytes(data[: len(data) * 2 // 3])
    cases.append(Case("truncated video, header intact", root / "truncated_fast.mp4", ok=False))
    (root / "text.jpg").write_text("this is not an image\n" * 20)
    cases.append(Case("text named .jpg", root / "text.jpg", ok=False))
    (root / "text.mp4").write_text("this is not a video\n" * 20)
    cases.append(Case("text named .mp4", root / "text.mp4", ok=False))
    cases.append(Case("decompression bomb", _bomb_png(root / "bomb.png"), ok=False))

    Image.new("RGB", (1, 1), (10, 200, 30)).save(root / "one_pixel.png")
    cases.append(Case("1x1 image", root / "one_pixel.png", ok=True, frames=1, size=(1, 1)))
    Image.fromarray(_scene(200, 10000)).save(root / "wide.png")
    cases.append(Case("10000x200 image", root / "wide.png", ok=True, frames=1, size=(200, 10000)))
    Image.fromarray(scene).convert("L").save(root / "gray.png")
    cases.append(Case("grayscale", root / "gray.png", ok=True, frames=1, size=(120, 160)))
    Image.fromarray(scene).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    cases.append(Case("palette", root / "palette.png", ok=True, frames=1, size=(120, 160), check=_red_top_left))
    Image.fromarray((np.asarray(Image.fromarray(scene).convert("L"), np.uint16) * 257)).save(root / "gray16.png")
    cases.append(Case("16-bit", root / "gray16.png", ok=True, frames=1, size=(120, 160)))
    Image.fromarray(scene).convert("CMYK").save(root / "cmyk.jpg")
    cases.append(Case("CMYK", root / "cmyk.jpg", ok=True, frames=1, size=(120, 160), check=_red_top_left))
    rgba = np.dstack([scene, np.full(scene.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    cases.append(Case("alpha", root / "alpha.png", ok=True, frames=1, size=(120, 160), check=_red_top_left))
    # Stored rotated; EXIF orientation 8 (rotate 90 CW to display) brings the red square back top-left.
    stored = Image.fromarray(scene).transpose(Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = 8
    stored.save(root / "exif.jpg", exif=exif)
    cases.append(Case("EXIF-rotated", root / "exif.jpg", ok=True, frames=1, size=(120, 160), check=_red_top_left))
    gif = [Image.fromarray(np.roll(scene, 8 * i, axis=1)) for i in range(6)]
    gif[0].save(root / "anim.gif", save_all=True, append_images=gif[1:], duration=100, loop=0)
    cases.append(Case("animated GIF", root / "anim.gif", ok=True, frames=6, size=(120, 160)))

    _write_video(root / "one_frame.mp4", [scene])
    cases.append(Case("video with one frame", root / "one_frame.mp4", ok=True, frames=1, size=(120, 160)))
    with av.open(str(root / "audio_only.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for _ in range(10):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    cases.append(Case("no video stream", root / "audio_only.mp4", ok=False))
    vfr_times = [0, 40, 80, 300, 320, 700, 710, 720, 1500, 1600]
    _write_video(root / "vfr.mp4", [np.roll(scene, 5 * i, axis=1) for i in range(10)], fps=25, times=vfr_times)
    cases.append(Case("variable frame rate", root / "vfr.mp4", ok=True, frames=10, size=(120, 160)))
    _write_video(root / "uhd.mp4", [_scene(2160, 3840)] * 3, fps=5)
    cases.append(Case("4K video", root / "uhd.mp4", ok=True, frames=3, size=(2160, 3840)))
    if long_video:
        # One hour at 1 fps, tiny frames: 3600 frames to demux, 16 to decode.
        small = [np.full((32, 48, 3), (i * 7) % 256, np.uint8) for i in range(3600)]
        _write_video(root / "hour.mp4", small, fps=1)
        cases.append(Case("hour-long video", root / "hour.mp4", ok=True, frames=16, size=(32, 48)))
    # 25 frames, one every 10 minutes: over the duration limit (limits.MAX_VIDEO_SECONDS) at no cost.
    _write_video(root / "four_hours.mp4", [_scene(32, 48)] * 25, fps=Fraction(1, 600))
    cases.append(Case("video longer than the limit", root / "four_hours.mp4", ok=False))
    return cases


def plain_media(root: Path) -> dict[str, Path]:
    """A plain image (160×120) and a plain video (12 frames of 160×120) for the question and prompt cases."""
    root.mkdir(parents=True, exist_ok=True)
    scene = _scene(120, 160)
    Image.fromarray(scene).save(root / "scene.png")
    _write_video(root / "clip.mp4", [np.roll(scene, 4 * i, axis=1) for i in range(12)])
    return {"image": root / "scene.png", "video": root / "clip.mp4"}


# ---------------------------------------------------------------------------------------------- questions
@dataclass
class Question:
    """A question and what must happen: asked normally (``error`` None) or refused with ``error`` in the message."""

    name: str
    text: str
    error: str | None = None


QUESTIONS = [
    Question("empty", "", "type a question"),
    Question("whitespace only", " \t\n  \u3000 ", "type a question"),
    Question("invisible only", "\u200b\ufeff\u200d", "type a question"),
    Question("50,000 characters", "Please segment the circle. " * 1852, "keep it under"),
    Question("unicode", "Please segment the 红色 circle — ¿qué es? مرحبا 🟥👍🏽 e\u0301"),
    Question("control characters", "Please\x00 segment\x1b[31m the\x07 red\x85 circle.\x7f"),
    Question("lone surrogates", "Please segment \udcff the red \ud800circle."),
    Question("bidi and zero-width", "Please segment the \u202ered\u202c\u200b circle."),
    Question("markup", "<script>alert(1)</script><img src=x onerror=alert(2)> Please segment the circle."),
    Question("reference to a prompt that does not exist", "What is [7]?", r"refers to \[7\]"),
]
"""Questions for a media with no visual prompts."""


# ---------------------------------------------------------------------------------------------- visual prompts
@dataclass
class Prompts:
    """Visual prompts in the API's JSON conventions (original pixels, sampled-frame index) and what must happen."""

    name: str
    prompts: list[dict]
    question: str = "What is [0]?"
    error: str | None = None


def prompt_cases(size: tuple[int, int], frames: int) -> list[Prompts]:
    """Prompt cases for a media of ``size`` (H, W) with ``frames`` sampled frames."""
    h, w = size
    nan = float("nan")
    return [
        Prompts("point inside", [{"point": [w / 2, h / 2]}]),
        Prompts("point on the far edge", [{"point": [w, h]}]),
        Prompts("reversed box", [{"box": [w - 5, h - 5, 5, 5]}]),
        Prompts("one-point scribble", [{"scribble": [[w / 3, h / 3]], "width": 5}]),
        Prompts("prompts up to the cap", [{"point": [1 + i, 1 + i]} for i in range(16)], "What is [15]?"),
        Prompts("point outside the image", [{"point": [w + 40, h / 2]}], error="outside"),
        Prompts("negative point", [{"point": [-3, 4]}], error="outside"),
        Prompts("not-a-number point", [{"point": [nan, 4]}], error="not a finite number|outside"),
        Prompts("box outside the image", [{"box": [5, 5, w + 100, h / 2]}], error="outside"),
        Prompts("degenerate box (a line)", [{"box": [10, 10, 10, h - 10]}], error="no area"),
        Prompts("degenerate box (a point)", [{"box": [10, 10, 10, 10]}], error="no area"),
        Prompts("empty scribble", [{"scribble": []}], error="malformed scribble|is empty"),
        Prompts("scribble outside the image", [{"scribble": [[w + 50, h + 50], [w + 90, h + 60]], "width": 4}],
                error="is empty|outside"),
        Prompts("prompt on a frame out of range", [{"point": [5, 5], "frame": frames + 3}], error="were sampled"),
        Prompts("prompt on a negative frame", [{"point": [5, 5], "frame": -1}], error="were sampled"),
        Prompts("more prompts than the cap", [{"point": [1 + i, 1 + i]} for i in range(17)], "What is [0]?",
                error="at most 16 visual prompts"),
        Prompts("reference beyond the prompts", [{"point": [5, 5]}], "Compare [0] and [3].", error=r"refers to \[3\]"),
    ]
