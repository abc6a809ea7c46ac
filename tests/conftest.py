"""Shared fixtures: where the golden vectors live (read in place, never copied)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes import Harness, short_socket_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
VECTORS_ENV = "OAUTH3_VECTORS"


def vectors_dir() -> Path:
    """The vectors folder: $OAUTH3_VECTORS, else ../shared/vectors beside the checkout."""
    return Path(os.environ.get(VECTORS_ENV, REPO_ROOT.parent / "shared" / "vectors"))


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The golden vectors folder; tests that need it skip, saying why, when it is absent."""
    path = vectors_dir()
    if not path.is_dir():
        pytest.skip(f"golden vectors not found at {path} (set {VECTORS_ENV} to their folder)")
    return path


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    """A fake agent and a real sidecar app on unix sockets, for in-process service tests."""
    started = Harness(short_socket_dir())
    await started.start()
    yield started
    await started.close()
