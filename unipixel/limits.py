"""Every limit on what a visitor may send, in one place, with the checks that enforce them.

Each check raises ``ValueError`` with a one-line message that says what to do; the session, the CLI and
the app show that message as is.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

#: Longest question accepted (characters, after clean-up).
MAX_QUESTION_CHARS = 2000
#: Sampled frames per video: the LLM and SAM 2 see this many (the reference's slider went to 32).
MAX_SAMPLE_FRAMES = 32
#: Visual prompts in one conversation (they are numbered [0], [1], ...).
MAX_PROMPTS = 16
#: Objects one conversation may ground (each costs a SAM 2 track).
MAX_OBJECTS = 32
#: Tokens one reply may generate.
MAX_NEW_TOKENS = 1024
#: Frames decoded for dense tracking (overlay at the source frame rate) ...
DENSE_FRAMES = 240
#: ... and at most this many pixels over all of them (fewer frames for large videos: masks are kept per frame).
DENSE_PIXELS = 240 * 640 * 480
#: Largest upload accepted by the app (bytes).
MAX_UPLOAD_BYTES = 200 * 1024 * 1024

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_question(question: str) -> str:
    """The question with control characters removed and whitespace trimmed; refuses empty or huge ones."""
    if not isinstance(question, str):
        raise ValueError("the question must be text")
    text = _CONTROL.sub("", unicodedata.normalize("NFC", question)).strip()
    if not text:
        raise ValueError("type a question (for example: Please segment the red circle.)")
    if len(text) > MAX_QUESTION_CHARS:
        raise ValueError(f"the question is {len(text)} characters long; keep it under {MAX_QUESTION_CHARS}")
    return text


def check_num_frames(num_frames: int) -> int:
    """Sampled-frame count in ``[1, MAX_SAMPLE_FRAMES]``."""
    if not isinstance(num_frames, int) or not 1 <= num_frames <= MAX_SAMPLE_FRAMES:
        raise ValueError(f"the number of frames must be between 1 and {MAX_SAMPLE_FRAMES}, got {num_frames}")
    return num_frames


def check_new_tokens(max_new_tokens: int) -> int:
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}")
    return max_new_tokens


def dense_frame_cap(size: tuple[int, int], requested: int) -> int:
    """How many frames dense tracking may decode for frames of ``size`` (at least 1)."""
    return max(1, min(requested, DENSE_FRAMES, DENSE_PIXELS // (size[0] * size[1])))


def check_prompts(prompts: Sequence, existing: int, size: tuple[int, int], num_frames: int) -> None:
    """Visual prompts: not too many, on a sampled frame, inside the frame, boxes with area, masks non-empty."""
    from .processing.prompts import BoxPrompt, MaskPrompt, PointPrompt

    if existing + len(prompts) > MAX_PROMPTS:
        raise ValueError(f"at most {MAX_PROMPTS} visual prompts per conversation; start a new one to add more")
    height, width = size
    for i, prompt in enumerate(prompts, start=existing):
        if not 0 <= prompt.frame < num_frames:
            raise ValueError(f"prompt [{i}] is on frame {prompt.frame}, but only frames 0-{num_frames - 1} were sampled")
        if isinstance(prompt, PointPrompt):
            _check_inside(i, [(prompt.x, prompt.y)], width, height)
        elif isinstance(prompt, BoxPrompt):
            _check_inside(i, [(prompt.x0, prompt.y0), (prompt.x1, prompt.y1)], width, height)
            if abs(prompt.x1 - prompt.x0) < 1 or abs(prompt.y1 - prompt.y0) < 1:
                raise ValueError(f"box [{i}] has no area; drag to draw a box")
        elif isinstance(prompt, MaskPrompt):
            if prompt.mask.shape != (height, width):
                raise ValueError(f"mask [{i}] is {prompt.mask.shape[1]}×{prompt.mask.shape[0]}, the media is {width}×{height}")
            if not prompt.mask.any():
                raise ValueError(f"mask [{i}] is empty; scribble over the object")
        else:
            raise ValueError(f"prompt [{i}] is not a point, a box or a mask")


def check_clicks(clicks: Sequence[tuple[float, float, int]], size: tuple[int, int], frame: int, num_frames: int) -> None:
    """Refinement clicks: at least one, labels 0/1, inside the frame, on a sampled frame."""
    if not clicks:
        raise ValueError("click on the object (positive) or the background (negative) to refine it")
    if not 0 <= frame < num_frames:
        raise ValueError(f"frame {frame} is outside the {num_frames} sampled frames")
    for x, y, label in clicks:
        if label not in (0, 1):
            raise ValueError("a click is positive (1) or negative (0)")
    _check_inside("click", [(x, y) for x, y, _ in clicks], size[1], size[0])


def _check_inside(name: object, points: list[tuple[float, float]], width: int, height: int) -> None:
    for x, y in points:
        if not (0 <= x <= width and 0 <= y <= height):
            label = f"prompt [{name}]" if isinstance(name, int) else str(name)
            raise ValueError(f"{label} at ({x:.0f}, {y:.0f}) is outside the {width}×{height} frame")
