"""Shared fixtures: the real-quote vectors kept in the repo, the fake-agent harness; and the
rule that a run with a skipped test fails (nothing here may skip to get green)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes import Harness, short_socket_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
VECTORS = Path(__file__).resolve().parent / "vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The public test vectors copied into tests/vectors (sources and licences in its NOTICE)."""
    return VECTORS


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test fails the run: every test here must run on a fresh clone."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line(f"FAILED: {skipped} test(s) skipped; none may skip", red=True)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    """A fake agent and a real sidecar app on unix sockets, for in-process service tests."""
    started = Harness(short_socket_dir())
    await started.start()
    yield started
    await started.close()
