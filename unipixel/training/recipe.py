"""``training_args.json``: the record of how a checkpoint was trained, kept beside it."""
from __future__ import annotations

import json
from pathlib import Path

RECIPE_FILE = "training_args.json"
STAGE_SUFFIX = "_stage"
"""A stage that trains one part alone (``vision.py``, ``codes.py``) records itself under ``<name>_stage``."""


def record_stage(init: str | Path, out: str | Path, name: str, record: dict) -> None:
    """Write ``out``'s recipe: ``init``'s, plus ``record`` under ``<name>_stage``."""
    recipe = json.loads((Path(init) / RECIPE_FILE).read_text())
    recipe[name + STAGE_SUFFIX] = record
    (Path(out) / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")


def stages(checkpoint: str | Path) -> dict:
    """The ``<name>_stage`` records in ``checkpoint``'s recipe (none when it has no recipe)."""
    path = Path(checkpoint) / RECIPE_FILE
    recipe = json.loads(path.read_text()) if path.exists() else {}
    return {key: value for key, value in recipe.items() if key.endswith(STAGE_SUFFIX)}
