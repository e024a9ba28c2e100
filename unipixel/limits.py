"""Every limit on what a visitor may send and on what the server keeps for them, in one place, with the
checks that enforce them.

Each check raises ``ValueError`` with a one-line message that says what to do; the session, the CLI and
the app show that message as is. ``processing.media`` enforces the media limits (its ``MediaError`` is a
``ValueError``), ``app.py`` the upload, queue, cache and session limits.

=========================  ==========================================================================
What                       Limit
=========================  ==========================================================================
question                   ``MAX_QUESTION_CHARS`` characters after control characters are removed
visual prompts             ``MAX_PROMPTS`` per conversation, inside the frame, on a sampled frame;
                           ``[i]`` in a question must name one of them
objects                    ``MAX_OBJECTS`` per conversation
tokens                     ``MAX_NEW_TOKENS`` generated per reply; ``MAX_TURNS`` turns per conversation
images                     ``MAX_IMAGE_PIXELS`` (width × height, decompression bombs included)
videos                     ``MAX_VIDEO_FRAME_PIXELS`` per frame, ``MAX_VIDEO_SECONDS`` long,
                           ``MAX_SAMPLE_FRAMES`` sampled for the model (``MAX_FRAMES`` for library use),
                           ``DENSE_FRAMES``/``DENSE_PIXELS`` for dense tracking (``DENSE_OBJECTS_PER_PASS``
                           objects at once), ``MAX_ITER_FRAMES`` streamed
uploads                    ``MAX_UPLOAD_BYTES`` (Gradio refuses larger uploads; the app checks again)
server memory and files    ``MAX_LIVE_SESSIONS`` decoded media at once, ``STATE_TTL_S`` per visitor state,
                           ``VISITOR_FILES_KEPT`` result files per visitor, ``API_RESULTS_KEPT`` /
                           ``API_RESULT_TTL_S`` for ``/ask`` results, Gradio's cache swept every
                           ``CACHE_SWEEP_S`` of files older than ``CACHE_MAX_AGE_S``
queue                      ``QUEUE_MAX_SIZE`` waiting events, ``UI_CONCURRENCY`` UI handlers at once,
                           one model call at a time; ZeroGPU turns get at most ``MAX_GPU_SECONDS``
=========================  ==========================================================================
"""
from __future__ import annotations

import os
import re
import unicodedata
from typing import Sequence

# ---------------------------------------------------------------------------------------------- conversation
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
#: Turns per conversation (each one grows the context); the API replays at most ``MAX_TURNS - 1`` earlier turns.
MAX_TURNS = 24

# ---------------------------------------------------------------------------------------------- media
#: Largest still image (width × height) accepted; guards against decompression bombs.
MAX_IMAGE_PIXELS = 50_000_000
#: Largest video frame (width × height) accepted.
MAX_VIDEO_FRAME_PIXELS = 4096 * 4096
#: Longest video accepted (seconds; by its header, and by its frames' times while they are counted).
MAX_VIDEO_SECONDS = 3 * 3600
#: Most frames ``load_media`` keeps in memory (the sample count, or every frame when not sampling).
MAX_FRAMES = 256
#: Default cap on the frames ``iter_frames`` streams (10 minutes at 30 fps).
MAX_ITER_FRAMES = 18_000
#: Frames decoded for dense tracking (overlay at the source frame rate) ...
DENSE_FRAMES = 240
#: ... and at most this many pixels over all of them (fewer frames for large videos: masks are kept per frame).
DENSE_PIXELS = 240 * 640 * 480
#: Objects dense tracking runs through SAM 2 in one batched pass (each holds float logits of all its frames).
DENSE_OBJECTS_PER_PASS = 4

# ---------------------------------------------------------------------------------------------- the app
#: Largest upload accepted by the app (bytes).
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
#: Visitors whose decoded media is held in memory at once (the least recently used let go first).
MAX_LIVE_SESSIONS = int(os.environ.get("UNIPIXEL_MAX_SESSIONS", 32))
#: A visitor's state (session, media, files) is deleted this long after it was last used (seconds).
STATE_TTL_S = 4 * 3600
#: Result files (overlays, downloads) one visitor keeps on disk; older ones are deleted.
VISITOR_FILES_KEPT = 24
#: ``/ask`` result folders kept on disk (Gradio has copied them to its cache once the call returned) ...
API_RESULTS_KEPT = 8
#: ... and none older than this (seconds).
API_RESULT_TTL_S = 600
#: Gradio's cache (uploads, outputs) is swept this often of files older than ``CACHE_MAX_AGE_S`` (seconds).
CACHE_SWEEP_S = 1800
CACHE_MAX_AGE_S = 7200
#: Events waiting in the queue; more are refused ("queue is full") instead of piling up.
QUEUE_MAX_SIZE = 64
#: UI handlers (no model) running at once; model calls run one at a time.
UI_CONCURRENCY = 8
#: Longest ZeroGPU allocation one turn may ask for (seconds).
MAX_GPU_SECONDS = 180

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")  # C0/C1 controls, lone surrogates
_INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
_REFERENCE = re.compile(r"\[(\d+)\]")


def clean_question(question: str) -> str:
    """The question with control characters (and lone surrogates, which no tokenizer can encode) removed and
    whitespace trimmed; refuses empty, invisible-only or huge ones."""
    if not isinstance(question, str):
        raise ValueError("the question must be text")
    text = unicodedata.normalize("NFC", _CONTROL.sub("", question)).strip()
    if all(unicodedata.category(c) in _INVISIBLE for c in text):
        raise ValueError("type a question (for example: Please segment the red circle.)")
    if len(text) > MAX_QUESTION_CHARS:
        raise ValueError(f"the question is {len(text)} characters long; keep it under {MAX_QUESTION_CHARS}")
    return text


def check_references(question: str, regions: int) -> None:
    """Every ``[i]`` the question names is one of the conversation's ``regions`` visual prompts."""
    missing = sorted({int(m) for m in _REFERENCE.findall(question) if len(m) > 6 or int(m) >= regions}) if question else []
    if missing:
        have = "there are no visual prompts yet" if regions == 0 else f"the prompts are [0]–[{regions - 1}]"
        raise ValueError(f"the question refers to [{missing[0]}], but {have}; draw that prompt first or remove the reference")


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
