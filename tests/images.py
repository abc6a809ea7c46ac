"""What a role image holds, read from its docker-archive without an engine, and what it may hold.

`read_image` lists the Python distributions installed in the image's venv and the oauth3 packages
on disk (layers applied in order, whiteouts honoured); `unexpected` compares that with the role's
allow-list, written out by hand here so that a new dependency is a visible, reviewed change.
"""

from __future__ import annotations

import email.parser
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SITE = "opt/oauth3/lib/python3.11/site-packages/"
AIOHTTP = {
    "aiohappyeyeballs",
    "aiohttp",
    "aiosignal",
    "attrs",
    "frozenlist",
    "idna",
    "multidict",
    "propcache",
    "typing-extensions",
    "yarl",
}
RUNTIME = {*AIOHTTP, "oauth3-runtime", "orjson", "prometheus-client", "structlog"}
ALLOWED: Mapping[str, frozenset[str]] = {
    "sidecar": frozenset({*RUNTIME, "oauth3-sidecar"}),
    "service": frozenset({*RUNTIME, "oauth3-service", "oauth3-attestation"}),
    "simulator": frozenset(
        {*RUNTIME, "oauth3-simulator", "oauth3-attestation", "cryptography", "cffi", "pycparser"}
    ),
}
PACKAGES: Mapping[str, frozenset[str]] = {
    "sidecar": frozenset({"sidecar", "runtime"}),
    "service": frozenset({"service", "runtime", "attestation"}),
    "simulator": frozenset({"simulator", "runtime", "attestation"}),
}


@dataclass(frozen=True, slots=True)
class ImageContents:
    """An image's installed distributions (normalised names), oauth3 packages and config."""

    distributions: frozenset[str]
    oauth3_packages: frozenset[str]
    user: str | None
    command: list[str] | None
    environment: tuple[str, ...]
    pip_present: bool


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_image(archive: Path) -> ImageContents:
    """Read a docker-archive (`buildah push IMAGE docker-archive:FILE`)."""
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        config = json.load(outer.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        present: set[str] = set()
        metadata: dict[str, bytes] = {}
        for layer in manifest["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(layer)) as files:
                for member in files:
                    name = member.name.removeprefix("./")
                    base = name.rsplit("/", 1)[-1]
                    if base.startswith(".wh."):  # a later layer deleted this path
                        gone = name[: -len(base)] + base[4:]
                        present = {p for p in present if p != gone and not p.startswith(gone + "/")}
                        metadata = {p: d for p, d in metadata.items() if not p.startswith(gone)}
                        continue
                    present.add(name.rstrip("/"))
                    if name.startswith(SITE) and name.endswith(".dist-info/METADATA"):
                        handle = files.extractfile(member)
                        metadata[name] = handle.read() if handle is not None else b""
    names = {
        _canonical(email.parser.BytesParser().parsebytes(data, headersonly=True)["Name"])
        for data in metadata.values()
    }
    packages = {
        path.removeprefix(SITE + "oauth3/").split("/")[0]
        for path in present
        if path.startswith(SITE + "oauth3/") and path.count("/") > SITE.count("/") + 1
    }
    settings = config.get("config", {})
    return ImageContents(
        distributions=frozenset(names),
        oauth3_packages=frozenset(packages),
        user=settings.get("User"),
        command=settings.get("Cmd"),
        environment=tuple(settings.get("Env") or ()),
        pip_present=any(p.startswith(SITE + "pip/") for p in present),
    )


def unexpected(role: str, contents: ImageContents) -> list[str]:
    """Everything in a role's image that its allow-list does not name (empty when clean)."""
    found = [f"distribution {d}" for d in sorted(contents.distributions - ALLOWED[role])]
    found += [f"package oauth3.{p}" for p in sorted(contents.oauth3_packages - PACKAGES[role])]
    if contents.pip_present:
        found.append("pip (an installer in a runtime image)")
    if contents.user is None or contents.user.split(":")[0] in ("", "0", "root"):
        found.append(f"runs as {contents.user or 'root'}")
    if role != "service" and any(
        "GIT_COMMIT" in e or "git_commit" in e for e in contents.environment
    ):
        found.append("the commit baked into the environment (only the service names it)")
    return found


def missing(role: str, contents: ImageContents) -> list[str]:
    """What a role's image must hold but does not."""
    needed = {f"oauth3-{role}", "oauth3-runtime"}
    return sorted(needed - contents.distributions)
