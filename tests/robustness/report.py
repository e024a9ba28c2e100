"""A tally of the inputs tried and passed on each path (printed at the end of the run by the conftest)."""
from __future__ import annotations

from collections import defaultdict

#: path -> [tried, passed]
TALLY: dict[str, list[int]] = defaultdict(lambda: [0, 0])


def tally(path: str, passed: bool) -> None:
    TALLY[path][0] += 1
    TALLY[path][1] += bool(passed)
