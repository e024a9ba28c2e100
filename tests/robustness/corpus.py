"""A corpus of bad and odd media, generated on the spot (nothing downloaded).

Each :class:`Case` says whether the file must load (``ok``: valid but odd, e.g. CMYK or EXIF-rotated) or be
refused with a one-line message (``error``). ``check`` holds what a correct load must satisfy.
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
    return cases
