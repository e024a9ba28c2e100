"""Shared fixtures: where the golden fixtures live, and how to skip when they are absent."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UNIPIXEL_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
MANIFESTS = SHARED / "manifests"


def golden_cases() -> dict:
    """The golden case index (empty when the fixtures are absent)."""
    index = GOLDEN / "cases.json"
    return json.loads(index.read_text())["cases"] if index.exists() else {}


requires_golden = pytest.mark.skipif(
    not (GOLDEN / "cases.json").exists(), reason=f"golden fixtures not found at {GOLDEN}"
)
requires_manifests = pytest.mark.skipif(
    not MANIFESTS.exists(), reason=f"checkpoint manifests not found at {MANIFESTS}"
)
