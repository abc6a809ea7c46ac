"""The image-content check itself: it reads real docker-archive layouts and catches a forbidden
distribution, an oauth3 package of another role, pip, root, or a commit baked where it must not be.
(The built images are checked against it in tests/test_images.py, on a Docker engine in CI.)"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from tests.images import ALLOWED, PACKAGES, SITE, ImageContents, missing, read_image, unexpected


def _tar(members: dict[str, bytes | None]) -> bytes:
    """A tar of files (bytes) and directories (None)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _dist(name: str) -> dict[str, bytes | None]:
    folder = f"{SITE}{name.replace('-', '_')}-1.0.dist-info/"
    return {folder + "METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode()}


def docker_archive(path: Path, layers: list[dict[str, bytes | None]], user: str) -> Path:
    """A minimal docker-archive: manifest.json, a config, one tar per layer."""
    config = {"config": {"User": user, "Cmd": ["oauth3-sidecar"], "Env": ["PATH=/x"]}}
    files: dict[str, bytes | None] = {
        "config.json": json.dumps(config).encode(),
        "manifest.json": json.dumps(
            [{"Config": "config.json", "Layers": [f"l{i}.tar" for i in range(len(layers))]}]
        ).encode(),
    }
    files.update({f"l{i}.tar": _tar(layer) for i, layer in enumerate(layers)})
    path.write_bytes(_tar(files))
    return path


def clean(role: str) -> ImageContents:
    return ImageContents(
        distributions=ALLOWED[role],
        oauth3_packages=PACKAGES[role],
        user="10001:10001",
        command=[f"oauth3-{role}"],
        environment=("PATH=/opt/oauth3/bin",),
        pip_present=False,
    )


@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_a_clean_image_passes(role: str) -> None:
    assert unexpected(role, clean(role)) == []
    assert missing(role, clean(role)) == []


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ({"distributions": ALLOWED["sidecar"] | {"dcap-qvl"}}, "distribution dcap-qvl"),
        ({"distributions": ALLOWED["sidecar"] | {"cryptography"}}, "distribution cryptography"),
        ({"distributions": ALLOWED["sidecar"] | {"oauth3-simulator"}}, "oauth3-simulator"),
        ({"oauth3_packages": PACKAGES["sidecar"] | {"simulator"}}, "package oauth3.simulator"),
        ({"oauth3_packages": PACKAGES["sidecar"] | {"verifier"}}, "package oauth3.verifier"),
        ({"pip_present": True}, "pip"),
        ({"user": "0:0"}, "runs as 0:0"),
        ({"user": None}, "runs as root"),
        ({"environment": ('OAUTH3_BUILD_INFO={"git_commit":"abc"}',)}, "commit baked"),
    ],
)
def test_the_sidecar_check_catches_what_does_not_belong(
    change: dict[str, object], found: str
) -> None:
    problems = unexpected("sidecar", replace(clean("sidecar"), **change))  # type: ignore[arg-type]
    assert any(found in p for p in problems), problems


def test_the_service_may_name_its_commit_and_needs_its_distribution() -> None:
    baked = replace(clean("service"), environment=('OAUTH3_BUILD_INFO={"git_commit":"abc"}',))
    assert unexpected("service", baked) == []
    without = replace(clean("service"), distributions=ALLOWED["service"] - {"oauth3-service"})
    assert missing("service", without) == ["oauth3-service"]


def test_read_image_applies_layers_and_whiteouts(tmp_path: Path) -> None:
    first = {
        **_dist("aiohttp"),
        **_dist("oauth3-sidecar"),
        **_dist("pip"),
        f"{SITE}pip/": None,
        f"{SITE}pip/__init__.py": b"",
        f"{SITE}oauth3/sidecar/app.py": b"",
        f"{SITE}oauth3/simulator/app.py": b"",
    }
    # a later layer deletes pip and the simulator package (whiteouts) and adds cryptography
    second = {
        f"{SITE}.wh.pip": b"",
        f"{SITE}.wh.pip-1.0.dist-info": b"",
        f"{SITE}oauth3/.wh.simulator": b"",
        **_dist("cryptography"),
    }
    contents = read_image(docker_archive(tmp_path / "i.tar", [first, second], "10001:10001"))
    assert contents.distributions == {"aiohttp", "oauth3-sidecar", "cryptography"}
    assert contents.oauth3_packages == {"sidecar"}
    assert not contents.pip_present
    assert contents.user == "10001:10001"
    assert unexpected("sidecar", contents) == ["distribution cryptography"]
