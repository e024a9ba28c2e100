"""The limits live in one place (``unipixel.limits``), documented there, and the rest of the code uses them."""
from __future__ import annotations

import ast
import re

from tests.conftest import REPO
from unipixel import limits
from unipixel.processing import media

USERS = [REPO / "app.py", *(REPO / "unipixel" / name for name in ("ui.py", "session.py", "cli.py")),
         REPO / "unipixel" / "processing" / "media.py"]
LIMIT_NAME = re.compile(r"^(MAX|MIN)_|_(LIMIT|TTL|TTL_S|CAP)$")


def constants() -> list[str]:
    return [n for n, v in vars(limits).items() if n.isupper() and not n.startswith("_") and isinstance(v, (int, float))]


def test_every_limit_is_documented_in_the_table() -> None:
    table = limits.__doc__
    missing = [name for name in constants() if f"``{name}``" not in table]
    assert constants() and missing == []


def test_media_uses_the_limits_module() -> None:
    for name in ("MAX_IMAGE_PIXELS", "MAX_VIDEO_FRAME_PIXELS", "MAX_VIDEO_SECONDS", "MAX_FRAMES", "MAX_ITER_FRAMES"):
        assert getattr(media, name) == getattr(limits, name)
    assert "MAX_IMAGE_PIXELS = " not in (REPO / "unipixel" / "processing" / "media.py").read_text()


def test_no_limit_is_defined_elsewhere() -> None:
    """No module defines its own MAX_* (etc.) number, and the app's launch/queue/state settings are not literals
    (``1`` aside: one model call at a time)."""
    bad = []
    settings = {"max_size", "max_file_size", "time_to_live", "delete_cache", "concurrency_limit",
                "default_concurrency_limit", "max_frames", "max_frames_cap", "keep"}
    for path in USERS:
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and LIMIT_NAME.search(t.id) for t in node.targets):
                if not ast.unparse(node.value).startswith("limits."):  # an alias of a limit is fine
                    bad.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg in settings:
                literal = not any(isinstance(n, (ast.Name, ast.Attribute, ast.Call)) for n in ast.walk(node.value))
                if literal and ast.unparse(node.value) != "1":
                    bad.append(f"{path.name}:{node.value.lineno} {node.arg}={ast.unparse(node.value)}")
    assert bad == [], bad
