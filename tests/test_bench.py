"""The benchmark suite: a ``--quick`` run on the golden tiny checkpoint writes the JSON schema with sane numbers."""
from __future__ import annotations

import json
import math

import pytest
import torch

from unipixel import bench

requires_tiny = pytest.mark.skipif(
    not (bench.GOLDEN_TINY / "config.json").exists(), reason=f"golden tiny checkpoint not found at {bench.GOLDEN_TINY}"
)


@requires_tiny
def test_quick_run_writes_every_scenario(tmp_path, capsys):
    path = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:  # one thread: the numbers are not the point here, and a busy machine then costs least
        status = bench.main(["--model", str(bench.GOLDEN_TINY), "--quick", "--no-3b", "--threads", "1", "--json", str(path)])
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    document = json.loads(path.read_text())
    assert {"machine", "model", "plan", "questions", "scenarios", "targets"} <= set(document)
    assert document["machine"]["torch_threads"] == 1 and document["machine"]["cpu_cores"] >= 1
    scenarios = document["scenarios"]
    expected = set(bench.REQUIRED) | {f"sam2_track_frames_{n}" for n in bench.QUICK.frames}
    expected |= {f"sam2_track_objects_{n}" for n in bench.QUICK.objects} | {f"sam2_encode_frames_{max(bench.QUICK.frames)}"}
    assert expected <= set(scenarios)
    for name, result in scenarios.items():
        assert "error" not in result, (name, result)
        if "skipped" in result:  # only the app may be missing; the tiny model always grounds an object
            assert name == "app_ready" and result["skipped"], result
            continue
        assert result["runs"] >= 1, name
        assert 0 < result["min_s"] <= result["median_s"] <= result["max_s"] < 600, (name, result)
        assert result["peak_rss_mb"] > 0 and result["cpu_s"] >= 0, name
        assert all(math.isfinite(v) and v >= 0 for v in result.get("stages", {}).values()), (name, result["stages"])
    for name in ("image_turn", "video16_turn", "followup_turn"):
        turn = scenarios[name]
        assert set(turn["stages"]) >= {"preprocess_s", "llm_prefill_s", "generation_s", "mask_track_s", "render_s"}
        assert turn["new_tokens"] >= 1 and turn["decode_tokens_per_second"] > 0, turn
    assert scenarios["image_turn"]["stages"]["vision_encoder_s"] > 0
    assert scenarios["followup_turn"]["stages"]["vision_encoder_s"] == 0  # cached from the first turn
    assert scenarios["followup_turn"]["ratio_to_first"] > 0
    assert scenarios["video16_turn"]["frames"] == 16
    assert scenarios["dense_track_fps"]["fps"] > 0 and scenarios["dense_track_fps"]["frames"] == bench.QUICK.clip_length
    assert scenarios["sam2_track_objects_2"]["growth_vs_linear"] > 0
    assert {t["target"] for t in document["targets"]} >= {"image turn end to end <= 1.0 s", "16-frame video turn <= 3 s"}
    report = capsys.readouterr().out
    assert "image_turn" in report and "stage (median)" in report


def test_targets_compare_each_device_with_its_own_goals():
    scenarios = {"image_turn": {"median_s": 0.5}, "followup_turn": {"median_s": 0.2, "ratio_to_first": 0.4},
                 "3b_dense_track_fps": {"median_s": 2.0, "fps": 30.0}}
    cpu = {t["target"]: t for t in bench.evaluate_targets(scenarios, "cpu")}
    assert cpu["image turn end to end <= 1.0 s"]["met"] and cpu["image turn end to end <= 1.0 s"]["ratio"] == 0.5
    assert not cpu["follow-up <= 35 % of the first turn"]["met"]
    assert not any(t.startswith("3B") for t in cpu)
    gpu = bench.evaluate_targets(scenarios, "cuda")
    assert [t["target"] for t in gpu] == ["3B dense tracking >= 25 frames/s at 768 px"] and gpu[0]["met"]
