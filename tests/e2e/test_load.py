"""Load, isolation and soak: ``python app.py`` (the bundled model when present, else the golden tiny one) on
127.0.0.1, driven by many ``gradio_client`` sessions through ``/ask``.

* 16 concurrent sessions × 5 turns, each on its own media (distinct sizes, frame counts and file names), each turn
  replaying the session's earlier turns: every reply is about its own media, nothing errors, the model queue runs
  one call at a time in arrival order.
* A soak of 200 turns: the server's memory (VmRSS of the app process) and its temporary files do not grow.
* After the run, with the clients closed, memory is within 10 % of where it started (after a warm-up), and
  stopping the server deletes its temporary folder.

Figures are printed (run with ``-s``) and written to ``artifacts/load_figures.json``.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from unipixel import limits
from unipixel.processing.media import sample_indices

from .conftest import MODEL, MODEL_WHY, REPO, STARTUP_S, _free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SESSIONS, TURNS, SOAK_TURNS = 16, 5, 200
QUESTIONS = ["Please segment the red circle.", "Please segment the blue square.", "What is [0]?",
             "Please segment [0].", "Which shapes are there? Please segment them."]
FIGURES: dict = {}
FIGURES_PATH = REPO / "artifacts" / "load_figures.json"


# ---------------------------------------------------------------------------------------------- server and media
def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def settled_rss(pid: int, seconds: float = 3.0) -> float:
    """RSS once the server is idle (the lowest of a few readings over ``seconds``)."""
    readings = []
    for _ in range(6):
        time.sleep(seconds / 6)
        readings.append(rss_mib(pid))
    return min(readings)


class Server:
    def __init__(self, tmp: Path):
        if MODEL is None:
            pytest.skip(MODEL_WHY)
        self.tmp, self.port = tmp, _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp / "app.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": "1",  # 2 shared cores: a second torch thread only adds contention
               "TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio")}
        env.pop("GRADIO_SERVER_NAME", None)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", MODEL, "--port", str(self.port)],
                                         cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.time() + STARTUP_S
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.url + "config", timeout=2):
                    break
            except OSError:
                assert time.time() < deadline, self.log.read_text()[-3000:]
                time.sleep(0.5)
        self.tmp_root = tmp / f"unipixel-app-{self.pid}"  # app.TMP_ROOT of the server process

    def files(self, folder: Path) -> int:
        return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)  # the group we started (app.py and its children only)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("load"))
    yield srv
    srv.stop()


def _shapes(h: int, w: int, background: tuple[int, int, int], shift: int = 0) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = background
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h // 3) ** 2 + (xx - w // 3 - shift) ** 2 < (min(h, w) // 5) ** 2] = (230, 25, 75)  # red circle
    img[h // 2: h // 2 + h // 4, w // 2 + shift // 2: w // 2 + w // 4 + shift // 2] = (0, 130, 200)  # blue square
    return img


@pytest.fixture(scope="module")
def media_set(tmp_path_factory) -> list[dict]:
    """16 media: 12 images and 4 videos, each with its own size, frame count, colours and file name."""
    root = tmp_path_factory.mktemp("media")
    out = []
    for s in range(SESSIONS):
        h, w = 96 + 8 * s, 128 + 12 * s
        background = (40 + 9 * s, 200 - 7 * s, 90 + 5 * s)
        if s % 4 == 3:
            frames = 6 + s // 4
            path = root / f"visitor_{s:02d}.mp4"
            with av.open(str(path), "w") as container:
                stream = container.add_stream("libx264", rate=10)
                stream.height, stream.width, stream.pix_fmt = h, w, "yuv420p"
                for k in range(frames):
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(_shapes(h, w, background, 3 * k), format="rgb24")))
                container.mux(stream.encode())
            out.append({"path": path, "size": (h, w), "sampled": sample_indices(frames, 8), "image": False,
                        "background": background})
        else:
            path = root / f"visitor_{s:02d}.png"
            Image.fromarray(_shapes(h, w, background)).save(path)
            out.append({"path": path, "size": (h, w), "sampled": [0], "image": True, "background": background})
    return out


# ---------------------------------------------------------------------------------------------- one turn
def ask(client, media: dict, turn: int, dense: bool = False):
    """Turn ``turn`` (1-based) of a session on ``media``: the earlier turns are replayed (``previous_turns``)."""
    from gradio_client import handle_file

    h, w = media["size"]
    point = [{"point": [w // 3, h // 3]}]
    prompts_of = lambda k: point if k == 3 else []  # noqa: E731 - turn 3 draws [0]; turns 4-5 refer to it
    previous = [{"question": QUESTIONS[k - 1], "prompts": prompts_of(k)} for k in range(1, turn)]
    settings = {"frames": 8, "dense": dense, "max_new_tokens": 16, "previous_turns": previous}
    return client.predict(handle_file(str(media["path"])), QUESTIONS[turn - 1], json.dumps(prompts_of(turn)),
                          json.dumps(settings), api_name="/ask")


def about_own_media(result, media: dict, turn: int) -> list[str]:
    """What is wrong with a reply for turn ``turn`` on ``media`` (empty: it refers to its own media only)."""
    text, overlay, objects = result
    h, w = media["size"]
    problems = []
    info = objects["media"]
    if info["name"] != media["path"].name:
        problems.append(f"media name {info['name']} is not {media['path'].name}")
    if (info["height"], info["width"]) != (h, w) or info["sampled_frames"] != media["sampled"]:
        problems.append(f"media {info['width']}×{info['height']} frames {info['sampled_frames']}")
    if objects["turn"] != turn or objects["text"] != text:
        problems.append(f"turn {objects['turn']} (expected {turn})")
    if objects["reply"]["regions"] != ([0] if turn == 3 else []):
        problems.append(f"regions {objects['reply']['regions']}")
    for obj in objects["objects"]:
        if obj["frames"] != media["sampled"] or len(obj["area"]) != len(media["sampled"]) or max(obj["area"]) > h * w:
            problems.append(f"object {obj['tag']} frames {obj['frames']} area {obj['area']}")
    if media["image"]:  # the overlay is this media with the reply's masks drawn on it (and a legend to its right)
        with Image.open(overlay) as im:
            pixels = np.asarray(im.convert("RGB"))
        colours = [o["color"] for o in objects["objects"]]
        explained = overlay_explained(pixels, np.asarray(Image.open(media["path"]).convert("RGB")), colours)
        if explained < 0.99:
            problems.append(f"overlay {pixels.shape}: {explained:.0%} of it is this media with its masks")
    elif Path(overlay).suffix != ".mp4":
        problems.append(f"overlay {overlay}")
    return problems


def overlay_explained(pixels: np.ndarray, original: np.ndarray, colours: list[str], alpha: float = 0.45) -> float:
    """Share of the overlay's media area that is the original pixel, an object colour (outline), or the original
    tinted by one or two object colours (fills; see ``rendering.overlay_frame``)."""
    h, w = original.shape[:2]
    if pixels.shape[0] < h or pixels.shape[1] < w:
        return 0.0
    shown = pixels[:h, :w].astype(np.float32)
    orig = original.astype(np.float32)
    rgb = [np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)], np.float32) for c in colours]
    candidates = [orig] + [np.broadcast_to(c, orig.shape) for c in rgb]
    tinted = [orig * (1 - alpha) + c * alpha for c in rgb]
    candidates += tinted + [t * (1 - alpha) + c * alpha for t in tinted for c in rgb]
    ok = np.zeros((h, w), bool)
    for candidate in candidates:
        ok |= (np.abs(shown - candidate) <= 1.5).all(-1)
    return float(ok.mean())


# ---------------------------------------------------------------------------------------------- tests
def test_concurrent_sessions_stay_isolated_and_the_queue_orders_the_work(server, media_set) -> None:
    from gradio_client import Client

    warm = Client(server.url, verbose=False)
    for media in media_set:  # warm-up: every size once, every turn kind once
        assert about_own_media(ask(warm, media, 1), media, 1) == []
    for turn in range(2, TURNS + 1):
        assert about_own_media(ask(warm, media_set[3], turn), media_set[3], turn) == []
    warm.close()
    FIGURES["rss_before_mib"] = round(settled_rss(server.pid), 1)

    clients = [Client(server.url, verbose=False) for _ in range(SESSIONS)]
    records, problems = [], []
    barrier = threading.Barrier(SESSIONS)

    def visitor(s: int) -> None:
        barrier.wait()
        for turn in range(1, TURNS + 1):
            started = time.perf_counter()
            try:
                result = ask(clients[s], media_set[s], turn, dense=not media_set[s]["image"] and turn == 1)
                wrong = about_own_media(result, media_set[s], turn)
            except Exception as err:  # noqa: BLE001 - counted as a failure below
                wrong = [f"{type(err).__name__}: {err}"]
            records.append((s, turn, started, time.perf_counter()))
            problems.extend(f"session {s} turn {turn}: {p}" for p in wrong)

    started = time.perf_counter()
    threads = [threading.Thread(target=visitor, args=(s,)) for s in range(SESSIONS)]
    for t in threads:
        t.start()
    peak = 0.0
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mib(server.pid))
        time.sleep(0.2)
    wall = time.perf_counter() - started
    FIGURES.update(sessions=SESSIONS, turns_per_session=TURNS, requests=len(records), failed=len(problems),
                   model_turns=SESSIONS * TURNS * (TURNS + 1) // 2, concurrent_wall_s=round(wall, 1),
                   rss_peak_mib=round(peak, 1))
    assert problems == []
    assert len(records) == SESSIONS * TURNS

    # The model queue: one call at a time, in arrival order. A slow call holds the queue while 12 short ones
    # join one after another (each sent once the previous is queued); they must finish in that order.
    from gradio_client import handle_file
    from gradio_client.utils import Status

    blocker_media = media_set[15]
    blocker = clients[0].submit(handle_file(str(blocker_media["path"])), QUESTIONS[0], "[]",
                                json.dumps({"frames": 8, "dense": True, "max_new_tokens": 16,
                                            "previous_turns": [{"question": q, "prompts": []} for q in QUESTIONS[:2]] * 6}),
                                api_name="/ask")
    jobs, ranks = [], []
    for s in range(1, 13):
        job = clients[s].submit(handle_file(str(media_set[s]["path"])), QUESTIONS[0], "[]",
                                json.dumps({"frames": 8, "dense": False, "max_new_tokens": 16}), api_name="/ask")
        deadline = time.time() + 60
        while job.status().code in (Status.STARTING, Status.JOINING_QUEUE) and time.time() < deadline:
            time.sleep(0.01)
        ranks.append(job.status().rank)
        jobs.append(job)
    started_order: list[int] = []  # the order the server starts them in (each call takes ~0.1 s or more)
    running = (Status.PROCESSING, Status.PROGRESS, Status.ITERATING, Status.FINISHED)
    while len(started_order) < len(jobs):
        for k, job in enumerate(jobs):
            if k not in started_order and job.status().code in running:
                started_order.append(k)
        time.sleep(0.002)
    blocker.result()
    assert [about_own_media(job.result(), media_set[k + 1], 1) for k, job in enumerate(jobs)] == [[]] * len(jobs)
    FIGURES.update(queue_ranks_seen=ranks, queue_start_order=started_order)
    assert max(r or 0 for r in ranks) >= 6, f"the short calls should have waited in the queue (ranks {ranks})"
    known = [r for r in ranks if r is not None]
    assert known == sorted(known), f"queue positions {ranks} do not follow the arrival order"
    assert started_order == sorted(started_order), f"the queue started them in the order {started_order}"
    for client in clients:
        client.close()


def test_soak_of_200_turns_shows_no_growth(server, media_set) -> None:
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    samples, api_files, problems = [], [], []
    for k in range(SOAK_TURNS):
        media = media_set[k % SESSIONS]
        turn = 1 + k % TURNS
        try:
            problems += about_own_media(ask(client, media, turn), media, turn)
        except Exception as err:  # noqa: BLE001
            problems.append(f"soak turn {k}: {type(err).__name__}: {err}")
        if (k + 1) % 20 == 0:
            samples.append(round(rss_mib(server.pid), 1))
            api_files.append(server.files(server.tmp_root / "api"))
    client.close()
    FIGURES.update(soak_turns=SOAK_TURNS, soak_failed=len(problems), soak_rss_every_20_turns_mib=samples,
                   soak_api_result_files=api_files, gradio_cache_files=server.files(server.tmp / "gradio"))
    assert problems == []
    early, late = statistics.median(samples[1:4]), statistics.median(samples[-3:])
    FIGURES["soak_growth_pct"] = round(100 * (late / early - 1), 1)
    assert late <= early * 1.05, f"RSS grew from {early} to {late} MiB over the soak ({samples})"
    folders = [p for p in (server.tmp_root / "api").iterdir()]
    assert len(folders) <= limits.API_RESULTS_KEPT + 1, f"{len(folders)} /ask result folders kept"
    assert max(api_files) <= 12 * (limits.API_RESULTS_KEPT + 1)  # a few files per result folder, bounded


def test_memory_returns_and_temporary_files_go(server) -> None:
    assert "rss_before_mib" in FIGURES, "run with the concurrency test first"
    after = settled_rss(server.pid, seconds=6.0)
    FIGURES["rss_after_mib"] = round(after, 1)
    FIGURES["rss_change_pct"] = round(100 * (after / FIGURES["rss_before_mib"] - 1), 1)
    log = server.log.read_text()
    FIGURES["server_errors_logged"] = log.count("Traceback") + log.count(" ERROR ")
    assert server.tmp_root.exists()
    server.stop()
    FIGURES["tmp_root_removed_at_exit"] = not server.tmp_root.exists()
    FIGURES_PATH.parent.mkdir(parents=True, exist_ok=True)
    FIGURES_PATH.write_text(json.dumps(FIGURES, indent=1) + "\n")
    print("\nload figures:", json.dumps(FIGURES, indent=1))
    assert FIGURES["server_errors_logged"] == 0, log[-3000:]
    assert after <= FIGURES["rss_before_mib"] * 1.10, f"RSS {after:.0f} MiB after vs {FIGURES['rss_before_mib']:.0f} before"
    assert not server.tmp_root.exists(), "the app's temporary folder should be deleted when it stops"
