"""The platform link's OS naming: measured beats claimed, claims never pass, dev images refused."""

from __future__ import annotations

import pytest

from oauth3.attestation.dstack_os import a_dev_release, os_releases
from oauth3.verifier.platform_identity import PlatformMismatch, check_os, identify_os
from oauth3.verifier.policy import Policy


def production_release_hash() -> bytes:
    return next(h for h, r in os_releases().items() if not r.dev)


def test_every_table_entry_names_its_source_and_a_32_byte_hash() -> None:
    releases = list(os_releases().values())
    assert len(releases) >= 20
    assert {r.dev for r in releases} == {True, False}
    for release in releases:
        assert len(release.os_image_hash) == 32
        assert release.source
        assert (release.mrtd is None) == (release.mrtd_source is None)
        assert release.mrtd is None or len(release.mrtd) == 48


def test_the_measured_os_image_hash_wins_and_a_contradicting_claim_fails() -> None:
    measured = production_release_hash()
    named = identify_os(measured, {"os_image_hash": measured.hex()})
    assert named.named_from == "measured in RTMR3"
    assert named.release is not None
    assert not named.release.dev
    with pytest.raises(PlatformMismatch, match="describes an OS it did not boot"):
        identify_os(measured, {"os_image_hash": a_dev_release().os_image_hash.hex()})


def test_only_a_measured_os_is_named_without_a_caveat() -> None:
    production = production_release_hash()
    measured = identify_os(production, None)
    assert measured.measured
    assert "rests on" not in measured.describe()
    claimed = identify_os(None, {"os_image_hash": production.hex()})
    assert not claimed.measured
    assert claimed.describe().endswith(
        "(host-supplied vm_config, not measured); "
        "which image booted, dev or production, rests on the RTMR0-2 pins"
    )
    assert "rests on the RTMR0-2 pins" in identify_os(None, None).describe()


def test_a_claimed_dev_image_is_refused_unless_allowed() -> None:
    claimed = identify_os(None, {"os_image_hash": a_dev_release().os_image_hash.hex()})
    assert claimed.named_from == "host-supplied vm_config"
    with pytest.raises(PlatformMismatch, match="dev images allow root login"):
        check_os(claimed, Policy())
    check_os(claimed, Policy(allow_dev_os=True))


@pytest.mark.parametrize("vm_config", [None, {}, {"os_image_hash": 5}, {"os_image_hash": "zz"}])
def test_unreadable_claims_name_nothing(vm_config: dict[str, object] | None) -> None:
    named = identify_os(None, vm_config)
    assert named.release is None
    assert named.os_image_hash is None
    check_os(named, Policy())
