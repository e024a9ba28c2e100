"""Benchmark suite: how long a chat turn takes, stage by stage, on the bundled model and the real 3B architecture.

    python -m unipixel.bench [--model M] [--quick] [--json PATH] [--no-3b] [--threads N]

Every scenario runs its warm-up first, then reports the median, min and max of several runs (``--quick``: fewer
runs and sizes), the process CPU time and the peak RSS (and peak GPU memory on a GPU). Scenarios on ``--model``
(default: the bundled model, else the golden tiny checkpoint), on procedural-shapes media generated into a
temporary directory (320x240 image, 16-frame H.264 video, longer clip), asking questions the model answers with a
mask (``questions`` in the JSON; chosen once, untimed):

* ``model_load`` (``load_engine``) and ``app_ready`` (``app.py`` launched until http://127.0.0.1:PORT/ answers 200);
* ``image_turn`` / ``video16_turn``: open the media, answer a segmentation question, render the overlay. Stages:
  media decode, preprocessing, vision encoder, LLM prefill, generation (decode tokens/s), SAM 2 image features,
  mask decoding + tracking (per frame and object), rendering/encoding, other (session bookkeeping);
* ``followup_turn`` (and ``video16_followup_turn`` in full runs): a second question on the same media (cached
  vision and SAM 2 features), with its ratio to the first turn of the same conversations;
* ``dense_track_fps``: ``track_dense`` through every frame of the clip;
* ``sam2_encode_frames_N``, ``sam2_track_frames_N`` (1, 4, 16, 64 frames, one object) and ``sam2_track_objects_N``
  (1, 2, 4 objects on 16 frames): how SAM 2's cost grows, against linear.

The chat scenarios also run (prefix ``3b_``) on random weights in the released 3B architecture with the bench
model's processor, answers forced to 40 tokens ending in ``<|seg|>``: in bfloat16 at full depth on a GPU (with the
scaling scenarios); on CPU with 2 of 36 LLM layers and 4 of 32 vision blocks, plus a full-depth estimate from the
measured per-layer time. ``targets`` in the JSON holds the issue's goals for this device (benchmarks, not tests).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .engine import BUNDLED_MODEL, Engine, default_device_dtype, load_engine
from .benchmarks.measure import Probe, measure
from .benchmarks.real3b import ANSWER_TOKENS, CPU_DEPTH, full_depth_estimate, real_3b_engine
from .benchmarks.scenarios import (
    APP,
    BenchMedia,
    Sam2Scaling,
    app_ready,
    dense_track,
    first_turn,
    followup_turn,
    grounding_questions,
    make_media,
    model_load,
    with_ratio,
)
from .session import Settings

SHARED = Path(os.environ.get("UNIPIXEL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GOLDEN_TINY = SHARED / "golden" / "checkpoints" / "tiny-tied"
REQUIRED = ("model_load", "app_ready", "image_turn", "video16_turn", "followup_turn", "dense_track_fps")
TURNS = ("image_turn", "followup_turn", "video16_turn", "video16_followup_turn", "dense_track_fps")


@dataclass(frozen=True)
class Plan:
    """How much to run: ``runs`` timed runs after ``warmup`` untimed ones per scenario, and the sizes."""

    runs: int = 5
    warmup: int = 1
    turns: tuple[str, ...] = TURNS  # chat scenarios on the bench model (all of them run on a GPU's 3B)
    app_runs: int = 3
    frames: tuple[int, ...] = (1, 4, 16, 64)  # SAM 2 scaling, one object
    objects: tuple[int, ...] = (1, 2, 4)  # SAM 2 scaling, 16 frames
    clip_length: int = 64  # frames of the dense tracking clip
    cpu_3b_runs: int = 2  # 3B image / follow-up turns on CPU, after cpu_3b_warmup warm-ups
    cpu_3b_warmup: int = 1
    cpu_3b_turns: tuple[str, ...] = ("image_turn", "followup_turn")
    cpu_3b_video: bool = True  # 3B video and dense scenarios on CPU, one run each (SAM 2 b+: seconds per frame)


FULL = Plan()
QUICK = Plan(
    runs=3, turns=("image_turn", "followup_turn", "video16_turn", "dense_track_fps"), app_runs=1, frames=(1, 4, 16),
    clip_length=32,
    cpu_3b_runs=1, cpu_3b_warmup=0, cpu_3b_turns=("image_turn",), cpu_3b_video=False,
)


# ---------------------------------------------------------------------------------------------- suite
class Suite:
    """Runs scenarios into ``scenarios``; a skip or a failure is recorded with its reason and the suite goes on."""

    def __init__(self, media: BenchMedia, directory: Path, log: Callable[[str], None]) -> None:
        self.media, self.directory, self.log = media, directory, log
        self.scenarios: dict[str, dict] = {}
        self.questions = {"image": media.image_questions[:2], "video": media.video_questions[:2]}
        self.started = time.perf_counter()

    def choose_questions(self, engine: Engine, settings: Settings) -> dict[str, tuple[str, str]]:
        """Questions ``engine`` answers with masks (kept for every later model: the 3B answers always end in one)."""
        media = self.media
        self.questions = {
            "image": grounding_questions(engine, settings, media.image, media.image_questions),
            "video": grounding_questions(engine, settings, media.video16, media.video_questions),
        }
        return self.questions

    def record(self, name: str, make: Callable[[], dict | str]) -> dict:
        """Run ``make`` (a result, or a string saying why the scenario cannot run) and keep its outcome."""
        try:
            outcome = make()
            result = {"skipped": outcome} if isinstance(outcome, str) else outcome
        except Exception as err:  # a benchmark reports a broken scenario and measures the rest
            traceback.print_exc()
            result = {"error": f"{type(err).__name__}: {err}"}
        self.scenarios[name] = result
        self.log(f"[{time.perf_counter() - self.started:6.1f} s] {name}: {summary(result)}")
        return result

    def turns(
        self, engine: Engine, settings: Settings, runs: int, warmup: int, names: tuple[str, ...] = TURNS,
        prefix: str = "", layers: bool = False,
    ) -> None:
        """The chat scenarios ``names`` on ``engine``, recorded as ``prefix + name``."""
        media, directory = self.media, self.directory
        with Probe(engine.model, layers) as probe:
            image, video = (media.image, self.questions["image"]), (media.video16, self.questions["video"])
            first = lambda path, questions: first_turn(engine, settings, path, questions[0], probe, directory)  # noqa: E731
            followup = lambda path, questions: followup_turn(engine, settings, path, questions, probe, directory)  # noqa: E731
            dense = lambda: dense_track(engine, settings, media.clip, video[1][0], probe)  # noqa: E731
            scenarios = {
                "image_turn": lambda: measure(first(*image), runs, warmup),
                "followup_turn": lambda: with_ratio(measure(followup(*image), runs, warmup)),
                "video16_turn": lambda: measure(first(*video), runs, warmup),
                "video16_followup_turn": lambda: with_ratio(measure(followup(*video), runs, warmup)),
                "dense_track_fps": lambda: _measured(dense(), runs, warmup),
            }
            for name in names:
                self.record(prefix + name, scenarios[name])

    def scaling(self, model: torch.nn.Module, plan: Plan, runs: int, warmup: int, prefix: str = "") -> None:
        """SAM 2 encoding, then tracking against frames (one object) and objects (16 frames)."""
        frames = self.media.clip_frames[: max(plan.frames)]
        made: list[Sam2Scaling] = []

        def encode() -> dict:
            made.append(Sam2Scaling(model, frames, max(plan.objects)))
            return made[0].encode(runs, warmup)

        if "error" in self.record(f"{prefix}sam2_encode_frames_{len(frames)}", encode):
            return
        on = min(16, len(frames))
        for axis, points in (("frames", [(n, 1) for n in plan.frames]), ("objects", [(on, n) for n in plan.objects])):
            previous = None
            for n_frames, n_objects in points:
                count = n_frames if axis == "frames" else n_objects
                previous = self.record(
                    f"{prefix}sam2_track_{axis}_{count}",
                    lambda f=n_frames, o=n_objects, p=previous: made[0].track(f, o, runs, warmup, p),
                )


def _measured(run: Callable | str, runs: int, warmup: int) -> dict | str:
    return run if isinstance(run, str) else measure(run, runs, warmup)


def suite_3b(suite: Suite, processor: Any, plan: Plan, device: str, dtype: torch.dtype) -> str:
    """The chat scenarios on the random-weight 3B architecture: all of them at full depth on a GPU (with SAM 2
    scaling); on CPU at reduced depth with full-depth estimates, the video ones once. Returns the model's name."""
    gpu = device == "cuda"
    real = real_3b_engine(processor, device, dtype, None if gpu else CPU_DEPTH)
    settings = Settings(max_new_tokens=ANSWER_TOKENS, dense_cap=plan.clip_length if gpu else 16)
    if gpu:
        suite.turns(real, settings, plan.runs, plan.warmup, prefix="3b_")
        suite.scaling(real.model, plan, plan.runs, plan.warmup, prefix="3b_")
        return real.name
    suite.turns(real, settings, plan.cpu_3b_runs, plan.cpu_3b_warmup, plan.cpu_3b_turns, prefix="3b_", layers=True)
    if plan.cpu_3b_video:
        suite.turns(real, settings, 1, 0, ("video16_turn", "dense_track_fps"), prefix="3b_", layers=True)
    for name, result in suite.scenarios.items():
        if name.startswith("3b_") and "llm_layers_s" in result.get("stages", {}):
            result["full_depth_estimate_s"] = full_depth_estimate(result, real)
    return real.name


def run_suite(model: str, plan: Plan, real_3b: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every scenario on ``model`` (and on the random-weight 3B architecture): the benchmark's JSON document."""
    device, dtype = default_device_dtype()
    document: dict[str, Any] = {"machine": machine_info(device, dtype), "model": model, "plan": asdict(plan)}
    with tempfile.TemporaryDirectory(prefix="unipixel-bench-") as tmp:
        suite = Suite(make_media(Path(tmp), plan.clip_length), Path(tmp), log)
        suite.record("model_load", lambda: measure(model_load(model, device, dtype), plan.runs, plan.warmup))
        suite.record("app_ready", lambda: _app_ready(model, plan.app_runs))
        engine = load_engine(model, device, dtype)
        document["questions"] = suite.choose_questions(engine, Settings())
        suite.turns(engine, Settings(), plan.runs, plan.warmup, plan.turns)
        suite.scaling(engine.model, plan, plan.runs, plan.warmup)
        if real_3b:
            document["model_3b"] = suite_3b(suite, engine.processor, plan, device, dtype)
    document["scenarios"] = suite.scenarios
    document["targets"] = evaluate_targets(suite.scenarios, device)
    document["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return document


def _app_ready(model: str, runs: int) -> dict | str:
    """``app_ready`` measured (each run a cold start of a new process), or why it cannot run."""
    return measure(app_ready(model), runs, 0) if APP.exists() else f"{APP.name} not found"


def machine_info(device: str, dtype: torch.dtype) -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was when the run started."""
    import transformers

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine()),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (active spinning)"),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1))
    return info


# ---------------------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """A goal of the issue on ``device``: ``value(scenarios)`` against ``limit`` (``at_most``: lower is better)."""

    label: str
    device: str
    value: Callable[[dict], float | None]
    limit: float
    at_most: bool = True


def _field(scenario: str, key: str = "median_s") -> Callable[[dict], float | None]:
    return lambda scenarios: scenarios.get(scenario, {}).get(key)


def _peak_gpu_gb(scenarios: dict) -> float | None:
    peaks = [s["peak_gpu_mb"] / 1024 for name, s in scenarios.items() if name.startswith("3b_") and "peak_gpu_mb" in s]
    return max(peaks, default=None)


TARGETS = (
    Target("image turn end to end <= 1.0 s", "cpu", _field("image_turn"), 1.0),
    Target("16-frame video turn <= 3 s", "cpu", _field("video16_turn"), 3.0),
    Target("follow-up <= 35 % of the first turn", "cpu", _field("followup_turn", "ratio_to_first"), 0.35),
    Target("video follow-up <= 35 % of the first turn", "cpu", _field("video16_followup_turn", "ratio_to_first"), 0.35),
    Target("app ready <= 10 s after launch", "cpu", _field("app_ready"), 10.0),
    Target("3B image turn (40-token answer) <= 1.2 s", "cuda", _field("3b_image_turn"), 1.2),
    Target("3B 16-frame video turn <= 3 s", "cuda", _field("3b_video16_turn"), 3.0),
    Target("3B dense tracking >= 25 frames/s at 768 px", "cuda", _field("3b_dense_track_fps", "fps"), 25.0, at_most=False),
    Target("3B peak GPU memory <= 12 GB", "cuda", _peak_gpu_gb, 12.0),
)


def evaluate_targets(scenarios: dict, device: str) -> list[dict]:
    """Each target of this device that was measured: value, value / limit and whether it is met."""
    out = []
    for target in TARGETS:
        value = target.value(scenarios) if target.device == device else None
        if value is not None:
            met = value <= target.limit if target.at_most else value >= target.limit
            out.append({"target": target.label, "value": value, "ratio": value / target.limit, "met": met})
    return out


# ---------------------------------------------------------------------------------------------- report
def _time(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if abs(seconds) < 1 else f"{seconds:.2f} s"


def summary(result: dict) -> str:
    """One line per scenario: median [min .. max] x runs and its key figures, or why it did not run."""
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    if "error" in result:
        return f"ERROR: {result['error']}"
    parts = [f"{_time(result['median_s'])} [{_time(result['min_s'])} .. {_time(result['max_s'])}] x{result['runs']}"]
    if "new_tokens" in result:
        rate, objects = result["decode_tokens_per_second"], result["objects"]
        parts.append(f"{result['new_tokens']:.0f} tokens at {rate:.1f} tok/s, {objects:.0f} object(s)")
    if "ratio_to_first" in result:
        first = f"{_time(result['first_turn_s'])}, {result['first_turn_objects']:.0f} object(s)"
        parts.append(f"{100 * result['ratio_to_first']:.0f} % of the first turn ({first})")
    if "fps" in result:
        parts.append(f"{result['frames']:.0f} frames at {result['fps']:.2f} frames/s")
    for key, label in (("per_frame_s", "per frame"), ("per_frame_object_s", "per frame and object")):
        if key in result:
            parts.append(f"{label} {_time(result[key])}")
    if "growth_vs_linear" in result:
        parts.append(f"growth vs linear x{result['growth_vs_linear']:.2f}")
    if "full_depth_estimate_s" in result:
        parts.append(f"full depth ~{_time(result['full_depth_estimate_s'])}")
    parts.append(f"peak RSS {result['peak_rss_mb']:.0f} MiB")
    if "peak_gpu_mb" in result:
        parts.append(f"peak GPU {result['peak_gpu_mb']:.0f} MiB")
    return "; ".join(parts)


def format_report(document: dict) -> str:
    """The scenarios, the stage breakdown of the turns (medians) and the targets, as text."""
    machine, scenarios = document["machine"], document["scenarios"]
    lines = [
        f"UniPixel benchmark: {document['model']} on {machine['device']} ({machine['dtype']}), {machine['cpu']}, "
        f"{machine['cpu_cores']} cores, {machine['torch_threads']} torch threads, load average {machine['load_average']}",
    ]
    if "model_3b" in document:
        lines.append(f"3b_*: {document['model_3b']}")
    width = max(map(len, scenarios)) + 2
    lines += ["", f"{'scenario':<{width}}median [min .. max] x runs; figures"]
    lines += [f"{name:<{width}}{summary(result)}" for name, result in scenarios.items()]
    turns = {name: r["stages"] for name, r in scenarios.items() if "preprocess_s" in r.get("stages", {})}
    if turns:
        stages = list(dict.fromkeys(key for stages in turns.values() for key in stages))
        column = max(12, *(len(name) + 2 for name in turns))
        lines += ["", "stage (median)".ljust(16) + "".join(name.rjust(column) for name in turns)]
        for stage in stages:
            cells = (_time(s[stage]) if stage in s else "-" for s in turns.values())
            lines.append(stage.removesuffix("_s").ljust(16) + "".join(cell.rjust(column) for cell in cells))
        lines.append("(llm_layers and vision_* are parts of prefill, generation and vision_encoder)")
    if document["targets"]:
        lines += ["", "targets (benchmarks, not tests):"]
        for t in document["targets"]:
            state = "met   " if t["met"] else "MISSED"
            lines.append(f"  {state} {t['target']}: {t['value']:.3f} ({100 * t['ratio']:.0f} % of the limit)")
    return "\n".join(lines)


def _rounded(value: Any) -> Any:
    """Floats to 6 significant digits, recursively (readable JSON)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def default_model() -> str:
    """The bundled model once it exists, else the golden tiny checkpoint."""
    return str(BUNDLED_MODEL if (BUNDLED_MODEL / "config.json").exists() else GOLDEN_TINY)


def main(argv: list[str] | None = None) -> int:
    """Run the suite, print the report, optionally write the JSON; exit status 1 if a scenario failed."""
    parser = argparse.ArgumentParser(prog="python -m unipixel.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=default_model(), help="checkpoint directory or hub id (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="fewer runs and sizes (about 2 minutes on a 2-core CPU)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--no-3b", dest="real_3b", action="store_false", help="skip the random-weight 3B scenarios")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    document = _rounded(run_suite(args.model, QUICK if args.quick else FULL, args.real_3b, log))
    print(format_report(document))
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if any("error" in result for result in document["scenarios"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
