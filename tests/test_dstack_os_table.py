"""The shipped OS release table: every extended field is sourced and consistent."""

from __future__ import annotations

import json
from importlib import resources

from oauth3.attestation.dstack_os import RELEASES_FILE, os_releases, release_for

MKOSI_RELEASE_PAGE = "/dstack/releases/tag/mkosi-os-v"


def test_measurement_document_flags_carry_a_source_and_follow_the_build_system() -> None:
    releases = list(os_releases().values())
    for release in releases:
        assert (release.measurement_document is None) == (
            release.measurement_document_source is None
        ), release.image
        if MKOSI_RELEASE_PAGE in release.source:
            assert release.measurement_document is True, release.image
    flagged = {r.measurement_document for r in releases}
    assert flagged == {True, False, None}


def test_mrtd_candidates_name_a_page_add_order_only_beside_a_published_mrtd() -> None:
    for release in os_releases().values():
        if release.mrtd_candidate is not None:
            assert release.mrtd is not None, release.image
            assert release.mrtd_candidate in {"single_pass", "two_pass"}
    dstack_065 = release_for(
        bytes.fromhex("4771a29e03e93f0e2d5e37174cd8bb1112942c9689deb36b16c5df9e183d8623")
    )
    assert dstack_065 is not None
    assert dstack_065.mrtd_candidate == "single_pass"
    assert dstack_065.measurement_document is True


def test_the_table_lists_each_os_image_hash_once() -> None:
    package = "oauth3.attestation"
    document = json.loads(resources.files(package).joinpath(RELEASES_FILE).read_bytes())
    hashes = [entry["os_image_hash"] for entry in document["releases"]]
    assert len(hashes) == len(set(hashes)) == len(os_releases())
