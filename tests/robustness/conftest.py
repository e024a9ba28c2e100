"""Shared fixtures of the robustness tests: the corpus (built once), the golden tiny model (loaded once), one
torch thread (the tests run next to other work on 2 shared cores, where a second thread only adds contention),
and a tally of the inputs tried and passed on each path, printed at the end of the run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import GOLDEN
from tests.robustness.corpus import Case, build_corpus, plain_media
from tests.robustness.report import TALLY

TINY = GOLDEN / "checkpoints" / "tiny-tied"


def pytest_terminal_summary(terminalreporter) -> None:
    if TALLY:
        terminalreporter.section("robustness: inputs tried / passed per path")
        for path, (tried, passed) in sorted(TALLY.items()):
            terminalreporter.write_line(f"{path:38s} {passed:4d} / {tried:4d}")
        total = [sum(v[i] for v in TALLY.values()) for i in (0, 1)]
        terminalreporter.write_line(f"{'total':38s} {total[1]:4d} / {total[0]:4d}")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A plain image (160×120) and a plain video (12 frames of 160×120) for the question and prompt cases."""
    return plain_media(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def engine():
    if not (TINY / "config.json").exists():
        pytest.skip(f"golden tiny checkpoint not found at {TINY}")
    from unipixel.engine import load_engine

    return load_engine(str(TINY))
