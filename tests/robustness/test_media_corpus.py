"""Every corpus file either loads correctly (odd but valid) or is refused with a one-line MediaError."""
from __future__ import annotations

import resource
import time
from pathlib import Path

from tests.robustness.corpus import Case
from tests.robustness.report import tally
from unipixel.processing.media import MediaError, load_media

DECODE_SECONDS = 30.0


def test_corpus_covers_the_issue_list(corpus: list[Case]) -> None:
    names = {case.name for case in corpus}
    for required in ["zero-byte image", "truncated video", "text named .jpg", "decompression bomb", "CMYK",
                     "EXIF-rotated", "animated GIF", "no video stream", "variable frame rate", "4K video",
                     "hour-long video", "10000x200 image", "1x1 image", "zero-byte video", "truncated image",
                     "text named .mp4", "grayscale", "palette", "16-bit", "alpha", "video with one frame",
                     "truncated video, header intact", "video longer than the limit"]:
        assert required in names


def test_each_case_loads_or_fails_clearly(corpus: list[Case]) -> None:
    failures = []
    for case in corpus:
        count = len(failures)
        _check_case(case, failures)
        tally("load_media (media files)", len(failures) == count)
    assert failures == []


def _check_case(case: Case, failures: list[str]) -> None:
    """Append what is wrong with ``case`` (loads when it should not, wrong frames/size/content, unclear refusal)."""
    started = time.perf_counter()
    try:
        media = load_media(case.path, num_frames=16)
    except MediaError as err:
        message = str(err)
        if case.ok:
            failures.append(f"{case.name}: refused ({message})")
        elif "\n" in message or not message or "Traceback" in message:
            failures.append(f"{case.name}: unclear message {message!r}")
        return
    except Exception as err:  # anything else is a defect: it would reach a visitor as a traceback
        failures.append(f"{case.name}: {type(err).__name__}: {err}")
        return
    elapsed = time.perf_counter() - started
    if not case.ok:
        failures.append(f"{case.name}: loaded but should have been refused")
        return
    if elapsed > DECODE_SECONDS:
        failures.append(f"{case.name}: decode took {elapsed:.1f}s")
    if case.frames is not None and media.num_frames != case.frames:
        failures.append(f"{case.name}: {media.num_frames} frames, expected {case.frames}")
    if case.size is not None and media.size != case.size:
        failures.append(f"{case.name}: size {media.size}, expected {case.size}")
    if case.check is not None and not case.check(media.frames[0]):
        failures.append(f"{case.name}: wrong content (orientation/colours)")


def test_hour_long_video_decodes_with_bounded_memory(corpus: list[Case]) -> None:
    hour = next(case for case in corpus if case.name == "hour-long video")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    media = load_media(Path(hour.path), num_frames=16)
    assert time.perf_counter() - started < DECODE_SECONDS
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB"
    assert media.frame_indices[-1] == 3599
