"""The role images CI built (deploy/images.sh --export): each holds its role and nothing else.

Needs the docker-archives in $OAUTH3_E2E_IMAGES (the e2e stage builds them); part of `make e2e`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.images import ALLOWED, missing, read_image, unexpected

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def archives() -> Path:
    folder = os.environ.get("OAUTH3_E2E_IMAGES")
    if not folder:
        pytest.fail(
            "OAUTH3_E2E_IMAGES names no folder of image archives (deploy/images.sh --export)"
        )
    return Path(folder)


@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_each_image_holds_its_role_and_nothing_else(archives: Path, role: str) -> None:
    contents = read_image(archives / f"oauth3-{role}.tar")
    assert unexpected(role, contents) == []
    assert missing(role, contents) == []
    assert contents.command == [f"oauth3-{role}"]
