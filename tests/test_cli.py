"""``python -m unipixel infer``: the file layout and ``reply.json`` schema, prompt numbering, overlays, batch
mode, and one-line errors with exit code 2. Runs in-process with the golden tiny model loaded once, plus one
real subprocess end to end."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, requires_golden
from tests.test_session import IMAGE, IMAGE_QUESTION, PROMPT_VIDEO, TINY, TRACK_FRAMES, TRACK_QUESTION, spy, write_video
from unipixel import cli
from unipixel.engine import Engine, load_engine
from unipixel.rendering import color_for

pytestmark = requires_golden


@pytest.fixture(scope="module")
def engine() -> Engine:
    return load_engine(str(TINY))


@pytest.fixture(autouse=True)
def shared_engine(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> None:
    """``--model TINY`` gets the module's engine (loaded once); any other model is really loaded."""
    real = cli.load_engine
    monkeypatch.setattr(cli, "load_engine", lambda model=None: engine if model == str(TINY) else real(model))


def infer(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = cli.main(["infer", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def reply(folder: Path) -> dict:
    return json.loads((folder / "reply.json").read_text())


def assert_mask_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A 0/255 grey PNG of ``size`` (W, H); returns it as bool."""
    with Image.open(path) as image:
        assert image.mode == "L" and image.size == size
        pixels = np.asarray(image)
    assert set(np.unique(pixels)) <= {0, 255}
    return pixels > 0


def video_info(path: Path) -> tuple[int, float]:
    """Frame count (by decoding) and frame rate of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), float(stream.average_rate)


# ---------------------------------------------------------------------------------------------- success
def test_image_writes_reply_masks_and_overlay(capsys, tmp_path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = infer(capsys, IMAGE, IMAGE_QUESTION, "--model", TINY, "--out", out)
    assert (code, stdout, stderr) == (0, "Sure, it is [obj_1].\n", "")
    data = reply(out)
    assert data["text"] == "Sure, it is [obj_1]."
    assert data["raw_text"] == "Sure, it is <|seg|>."
    assert data["model"] == str(TINY)
    assert "notice" not in data
    (obj,) = data["objects"]
    assert obj["tag"] == "obj_1" and obj["color"] == color_for("obj_1")
    assert re.fullmatch(r"#[0-9a-f]{6}", obj["color"])
    assert obj["frames"] == [0] and obj["masks"] == ["masks/obj_1_f000.png"]
    assert 0 < obj["confidence"] <= 1
    mask = assert_mask_png(out / obj["masks"][0], (300, 200))
    assert mask.sum() == obj["area"][0] > 0
    assert data["media"] == {
        "path": str(IMAGE), "is_image": True, "width": 300, "height": 200,
        "frame_indices": [0], "source_frames": 1, "fps": None,
    }
    assert data["overlay"] == "overlay.png" and not (out / "overlay.mp4").exists()
    with Image.open(out / "overlay.png") as overlay:
        assert overlay.format == "PNG" and overlay.height == 200 and overlay.width >= 300  # legend on the right
    assert {"load_model", "generate", "total", "write_outputs"} <= set(data["timings"])
    assert all(isinstance(v, float) for v in data["timings"].values())


def test_video_overlay_plays_the_sampled_frames(capsys, tmp_path) -> None:
    out = tmp_path / "out"
    code, _, _ = infer(capsys, write_video(tmp_path / "clip.mp4"), TRACK_QUESTION, "--frames", 4, "--model", TINY, "--out", out)
    assert code == 0
    data = reply(out)
    (obj,) = data["objects"]
    assert obj["frames"] == data["media"]["frame_indices"] == [0, 3, 6, 9]
    assert obj["masks"] == [f"masks/obj_1_f{i:03d}.png" for i in (0, 3, 6, 9)]
    for name in obj["masks"]:
        assert_mask_png(out / name, (200, 150))
    assert "dense_masks" not in obj
    assert data["overlay"] == "overlay.mp4" and not (out / "overlay.png").exists()
    assert video_info(out / "overlay.mp4") == (4, cli.SAMPLED_FPS)


def test_dense_overlay_covers_every_decoded_frame_at_the_source_fps(capsys, tmp_path) -> None:
    out = tmp_path / "out"
    code, _, _ = infer(capsys, write_video(tmp_path / "clip.mp4", fps=10), TRACK_QUESTION, "--frames", 4, "--dense",
                       "--model", TINY, "--out", out)
    assert code == 0
    (obj,) = reply(out)["objects"]
    assert obj["frames"] == [0, 3, 6, 9]
    assert obj["dense_frames"] == list(range(10))
    assert obj["dense_masks"] == [f"masks/dense/obj_1_f{i:03d}.png" for i in range(10)]
    assert all(assert_mask_png(out / name, (200, 150)).any() for name in obj["dense_masks"])
    assert video_info(out / "overlay.mp4") == (10, 10.0)


def test_dense_with_an_answer_without_objects_writes_the_sampled_overlay(capsys, tmp_path) -> None:
    code, stdout, stderr = infer(capsys, REPO / "examples" / "moving_shapes.mp4", "What is [0]?", "--point", "120,80,3",
                                 "--dense", "--model", "bundled", "--out", tmp_path)
    assert code == 0, stderr
    data = reply(tmp_path)
    assert data["objects"] == [] and "<|seg|>" not in data["raw_text"], stdout  # a caption: nothing to track
    assert video_info(tmp_path / "overlay.mp4")[0] == len(data["media"]["frame_indices"])


def test_a_directory_of_frames_is_a_video(capsys, tmp_path) -> None:
    code, _, _ = infer(capsys, TRACK_FRAMES, TRACK_QUESTION, "--model", TINY, "--out", tmp_path)
    assert code == 0
    assert reply(tmp_path)["objects"][0]["frames"] == [0, 1, 2, 3, 4]
    assert video_info(tmp_path / "overlay.mp4")[0] == 5


def test_prompts_are_numbered_in_command_line_order(capsys, engine, monkeypatch, tmp_path) -> None:
    scribble = np.zeros((180, 240, 4), np.uint8)
    scribble[50:80, 60:100] = (255, 255, 255, 255)  # alpha marks the inside
    Image.fromarray(scribble, "RGBA").save(tmp_path / "scribble.png")
    calls = spy(monkeypatch, engine.model, "generate")
    code, _, _ = infer(capsys, PROMPT_VIDEO, "Please segment [0] and [1].", "--box", "20,30,90,120,3",
                       "--mask", f"{tmp_path / 'scribble.png'},3", "--point", "100,60,2", "--model", TINY, "--out", tmp_path)
    assert code == 0
    data = reply(tmp_path)
    assert [(p["id"], p["type"], p["frame"]) for p in data["prompts"]] == [(0, "box", 3), (1, "mask", 3), (2, "point", 2)]
    assert data["prompts"][1]["pixels"] == 30 * 40
    assert data["regions"] == [0, 1, 2]
    (_, kwargs), = calls
    box, point = kwargs["point_coords"]  # <|ref|> order: [0] the box, then [2] the point appended to the question
    assert (box.shape, point.shape) == ((1, 2, 2), (1, 1, 2))
    assert kwargs["point_frames"].tolist() == [3, 2]
    assert kwargs["refer_mask"].shape[1] == 1 and kwargs["refer_mask"][1, 0].any()


@pytest.mark.parametrize(
    "pixels, mode, inside",
    [
        (np.array([[0, 7], [0, 0]], np.uint8), "L", [[False, True], [False, False]]),
        (np.array([[[0, 0, 0, 0], [0, 0, 0, 9]], [[255, 255, 255, 0], [0, 0, 0, 0]]], np.uint8), "RGBA",
         [[False, True], [False, False]]),  # transparency: alpha decides, colour ignored
        (np.array([[[0, 0, 0, 255], [0, 3, 0, 255]], [[0, 0, 0, 255], [0, 0, 0, 255]]], np.uint8), "RGBA",
         [[False, True], [False, False]]),  # fully opaque: colour decides
    ],
)
def test_mask_png_inside_rule(tmp_path, pixels, mode, inside) -> None:
    Image.fromarray(pixels, mode).save(tmp_path / "m.png")
    assert cli.read_mask(tmp_path / "m.png").tolist() == inside


# ---------------------------------------------------------------------------------------------- errors
def _png(path: Path, mask: np.ndarray) -> Path:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path


ERROR_CASES = {
    "unreadable media": lambda d: [_text(d / "bad.png"), "q"],
    "missing media": lambda d: [d / "missing.png", "q"],
    "empty question": lambda d: [IMAGE, "  "],
    "huge question": lambda d: [IMAGE, "x" * 50_000],
    "bad coordinates": lambda d: [IMAGE, "q", "--point", "1,abc"],
    "too few coordinates": lambda d: [IMAGE, "q", "--box", "1,2,3"],
    "fractional frame": lambda d: [IMAGE, "q", "--point", "1,2,0.5"],
    "point outside": lambda d: [IMAGE, "q", "--point", "301,10"],
    "out-of-range frame": lambda d: [IMAGE, "q", "--point", "10,10,1"],
    "degenerate box": lambda d: [IMAGE, "q", "--box", "10,10,10,50"],
    "missing mask": lambda d: [IMAGE, "q", "--mask", d / "none.png"],
    "not an image mask": lambda d: [IMAGE, "q", "--mask", _text(d / "m.png")],
    "mis-sized mask": lambda d: [IMAGE, "q", "--mask", _png(d / "m.png", np.ones((20, 30), bool))],
    "empty mask": lambda d: [IMAGE, "q", "--mask", _png(d / "m.png", np.zeros((200, 300), bool))],
    "bad frame count": lambda d: [IMAGE, "q", "--frames", "0"],
    "unknown model": lambda d: [IMAGE, "q", "--model", d / "no-model"],
    "not a checkpoint": lambda d: [IMAGE, "q", "--model", d],
    "no question": lambda d: [IMAGE],
    "unknown option": lambda d: [IMAGE, "q", "--colour", "red"],
    "media with --batch": lambda d: [IMAGE, "q", "--batch", d / "jobs.jsonl"],
}


def _text(path: Path) -> Path:
    path.write_text("not an image")
    return path


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_input_exits_2_with_one_error_line(capsys, tmp_path, case) -> None:
    out = tmp_path / "out"
    argv = ERROR_CASES[case](tmp_path)
    code, stdout, stderr = infer(capsys, *argv, *([] if "--model" in argv else ["--model", TINY]), "--out", out)
    assert code == 2
    assert stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and stderr.endswith("\n")
    assert "Traceback" not in stderr
    assert not (out / "reply.json").exists()


def test_missing_out_is_an_argparse_error(capsys) -> None:
    code, _, stderr = infer(capsys, IMAGE, "q")
    assert code == 2 and stderr.startswith("error: ") and "--out" in stderr and stderr.count("\n") == 1


def test_help_documents_the_contract(capsys) -> None:
    code, stdout, _ = infer(capsys, "--help")
    assert code == 0
    for text in ("--model", "--point", "--box", "--mask", "--frames", "--dense", "--batch", "--out", "reply.json",
                 "masks/obj_1_f000.png", "overlay.png", "overlay.mp4", "alpha > 0", "exit status", "error: "):
        assert text in stdout


# ---------------------------------------------------------------------------------------------- batch
def test_batch_runs_every_job_and_reports_the_bad_ones(capsys, tmp_path) -> None:
    shutil.copy(IMAGE, tmp_path / "image.png")
    jobs = [
        {"media": str(IMAGE), "question": IMAGE_QUESTION},
        {"media": "missing.png", "question": "q"},
        {"media": "image.png", "question": "What is [0]?", "points": [[100, 90]], "boxes": [[10, 10, 60, 50, 0]]},
        {"media": "image.png", "question": "q", "points": [[1]]},
    ]
    lines = [json.dumps(job) for job in jobs[:2]] + ["", "{not json", *map(json.dumps, jobs[2:])]
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code = cli.main(["infer", "--batch", str(tmp_path / "jobs.jsonl"), "--model", str(TINY), "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == [f"job_{k:03d}" for k in range(5)]
    assert reply(out / "job_000")["text"] == "Sure, it is [obj_1]."
    assert (out / "job_000" / "masks" / "obj_1_f000.png").exists() and (out / "job_000" / "overlay.png").exists()
    third = reply(out / "job_003")
    assert [(p["id"], p["type"]) for p in third["prompts"]] == [(0, "point"), (1, "box")]
    assert third["media"]["path"] == str(tmp_path / "image.png")  # relative to the jobs file
    for k in (1, 2, 4):
        assert set(reply(out / f"job_{k:03d}")) == {"error"}
    assert "file not found" in reply(out / "job_001")["error"]
    assert "a point is X,Y[,FRAME]" in reply(out / "job_004")["error"]
    errors = stderr.splitlines()
    assert [line.split(":")[1] for line in errors] == [" job 1 (job_001)", " job 2 (job_002)", " job 4 (job_004)"]
    assert all(line.startswith("error: ") for line in errors) and "Traceback" not in stderr
    assert stdout.splitlines()[0] == "job_000: Sure, it is [obj_1]."


def test_batch_of_good_jobs_exits_0(capsys, tmp_path) -> None:
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"media": str(IMAGE), "question": IMAGE_QUESTION}) + "\n")
    code = cli.main(["infer", "--batch", str(tmp_path / "jobs.jsonl"), "--model", str(TINY), "--out", str(tmp_path / "out")])
    assert code == 0 and capsys.readouterr().err == ""
    assert reply(tmp_path / "out" / "job_000")["objects"][0]["masks"] == ["masks/obj_1_f000.png"]


# ---------------------------------------------------------------------------------------------- real process
def test_python_m_unipixel_infer_end_to_end(tmp_path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "unipixel", "infer", str(IMAGE), IMAGE_QUESTION, "--point", "100,90",
         "--model", str(TINY), "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    data = reply(out)
    assert done.stdout == data["text"] + "\n"
    assert data["prompts"] == [{"id": 0, "type": "point", "x": 100.0, "y": 90.0, "frame": 0, "label": 1}]
    for obj in data["objects"]:
        for name in obj["masks"]:
            assert_mask_png(out / name, (300, 200))
    assert (out / "overlay.png").exists()
