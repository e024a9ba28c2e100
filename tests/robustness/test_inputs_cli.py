"""The corpus through ``python -m unipixel infer`` (in-process, the tiny model loaded once): exit 0 and a
``reply.json`` whose media matches the file for odd but valid input; exit 2 with exactly one ``error: ...`` line
on stderr and no traceback for bad input; and a batch with every case runs the good jobs after the bad ones."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.robustness.conftest import TINY
from tests.robustness.corpus import QUESTIONS, Case, Prompts, prompt_cases
from tests.robustness.report import tally
from unipixel import cli, ui

SEGMENT = "Please segment the red square."


@pytest.fixture(autouse=True)
def shared_engine(monkeypatch: pytest.MonkeyPatch, engine) -> None:
    """``--model TINY`` gets the loaded engine (the CLI's own model loading is tested in tests/test_cli.py)."""
    monkeypatch.setattr(cli, "load_engine", lambda model=None: engine if model == str(TINY) else pytest.fail(model))


def infer(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["infer", *map(str, argv), "--model", str(TINY)])
    out, err = capsys.readouterr()
    return code, out, err


def clean_error(code: int, stdout: str, stderr: str) -> bool:
    return code == 2 and stdout == "" and stderr.startswith("error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr


def test_every_media_case(capsys, tmp_path: Path, corpus: list[Case]) -> None:
    failures = []
    for k, case in enumerate(corpus):
        out = tmp_path / f"case_{k:02d}"
        video = case.ok and case.frames is not None and case.frames > 1
        code, stdout, stderr = infer(capsys, case.path, SEGMENT, "--frames", 16, *(["--dense"] if video else []), "--out", out)
        if not case.ok:
            good = clean_error(code, stdout, stderr) and not (out / "reply.json").exists()
        else:
            reply = json.loads((out / "reply.json").read_text()) if code == 0 else {}
            media = reply.get("media", {})
            good = (code == 0 and stdout.strip() == reply["text"]
                    and (case.size is None or (media["height"], media["width"]) == case.size)
                    and (case.frames is None or len(media["frame_indices"]) == case.frames)
                    and all((out / m).exists() for o in reply["objects"] for m in o["masks"])
                    and (out / reply["overlay"]).exists())
        if not good:
            failures.append(f"{case.name}: exit {code}, stderr {stderr!r}")
        tally("cli: media files", good)
    assert failures == []


def test_every_question_case(capsys, tmp_path: Path, plain) -> None:
    failures = []
    for k, case in enumerate(QUESTIONS):
        out = tmp_path / f"q_{k:02d}"
        code, stdout, stderr = infer(capsys, plain["image"], case.text, "--out", out)
        if case.error is not None:
            good = clean_error(code, stdout, stderr) and re.search(case.error, stderr) is not None
        else:
            good = code == 0 and (out / "reply.json").exists()
        if not good:
            failures.append(f"{case.name}: exit {code}, stderr {stderr!r}")
        tally("cli: questions", good)
    assert failures == []


def cli_prompt_args(case: Prompts, size: tuple[int, int], folder: Path) -> list[str]:
    """The case's prompts as --point/--box/--mask arguments (a scribble becomes a mask PNG)."""
    def num(v: float) -> str:
        return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:g}"

    args = []
    for i, item in enumerate(case.prompts):
        frame = item.get("frame", 0)
        if "point" in item:
            args += ["--point", ",".join(num(v) for v in [*item["point"], frame])]
        elif "box" in item:
            args += ["--box", ",".join(num(v) for v in [*item["box"], frame])]
        else:
            line = item["scribble"]
            mask = ui.scribble_mask(line, size, item.get("width", 5)) if line else np.zeros(size, bool)
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"mask_{i}.png")
            args += ["--mask", f"{folder / f'mask_{i}.png'},{frame}"]
    return args


@pytest.mark.parametrize("kind", ["image", "video"])
def test_every_prompt_case(capsys, tmp_path: Path, plain, kind) -> None:
    from unipixel.processing.media import load_media

    media = load_media(plain[kind], num_frames=4)
    failures = []
    for k, case in enumerate(prompt_cases(media.size, media.num_frames)):
        out = tmp_path / f"p_{k:02d}"
        out.mkdir()
        args = cli_prompt_args(case, media.size, out)
        code, stdout, stderr = infer(capsys, plain[kind], case.question, *args, "--frames", 4, "--out", out / "result")
        if case.error is not None:
            good = clean_error(code, stdout, stderr) and re.search(case.error, stderr) is not None
        else:
            reply = json.loads((out / "result" / "reply.json").read_text()) if code == 0 else {}
            good = code == 0 and reply.get("regions") == list(range(len(case.prompts)))
        if not good:
            failures.append(f"{case.name}: exit {code}, stderr {stderr!r}")
        tally(f"cli: prompts ({kind})", good)
    assert failures == []


def test_batch_of_every_case_runs_the_good_jobs_after_the_bad(capsys, tmp_path: Path, corpus: list[Case]) -> None:
    jobs = tmp_path / "jobs.jsonl"
    lines = [json.dumps({"media": str(c.path), "question": SEGMENT, "frames": 8}) for c in corpus]
    lines += [json.dumps({"media": str(corpus[0].path), "question": q.text}) for q in QUESTIONS if q.error]
    jobs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = cli.main(["infer", "--batch", str(jobs), "--model", str(TINY), "--out", str(tmp_path / "out")])
    _, stderr = capsys.readouterr()
    expected_ok = [c.ok for c in corpus] + [False] * sum(1 for q in QUESTIONS if q.error)
    replies = [json.loads((tmp_path / "out" / f"job_{k:03d}" / "reply.json").read_text()) for k in range(len(lines))]
    assert code == 2
    assert ["error" not in r for r in replies] == expected_ok
    assert stderr.count("\n") == expected_ok.count(False) and "Traceback" not in stderr
    assert all(r["error"] and "\n" not in r["error"] for r in replies if "error" in r)
    tally("cli: batch jobs", True)
