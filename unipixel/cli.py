"""Command line: ``python -m unipixel infer`` answers one question about an image or a video and writes the
reply, one mask PNG per object and frame, and an overlay into a folder; ``--batch`` runs a JSON-lines file of
such jobs with the model loaded once.

Other tools script this, so the folder layout, the ``reply.json`` fields and the exit codes are a contract
(see ``EPILOG``): 0 on success, 2 on bad input with a one-line ``error: ...`` on stderr and no traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import transformers
from PIL import Image

from . import limits
from .engine import DEFAULT_MODEL, Engine, load_engine
from .loading import CheckpointError
from .processing.prompts import BoxPrompt, MaskPrompt, PointPrompt
from .rendering import mask_pngs, save_overlay_png, save_overlay_video
from .session import ChatSession, Prompt, Reply

EXIT_OK, EXIT_BAD_INPUT = 0, 2
USER_ERRORS = (ValueError, CheckpointError, OSError)
"""What bad input raises (``MediaError`` is a ``ValueError``): reported in one line, exit code 2."""

SAMPLED_FPS = 2.0
"""Playback rate of an overlay of the sampled frames (far apart in time, so real time would flash by or
crawl), and of a dense overlay whose source has no frame rate (a directory of frames)."""

T = TypeVar("T")

JOB_FIELDS = frozenset({"media", "question", "points", "boxes", "masks", "frames", "dense"})

EPILOG = f"""\
visual prompts:
  Coordinates are pixels of the original media (x to the right, y down, continuous: the centre of
  pixel (c, r) is (c+0.5, r+0.5)). FRAME is the 0-based index into the SAMPLED frames (default 0; an
  image has only frame 0). Prompts are numbered [0], [1], ... in command-line order, --point, --box
  and --mask interleaved as given; refer to them in the question, e.g.
    infer clip.mp4 "Please segment [0] and [1]." --point 120,80 --box 10,20,200,150,3 --out out/
  A prompt the question does not mention is appended to it. A mask PNG must have the media's size;
  any non-zero pixel is inside, or, when the PNG has transparency, any pixel with alpha > 0.

output folder (--out DIR):
  DIR/reply.json  {{"text": answer with [obj_k] tags, "raw_text": decoded model output,
                   "objects": [{{"tag": "obj_1", "color": "#rrggbb", "frames": [source frame numbers],
                     "masks": ["masks/obj_1_f000.png", ...], "confidence": ..., "presence": [...],
                     "area": [...], "region": prompt id or null,
                     with --dense also "dense_frames" and "dense_masks" (masks/dense/...)}}],
                   "prompts": [{{"id": 0, "type": "point"|"box"|"mask", ...}}], "regions": [...],
                   "media": {{...}}, "overlay": "overlay.png"|"overlay.mp4", "model": ...,
                   "notice": ... (only when the engine has one), "timings": {{stage: seconds}}}}
  DIR/masks/{{tag}}_f{{NNN}}.png  one 0/255 grey PNG per object and sampled frame, media-sized; NNN is
                   the source frame number (the value in "frames")
  DIR/overlay.png  image: the masks drawn on it, with a legend
  DIR/overlay.mp4  video: the sampled frames at {SAMPLED_FPS:g} fps, or with --dense every decoded frame
                   at the source frame rate (--dense has no effect on an image, nor on an answer
                   without objects)

batch (--batch JOBS.jsonl):
  One JSON object per line (blank lines skipped) with the fields media, question (required), points
  [[x, y, frame?], ...], boxes [[x0, y0, x1, y1, frame?], ...], masks ["mask.png", "mask.png,FRAME" or
  ["mask.png", FRAME], ...], frames (N), dense (true/false); frames and dense default to the command
  line's. Prompts are numbered points first, then boxes, then masks. Relative paths are relative to the
  jobs file's folder. Job k writes DIR/job_kkk/ as above; a failed job writes {{"error": message}} to its
  reply.json and a line to stderr, and the other jobs still run.

model:
  Without --model: {DEFAULT_MODEL} if it can be loaded, else the bundled demo model (a notice goes
  to stderr). --model takes a checkpoint directory, a hub id or "bundled".

stdout: the answer text (batch: "job_kkk: answer" per finished job).

exit status:
  0 success; 2 bad input (unreadable media, bad coordinates, missing or mis-sized mask PNG,
  out-of-range frame, empty question, unknown model, ...), reported as one line "error: ..." on stderr;
  in batch mode 2 when any job failed.
"""


@dataclass
class Job:
    """One request: media, question, visual prompts (numbered in list order), sampled frames, dense tracking."""

    media: Path
    question: str
    prompts: list[Prompt] = field(default_factory=list)
    frames: int | None = None
    dense: bool = False


# ---------------------------------------------------------------------------------------------- prompts
def point_prompt(values: Sequence[Any]) -> PointPrompt:
    """``[x, y]`` or ``[x, y, frame]`` -> a positive point."""
    (x, y), frame = _coordinates(values, 2, "point", "X,Y[,FRAME]")
    return PointPrompt(x, y, frame)


def box_prompt(values: Sequence[Any]) -> BoxPrompt:
    """``[x0, y0, x1, y1]`` or with a fifth value, the frame -> a box."""
    (x0, y0, x1, y1), frame = _coordinates(values, 4, "box", "X0,Y0,X1,Y1[,FRAME]")
    return BoxPrompt(x0, y0, x1, y1, frame)


def mask_prompt(path: str | Path, frame: Any = 0) -> MaskPrompt:
    """A mask PNG on sampled frame ``frame``."""
    return MaskPrompt(read_mask(path), _frame(frame))


def read_mask(path: str | Path) -> np.ndarray:
    """A mask image as bool ``(H, W)``: alpha > 0 where the image has transparency, else any non-zero channel.

    A fully opaque alpha channel carries no mask, so the colour channels decide then.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"mask file not found: {path}")
    try:
        with Image.open(path) as image:
            if image.has_transparency_data:
                rgba = np.asarray(image.convert("RGBA"))
                alpha = rgba[..., 3]
                return alpha > 0 if (alpha < 255).any() else rgba[..., :3].any(axis=-1)
            pixels = np.asarray(image.convert("RGB") if image.mode == "P" else image)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"could not read mask {path.name} as an image ({err})") from None
    return pixels.reshape(*pixels.shape[:2], -1).any(axis=-1)


def _coordinates(values: Sequence[Any], n: int, name: str, usage: str) -> tuple[list[float], int]:
    """``n`` finite numbers and an optional frame index."""
    if not isinstance(values, (list, tuple)) or len(values) not in (n, n + 1):
        raise ValueError(f"a {name} is {usage}, got {_show(values)}")
    try:
        numbers = [float(v) for v in values[:n]]
    except (TypeError, ValueError):
        raise ValueError(f"a {name} is {usage} with numbers, got {_show(values)}") from None
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{name} {_show(values)} has a coordinate that is not a finite number")
    return numbers, _frame(values[n]) if len(values) > n else 0


def _frame(value: Any) -> int:
    """A frame index given as an int, a whole float or text."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not number.is_integer():
        raise ValueError(f"frame {value!r} is not a whole number")
    return int(number)


def _show(values: Any) -> str:
    return ",".join(map(str, values)) if isinstance(values, (list, tuple)) else repr(values)


def _split_mask(text: str) -> tuple[str, str | int]:
    """``PNG[,FRAME]``: a trailing ``,FRAME`` is split off when it is a number (paths may hold commas)."""
    path, comma, tail = text.rpartition(",")
    try:
        float(tail)
    except ValueError:
        comma = ""
    return (path, tail) if comma else (text, 0)


def _describe(prompt_id: int, prompt: Prompt) -> dict:
    """A prompt as ``reply.json`` echoes it, so scripts can check the numbering."""
    if isinstance(prompt, MaskPrompt):
        return {"id": prompt_id, "type": "mask", "frame": prompt.frame, "pixels": int(prompt.mask.sum())}
    return {"id": prompt_id, "type": "point" if isinstance(prompt, PointPrompt) else "box", **asdict(prompt)}


# ---------------------------------------------------------------------------------------------- jobs
def job_from_json(line: str, base: Path, frames: int | None = None, dense: bool = False) -> Job:
    """One ``--batch`` line; relative paths are resolved against ``base``, ``frames``/``dense`` are defaults."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("a job is a JSON object")
    unknown = sorted(set(data) - JOB_FIELDS)
    if unknown:
        raise ValueError(f"unknown job field(s) {', '.join(unknown)}; use {', '.join(sorted(JOB_FIELDS))}")
    for name in ("media", "question"):
        if not isinstance(data.get(name), str):
            raise ValueError(f"a job needs a {name} (text)")
    points = [point_prompt(v) for v in _list(data, "points")]
    boxes = [box_prompt(v) for v in _list(data, "boxes")]
    masks = [_mask_entry(entry, base) for entry in _list(data, "masks")]
    dense = data.get("dense", dense)
    if not isinstance(dense, bool):
        raise ValueError(f"dense is true or false, got {dense!r}")
    return Job(
        base / data["media"],
        limits.clean_question(data["question"]),
        points + boxes + masks,
        _num_frames(data["frames"]) if "frames" in data else frames,
        dense,
    )


def _list(data: dict, name: str) -> list:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list, got {value!r}")
    return value


def _mask_entry(entry: Any, base: Path) -> MaskPrompt:
    """A job's mask: ``"mask.png"``, ``"mask.png,FRAME"`` or ``["mask.png", FRAME]``."""
    if isinstance(entry, str):
        path, frame = _split_mask(entry)
    elif isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str):
        path, frame = entry
    else:
        raise ValueError(f'a mask is "mask.png", "mask.png,FRAME" or ["mask.png", FRAME], got {entry!r}')
    return mask_prompt(base / path, frame)


def _num_frames(value: Any) -> int:
    """``--frames``: a whole number in the session's limits."""
    try:
        number = _frame(value)
    except ValueError:
        raise ValueError(f"the number of frames must be a whole number, got {value!r}") from None
    return limits.check_num_frames(number)


def run_job(engine: Engine, job: Job, out: Path, timings: dict[str, float] | None = None) -> dict:
    """Answer ``job`` with ``engine`` and write its folder; returns what ``reply.json`` holds.

    ``timings`` are stages measured before the job (model loading) to report with it.
    """
    session = ChatSession(engine)
    media = session.open(job.media, num_frames=job.frames)
    reply = session.ask(job.question, job.prompts)
    timings = dict(timings or {})
    if job.dense and not media.is_image:
        tick = time.perf_counter()
        session.track_dense()
        timings["dense_tracking"] = time.perf_counter() - tick
    tick = time.perf_counter()
    data = write_outputs(out, session, reply, job.dense)
    timings["write_outputs"] = time.perf_counter() - tick
    data["timings"].update({k: round(v, 4) for k, v in timings.items()})
    _write_json(out / "reply.json", data)
    return data


def write_outputs(out: Path, session: ChatSession, reply: Reply, dense: bool) -> dict:
    """Mask PNGs and the overlay for ``reply`` under ``out``; returns the ``reply.json`` content."""
    media = session.media
    out.mkdir(parents=True, exist_ok=True)
    data = reply.to_dict()
    for obj, info in zip(reply.objects, data["objects"]):
        info["masks"] = _relative(out, mask_pngs(out / "masks", obj.tag, obj.masks, obj.frame_indices))
        if obj.dense_masks is not None:
            info["dense_frames"] = obj.dense_indices
            info["dense_masks"] = _relative(
                out, mask_pngs(out / "masks" / "dense", obj.tag, obj.dense_masks, obj.dense_indices)
            )
    labels = {obj.tag: f"[{obj.region}]" for obj in reply.objects if obj.region is not None}
    if media.is_image:
        overlay = save_overlay_png(out / "overlay.png", media.frames[0], {o.tag: o.masks[0] for o in reply.objects}, labels)
    elif dense and reply.objects and all(o.dense_masks is not None for o in reply.objects):
        frames = session.dense_frames
        masks = {o.tag: o.dense_masks for o in reply.objects}
        overlay = save_overlay_video(out / "overlay.mp4", frames, masks, media.fps or SAMPLED_FPS, labels, legend=True)
    else:
        masks = {o.tag: o.masks for o in reply.objects}
        overlay = save_overlay_video(out / "overlay.mp4", media.frames, masks, SAMPLED_FPS, labels, legend=True)
    engine = session.engine
    data.update(
        prompts=[_describe(r.id, r.prompt) for r in session.regions],
        media={
            "path": str(session.media_path),
            "is_image": media.is_image,
            "width": media.size[1],
            "height": media.size[0],
            "frame_indices": media.frame_indices,
            "source_frames": media.source_num_frames,
            "fps": media.fps,
        },
        overlay=overlay.name,
        model=engine.name,
        **({"notice": engine.notice} if engine.notice else {}),
    )
    return data


def _relative(out: Path, paths: list[Path]) -> list[str]:
    return [p.relative_to(out).as_posix() for p in paths]


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- command line
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``), like every other failure of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


class _AppendPrompt(argparse.Action):
    """``--point``/``--box``/``--mask`` append to one list, so prompts are numbered in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[override]
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), values])


def _arg(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type`` that reports ``parse``'s own message (argparse hides a ValueError's)."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m unipixel", description="UniPixel: answers about images and videos, with masks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    infer = commands.add_parser(
        "infer",
        help="answer a question about an image or a video and write masks and an overlay",
        description="Answer QUESTION about MEDIA (an image, a video file or a directory of frames) and write\n"
        "reply.json, mask PNGs and an overlay to --out DIR.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    infer.add_argument("media", nargs="?", metavar="MEDIA", help="image, video file or directory of frames")
    infer.add_argument("question", nargs="?", metavar="QUESTION", help='e.g. "Please segment the red circle."')
    infer.add_argument("--model", metavar="PATH_OR_HUB_ID", help=f"checkpoint (default: {DEFAULT_MODEL}, else the bundled model)")
    infer.add_argument("--point", dest="prompts", action=_AppendPrompt, metavar="X,Y[,FRAME]",
                       type=_arg(lambda text: point_prompt(text.split(","))), help="a point on the object (repeatable)")
    infer.add_argument("--box", dest="prompts", action=_AppendPrompt, metavar="X0,Y0,X1,Y1[,FRAME]",
                       type=_arg(lambda text: box_prompt(text.split(","))), help="a box around the object (repeatable)")
    infer.add_argument("--mask", dest="prompts", action=_AppendPrompt, metavar="PNG[,FRAME]",
                       type=_arg(lambda text: mask_prompt(*_split_mask(text))), help="a mask/scribble PNG (repeatable)")
    infer.add_argument("--frames", type=_arg(_num_frames), metavar="N",
                       help=f"frames sampled from a video, 1-{limits.MAX_SAMPLE_FRAMES} (default 16)")
    infer.add_argument("--dense", action="store_true",
                       help=f"also track the objects through every decoded frame (at most {limits.DENSE_FRAMES})")
    infer.add_argument("--batch", type=Path, metavar="JOBS.jsonl", help="run the jobs of a JSON-lines file instead")
    infer.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i in range(len(argv) - 2, -1, -1):  # "--point -3,4": argparse takes "-3,4" for an option; glue it on
        if argv[i] in ("--point", "--box") and re.match(r"-[\d.]", argv[i + 1]):
            argv[i: i + 2] = [f"{argv[i]}={argv[i + 1]}"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or an argparse error already printed
        return EXIT_OK if stop.code is None else int(stop.code)
    _quiet_libraries()
    try:
        return _batch(args) if args.batch else _single(args)
    except USER_ERRORS as err:
        return _fail(err)


def _single(args: argparse.Namespace) -> int:
    if args.media is None or args.question is None:
        raise ValueError("give MEDIA and QUESTION, or --batch JOBS.jsonl")
    job = Job(Path(args.media), limits.clean_question(args.question), args.prompts or [], args.frames, args.dense)
    tick = time.perf_counter()
    engine = _load_engine(args.model)
    reply = run_job(engine, job, args.out, {"load_model": time.perf_counter() - tick})
    print(reply["text"])
    return EXIT_OK


def _batch(args: argparse.Namespace) -> int:
    if args.media is not None or args.prompts:
        raise ValueError("--batch takes its media, questions and prompts from the jobs file, not the command line")
    lines = [line for line in args.batch.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"no jobs in {args.batch}")
    engine = _load_engine(args.model)
    failed = 0
    for k, line in enumerate(lines):
        folder = args.out / f"job_{k:03d}"
        try:
            job = job_from_json(line, args.batch.parent, args.frames, args.dense)
            print(f"{folder.name}: {run_job(engine, job, folder)['text']}")
        except USER_ERRORS as err:
            failed += 1
            _write_json(folder / "reply.json", {"error": _one_line(err)})
            print(f"error: job {k} ({folder.name}): {_one_line(err)}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else EXIT_OK


def _load_engine(model: str | None) -> Engine:
    engine = load_engine(model)
    if engine.notice:
        print(f"notice: {engine.notice}", file=sys.stderr)
    return engine


def _quiet_libraries() -> None:
    """Keep stderr for the CLI's own notices and errors (the engine's notice repeats its fallback warning)."""
    transformers.logging.set_verbosity_error()
    logging.basicConfig(level=logging.ERROR, format="%(message)s")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _fail(err: BaseException) -> int:
    print(f"error: {_one_line(err)}", file=sys.stderr)
    return EXIT_BAD_INPUT
