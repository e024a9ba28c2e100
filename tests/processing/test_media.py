"""Media loading: images of every common kind, streamed video sampling, animated images, frame folders, errors."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tests.conftest import GOLDEN, golden_cases, requires_golden
from unipixel.processing import media as media_module
from unipixel.processing.media import MediaError, iter_frames, load_media, sample_indices

BITS = 8  # generated frame i shows i in binary: 8 vertical stripes, white where the bit is set


def coded_frame(index: int, height: int = 48, width: int = 64) -> np.ndarray:
    """An RGB frame showing ``index`` as white/black stripes (robust to lossy codecs)."""
    bits = [(index >> b) & 1 for b in range(BITS)]
    return np.repeat(np.array(bits, np.uint8) * 255, width // BITS)[None, :, None].repeat(height, 0).repeat(3, 2)


def frame_numbers(frames: np.ndarray) -> list[int]:
    """Read back the index shown by each coded frame."""
    width = frames.shape[2] // BITS
    stripes = frames.reshape(len(frames), -1, BITS, width, 3).mean(axis=(1, 3, 4)) > 127
    return [int(sum(int(bit) << b for b, bit in enumerate(row))) for row in stripes]


def write_video(path: Path, num_frames: int, codec: str = "mpeg4", pts_ms: list[int] | None = None, **options) -> Path:
    """A 64×48 video whose frame i shows i (``coded_frame``), pts in ms when given, else 25 fps."""
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        if pts_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(coded_frame(i), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def animation(path: Path, num_frames: int, **save) -> Path:
    frames = [Image.fromarray(coded_frame(i, 32, 48)) for i in range(num_frames)]
    durations = [100, 50, 200, 100, 100][:num_frames]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, **save)
    return path


# ----------------------------------------------------------------------------------------- sampling
def test_sample_indices_reference_formula() -> None:
    assert sample_indices(100, 16) == [0, 7, 13, 20, 26, 33, 40, 46, 53, 59, 66, 73, 79, 86, 92, 99]
    assert sample_indices(6, 3) == [0, 2, 5]  # 2.5 rounds half to even
    assert sample_indices(4, 3) == [0, 2, 3]  # 1.5 -> 2
    assert sample_indices(16, 16) == list(range(16))
    assert sample_indices(10, 16) == sample_indices(10, 0) == sample_indices(10, -1) == list(range(10))
    assert sample_indices(50, 1) == [0]  # the reference divides by zero here


# ----------------------------------------------------------------------------------------- golden media
@requires_golden
@pytest.mark.parametrize("name", sorted(golden_cases()))
def test_golden_media_load_as_given(name: str) -> None:
    case = golden_cases()[name]
    folder = GOLDEN / "cases" / name
    media = load_media(folder / "frames" if (folder / "frames").is_dir() else folder / "image.png")
    files = [folder / m for m in case["media"]]
    assert media.is_image == (len(files) == 1 and files[0].name == "image.png")
    assert media.num_frames == case["n_frames"] == len(files)
    assert list(media.size) == case["frame_size"]
    for frame, llm, file in zip(media.frames, media.llm_frames, files):
        assert np.array_equal(frame, np.asarray(Image.open(file).convert("RGB")))
        assert llm.mode == "RGB" and llm.size == (frame.shape[1], frame.shape[0])


# ----------------------------------------------------------------------------------------- images
def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red, right half blue
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise: the stored left edge becomes the top
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    media = load_media(tmp_path / "photo.jpg")
    assert media.is_image and media.size == (40, 20)
    assert media.frames[0, 5, 10, 0] > 200 and media.frames[0, 35, 10, 2] > 200


def test_rgba_alpha_is_dropped_for_sam_and_composited_on_white_for_llm(tmp_path: Path) -> None:
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[0, 0] = (200, 0, 0, 0)  # fully transparent red
    pixels[0, 1] = (0, 0, 0, 128)  # half transparent black
    pixels[0, 2] = (10, 20, 30, 255)  # opaque
    Image.fromarray(pixels, "RGBA").save(tmp_path / "alpha.png")
    media = load_media(tmp_path / "alpha.png")
    assert media.frames[0, 0, :3].tolist() == [[200, 0, 0], [0, 0, 0], [10, 20, 30]]
    llm = np.asarray(media.llm_frames[0])
    assert llm[0, 0].tolist() == [255, 255, 255] and llm[0, 2].tolist() == [10, 20, 30]
    assert np.all(np.abs(llm[0, 1].astype(int) - 127) <= 1)


def test_palette_transparency_and_grey_alpha_are_composited_too(tmp_path: Path) -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 255, 0, 0, 0, 255])
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    media = load_media(tmp_path / "p.png")
    assert media.frames[0, 0].tolist() == [[0, 255, 0], [0, 0, 255]]
    assert np.asarray(media.llm_frames[0])[0].tolist() == [[255, 255, 255], [0, 0, 255]]
    Image.new("LA", (1, 1), (90, 0)).save(tmp_path / "la.png")
    media = load_media(tmp_path / "la.png")
    assert media.frames[0, 0, 0].tolist() == [90] * 3 and media.llm_frames[0].getpixel((0, 0)) == (255, 255, 255)


def test_palette_png_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 128, 0, 1, 2, 3])
    image.putdata([0, 1, 2])
    image.save(tmp_path / "palette.png")
    media = load_media(tmp_path / "palette.png")
    assert media.frames[0, 0].tolist() == [[255, 0, 0], [0, 128, 0], [1, 2, 3]]
    assert np.array_equal(np.asarray(media.llm_frames[0]), media.frames[0])


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 32896, 65535, 257]], np.uint16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    media = load_media(tmp_path / "deep.png")
    assert media.frames[0, 0, :, 0].tolist() == [0, 128, 255, 1]
    assert media.frames.dtype == np.uint8 and media.frames.shape == (1, 1, 4, 3)


@pytest.mark.parametrize(("name", "mode", "options"), [
    ("shot.JPG", "RGB", {"quality": 95}),
    ("shot.jpeg", "L", {}),
    ("print.jpg", "CMYK", {}),
    ("still.webp", "RGB", {"lossless": True}),
    ("old.bmp", "RGB", {}),
    ("no_suffix", "RGB", {"format": "PNG"}),
])
def test_image_kinds_are_recognised_by_content(tmp_path: Path, name: str, mode: str, options: dict) -> None:
    Image.new(mode, (30, 20)).save(tmp_path / name, **options)
    media = load_media(tmp_path / name)
    assert media.is_image and media.frames.shape == (1, 20, 30, 3) and media.frames.dtype == np.uint8
    assert media.frame_indices == [0] and media.timestamps == [0.0] and media.source_num_frames == 1


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (100, 80)).save(tmp_path / "big.png")
    monkeypatch.setattr(media_module, "MAX_IMAGE_PIXELS", 7999)
    with pytest.raises(MediaError, match=r"image too large \(100×80 > 7999 pixels\)"):
        load_media(tmp_path / "big.png")


# ----------------------------------------------------------------------------------------- videos
@pytest.mark.parametrize(("name", "codec"), [
    ("clip.mp4", "libx264"),
    ("clip.webm", "libvpx-vp9"),  # Matroska keeps no frame count: counted by demuxing
    ("clip.mov", "mpeg4"),
    ("clip.avi", "mpeg4"),
])
def test_video_sampling_streams_the_right_frames(tmp_path: Path, name: str, codec: str) -> None:
    path = write_video(tmp_path / name, 36, codec)
    media = load_media(path, num_frames=8)
    wanted = sample_indices(36, 8)
    assert not media.is_image and media.source_num_frames == 36
    assert media.frame_indices == wanted and frame_numbers(media.frames) == wanted
    assert media.frames.shape == (8, 48, 64, 3) and len(media.llm_frames) == 8
    assert np.array_equal(np.asarray(media.llm_frames[3]), media.frames[3])
    assert media.fps == pytest.approx(25.0)
    assert media.timestamps == pytest.approx([i / 25 for i in wanted])


def test_short_video_keeps_every_frame(tmp_path: Path) -> None:
    media = load_media(write_video(tmp_path / "short.mp4", 5), num_frames=16)
    assert media.frame_indices == [0, 1, 2, 3, 4] and frame_numbers(media.frames) == [0, 1, 2, 3, 4]


def test_variable_frame_rate_timestamps_and_segment(tmp_path: Path) -> None:
    pts = [0, 40, 80, 200, 240, 500, 520, 540, 900, 1000]
    path = write_video(tmp_path / "vfr.mp4", len(pts), "libx264", pts_ms=pts)
    media = load_media(path, num_frames=0)
    assert media.timestamps == pytest.approx([p / 1000 for p in pts])
    segment = load_media(path, num_frames=3, start_s=0.1, end_s=0.6)
    assert segment.frame_indices == [3, 4, 5, 6, 7][::2] == frame_numbers(segment.frames)
    assert segment.timestamps == pytest.approx([0.2, 0.5, 0.54])
    with pytest.raises(MediaError, match="no frames between"):
        load_media(path, start_s=2.0)


def test_iter_frames_streams_every_frame_with_a_cap(tmp_path: Path) -> None:
    path = write_video(tmp_path / "all.mp4", 12)
    frames = list(iter_frames(path, start_s=0.2))
    assert [f.index for f in frames] == list(range(5, 12)) == frame_numbers(np.stack([f.rgb for f in frames]))
    assert frames[0].time == pytest.approx(0.2) and frames[0].rgb.shape == (48, 64, 3)
    with pytest.raises(MediaError, match=r"video too long \(12 frames > limit of 10\)"):
        next(iter_frames(path, max_frames=10))


def test_frame_cap_of_load_media(tmp_path: Path) -> None:
    path = write_video(tmp_path / "cap.mp4", 12)
    with pytest.raises(MediaError, match="too many frames"):
        load_media(path, num_frames=0, max_frames_cap=10)
    assert load_media(path, num_frames=10, max_frames_cap=10).num_frames == 10


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".png"])
def test_animated_images_are_videos(tmp_path: Path, suffix: str) -> None:
    media = load_media(animation(tmp_path / f"anim{suffix}", 5), num_frames=3)
    assert not media.is_image and media.source_num_frames == 5
    assert media.frame_indices == [0, 2, 4] == frame_numbers(media.frames)
    assert media.timestamps == pytest.approx([0.0, 0.15, 0.45])
    assert media.fps == pytest.approx(5 / 0.55)


def test_frame_directory_is_a_video_in_numeric_order(tmp_path: Path) -> None:
    for i in [10, 2, 1, 0]:
        Image.fromarray(coded_frame(i, 8, 16)).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    media = load_media(tmp_path, num_frames=3)
    assert not media.is_image and media.source_num_frames == 4 and media.timestamps is None
    assert media.frame_indices == [0, 2, 3] and frame_numbers(media.frames) == [0, 2, 10]


# ----------------------------------------------------------------------------------------- errors
def test_unreadable_files_raise_media_error(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello\n" * 50)
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    video = write_video(tmp_path / "video.mp4", 30).read_bytes()  # moov atom at the end
    (tmp_path / "cut.mp4").write_bytes(video[: len(video) // 2])
    fast = write_video(tmp_path / "fast.mp4", 30, movflags="faststart").read_bytes()
    (tmp_path / "cutfast.mp4").write_bytes(fast[: len(fast) // 2])
    (tmp_path / "empty_dir").mkdir()
    cases = {
        "empty.mp4": "the file is empty",
        "notes.txt": "could not read the file as an image or a video",
        "cut.png": "truncated or damaged",
        "cut.mp4": "could not read the file as an image or a video",
        "cutfast.mp4": r"the video is truncated \(\d+ of 30 frames present\)",
        "missing.jpg": "file not found: missing.jpg",
        "empty_dir": "no image frames",
    }
    for name, message in cases.items():
        with pytest.raises(MediaError, match=message) as error:
            load_media(tmp_path / name)
        assert "\n" not in str(error.value)
    assert issubclass(MediaError, ValueError)


def test_segment_needs_a_timed_video(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "still.png")
    with pytest.raises(MediaError, match="needs a video"):
        load_media(tmp_path / "still.png", start_s=1.0)
