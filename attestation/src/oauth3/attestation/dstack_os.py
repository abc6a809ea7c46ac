"""Published dstack guest OS images: os_image_hash -> name, dev or not, MRTD, measurement document.

The table (`dstack_os_releases.json`) is data read from public release pages and named sources,
one source per value. It names an OS and flags dev images; it vouches for a platform only where
a published MRTD matches the quote, and even then RTMR0-2 still need the relying party's pins.
`measurement_document` says whether the image ships `measurement.tdx.cbor` (None: no source says).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

RELEASES_FILE = "dstack_os_releases.json"


@dataclass(frozen=True, slots=True)
class OsRelease:
    """One published dstack guest OS image and where each fact about it was read."""

    image: str
    version: str
    dev: bool
    os_image_hash: bytes
    source: str
    mrtd: bytes | None = None
    mrtd_source: str | None = None
    mrtd_candidate: str | None = None
    measurement_document: bool | None = None
    measurement_document_source: str | None = None

    @property
    def label(self) -> str:
        """E.g. `dstack-0.5.16 (production)`."""
        return f"{self.image} ({'dev image' if self.dev else 'production'})"


@functools.cache
def os_releases() -> Mapping[bytes, OsRelease]:
    """The shipped table, by os_image_hash."""
    document = json.loads(resources.files(__package__).joinpath(RELEASES_FILE).read_bytes())
    table: dict[bytes, OsRelease] = {}
    for entry in document["releases"]:
        mrtd = entry.get("mrtd")
        release = OsRelease(
            image=entry["image"],
            version=entry["version"],
            dev=bool(entry["dev"]),
            os_image_hash=bytes.fromhex(entry["os_image_hash"]),
            source=entry["os_image_hash_source"],
            mrtd=bytes.fromhex(mrtd) if mrtd else None,
            mrtd_source=entry.get("mrtd_source"),
            mrtd_candidate=entry.get("mrtd_candidate"),
            measurement_document=entry.get("measurement_document"),
            measurement_document_source=entry.get("measurement_document_source"),
        )
        table[release.os_image_hash] = release
    return table


def release_for(os_image_hash: bytes) -> OsRelease | None:
    """The published image with this os_image_hash, or None."""
    return os_releases().get(os_image_hash)


def a_dev_release() -> OsRelease:
    """Some published dev image (the simulator plays one for the dev-OS attack)."""
    return next(r for r in os_releases().values() if r.dev)
