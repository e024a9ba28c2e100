"""Measuring: repeated runs with medians and spread, stage clocks inside a turn, peak memory."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Sample = tuple[float, dict[str, float], dict[str, float]]
"""One run of a scenario: its headline seconds, the seconds of its stages and other figures (counts, rates)."""
Run = Callable[[], Sample]


def synced_time(device: torch.device) -> float:
    """A wall-clock timestamp once ``device`` has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def measure(run: Run, runs: int, warmup: int) -> dict[str, Any]:
    """Warm up, then time ``runs`` runs: median / min / max of the headline, medians of the stages and figures,
    process CPU seconds (median) and peak memory over the timed runs."""
    for _ in range(warmup):
        run()
    reset_peaks()
    samples, cpu = [], []
    for _ in range(runs):
        start = time.process_time()
        samples.append(run())
        cpu.append(time.process_time() - start)
    headline = [sample[0] for sample in samples]
    median = lambda i: {k: statistics.median(s[i][k] for s in samples) for k in samples[0][i]}  # noqa: E731
    stages = median(1)
    return {
        "median_s": statistics.median(headline),
        "min_s": min(headline),
        "max_s": max(headline),
        "runs": runs,
        **({"stages": stages} if stages else {}),
        **median(2),
        "cpu_s": statistics.median(cpu),
        **peaks(),
    }


def reset_peaks() -> None:
    """Restart the peak-RSS (Linux ``VmHWM``) and peak-GPU-memory counters."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the peak then covers the whole process
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peaks() -> dict[str, float]:
    """Peak RSS (MiB) since the last reset, and the peak GPU memory allocated by torch on a GPU."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.exists() else []
    kib = next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), None)
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": round(kib / 1024, 1)}
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


class Probe:
    """Clocks what ``Reply.timings`` does not split, with hooks and wrappers that are removed on exit.

    Calls of the whole model: the first of a turn is the LLM prefill, the others are decode steps.
    ``sam2.encode_frames`` / ``sam2.track``: SAM 2 image features and mask decoding + tracking. With ``layers``,
    also the decoder layers and the vision blocks (windowed and full attention apart), to scale a reduced-depth
    model to full depth. On a GPU the marks are CUDA events, so that measuring does not stall the decode loop.
    """

    WRAPPED = ("encode_frames", "track")

    def __init__(self, model: torch.nn.Module, layers: bool = False) -> None:
        self.model, self.layers = model, layers
        self.cuda = model.device.type == "cuda"
        self.spans: dict[str, list[tuple[Any, Any]]] = {}
        self._handles: list = []

    def __enter__(self) -> Probe:
        self._hook(self.model, "model")
        if self.layers:
            for layer in self.model.model.language_model.layers:
                self._hook(layer, "llm_layers")
            full = set(self.model.config.vision_config.fullatt_block_indexes)
            for i, block in enumerate(self.model.model.visual.blocks):
                self._hook(block, "vision_full" if i in full else "vision_window")
        sam = self.model.sam2
        for name in self.WRAPPED:
            setattr(sam, name, self._timed(name, getattr(sam, name)))  # shadows the method until __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        for name in self.WRAPPED:
            delattr(self.model.sam2, name)

    def reset(self) -> None:
        self.spans = {}

    def total(self, name: str) -> float:
        """Seconds spent in ``name`` since the last reset."""
        return sum((self._seconds(start, end) for start, end in self.spans.get(name, [])), 0.0)

    def generation(self) -> tuple[float, float, int]:
        """``(prefill seconds, decode seconds, decode steps)`` of the model calls since the last reset."""
        calls = self.spans.get("model", [])
        if not calls:
            return 0.0, 0.0, 0
        return self._seconds(*calls[0]), self._seconds(calls[0][1], calls[-1][1]), len(calls) - 1

    def _mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _seconds(self, start: Any, end: Any) -> float:
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1000

    def _hook(self, module: torch.nn.Module, name: str) -> None:
        started: list = []
        self._handles.append(module.register_forward_pre_hook(lambda *_: started.append(self._mark())))
        self._handles.append(module.register_forward_hook(
            lambda *_: self.spans.setdefault(name, []).append((started.pop(), self._mark()))
        ))

    def _timed(self, name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self._mark()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spans.setdefault(name, []).append((start, self._mark()))

        return timed
