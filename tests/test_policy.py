"""The relying party's policy file: strict parsing, written and read back, merged with flags."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauth3.verifier.cli import run
from oauth3.verifier.output import json_text, printable
from oauth3.verifier.policy import (
    KEY_PROVIDER_IDS,
    KeyProvider,
    PlatformPin,
    Policy,
    PolicyError,
    key_provider_pin,
    measured_key_provider,
    merge,
    parse_policy,
    render_policy,
)

H32, H48 = "ab" * 32, "cd" * 48
GOOD = f"""
format = 1
[app]
compose_hashes = ["{H32}"]
[[platform]]
mrtd = "{H48}"
rtmr0 = "{H48}"
rtmr1 = "{H48}"
rtmr2 = "{H48}"
xfam = "e702060000000000"
[tcb]
allowed_statuses = ["UpToDate", "SWHardeningNeeded"]
allowed_advisories = ["INTEL-SA-00615"]
min_evaluation_data_number = 17
"""


def test_a_good_policy_reads_as_written() -> None:
    policy = parse_policy(GOOD, "policy p")
    assert policy.compose_hashes == {bytes.fromhex(H32)}
    assert policy.app_ids == frozenset()
    (pin,) = policy.platforms
    assert pin.missing == []
    assert set(pin.values) == {"mrtd", "rtmr0", "rtmr1", "rtmr2", "xfam"}
    assert policy.allowed_tcb == {"UpToDate", "SWHardeningNeeded"}
    assert policy.allowed_advisories == {"INTEL-SA-00615"}
    assert policy.min_tcb_evaluation == 17
    assert policy.simulated_root_sha256 is None
    assert not policy.allow_dev_os


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("format = 2", "format must be 1"),
        ("format = 1\ncompose_hash = 1", "unknown key 'compose_hash'"),
        ("format = 1\n[app]\ncompose_hash = []", r"\[app\]: unknown key 'compose_hash'"),
        ('format = 1\n[app]\ncompose_hashes = ["abcd"]', "must be 32 bytes"),
        ('format = 1\n[app]\ncompose_hashes = ["xyz"]', "not hex"),
        ('format = 1\n[app]\ncompose_hashes = "ab"', "must be a list"),
        (f'format = 1\n[[platform]]\nmrtd = "{H48}"', "lacks RTMR0, RTMR1, RTMR2"),
        (f'format = 1\n[[platform]]\nmrtd = "{H32}"', "must be 48 bytes"),
        ('format = 1\n[tcb]\nallowed_statuses = ["Fine"]', "'Fine' is not a TCB status"),
        ("format = 1\n[os]\nallow_dev = 1", "true or false"),
        ('format = 1\n[tcb]\nmin_evaluation_data_number = "17"', "must be an integer"),
        ("format = 1\n[simulated]\nroot_ca_sha256 = 5", "hex string"),
        ("not toml = = 1", "not TOML"),
        ('format = 1\n[app]\nkey_providers = "kms:00"', "must be a list"),
        ("format = 1\n[app]\nkey_providers = [1]", r"key_providers\[0\] must be a string"),
        ('format = 1\n[app]\nkey_providers = ["kms"]', "NAME:HEX with NAME one of"),
        ('format = 1\n[app]\nkey_providers = ["vault:00"]', "NAME:HEX with NAME one of"),
        ('format = 1\n[app]\nkey_providers = ["KMS:00"]', "NAME:HEX with NAME one of"),
        ('format = 1\n[app]\nkey_providers = ["kms:"]', "kms needs an id"),
        ('format = 1\n[app]\nkey_providers = ["kms:0x00"]', "is not hex"),
        ('format = 1\n[app]\nkey_providers = ["kms:abc"]', "is not hex"),
        ('format = 1\n[app]\nkey_providers = ["kms: 00"]', "is not hex"),
        ('format = 1\n[app]\nkey_providers = ["none:00"]', "none has no id"),
    ],
)
def test_a_bad_policy_names_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(text, "policy p")


def test_render_reads_back_the_same_policy_and_escapes_names() -> None:
    pin = PlatformPin(
        name='from "x"\n\x1b',
        values={k: bytes(48) for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2")},
    )
    policy = Policy(
        compose_hashes=frozenset([bytes(32), bytes([1]) * 32]),
        app_ids=frozenset([bytes(20)]),
        key_providers=frozenset([KeyProvider("kms", bytes(range(91))), KeyProvider("none")]),
        platforms=(pin,),
        allowed_advisories=frozenset(["INTEL-SA-1"]),
        min_tcb_evaluation=16,
        simulated_root_sha256=bytes([9]) * 32,
        source="policy p",
    )
    text = render_policy(policy, "test\nwith a newline", {"mrseam": bytes(48)})
    assert "\x1b" not in text
    assert '# mrseam = "' in text
    assert parse_policy(text, "policy p") == policy


def test_flags_widen_allow_lists_but_never_pin_twice() -> None:
    base = parse_policy(GOOD, "policy p")
    widened = merge(base, allowed_tcb=frozenset({"OutOfDate"}), allow_dev_os=True)
    assert widened.allowed_tcb == {"UpToDate", "SWHardeningNeeded", "OutOfDate"}
    assert widened.allow_dev_os
    with pytest.raises(PolicyError, match="pinned both in policy p and by a flag"):
        merge(base, compose_hashes=frozenset([bytes(32)]))
    assert merge(base, app_ids=frozenset([bytes(20)])).app_ids == {bytes(20)}
    assert merge(base, min_tcb_evaluation=15).min_tcb_evaluation == 17
    assert merge(base, min_tcb_evaluation=19).min_tcb_evaluation == 19


def test_cli_refuses_a_bad_policy_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.toml"
    path.write_text("format = 1\n[app]\ncompose_hash = []\n")
    assert run(["--dstack-quote", "q.hex", "--policy", str(path)], io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown key 'compose_hash'" in err


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=12,
    )
)
def test_json_output_always_parses_and_round_trips_strings(value: object) -> None:
    text = json_text({"value": value})
    parsed = json.loads(text)
    assert set(parsed) == {"value"}
    assert all(ord(c) < 0x80 or printable(c) == c for c in text)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_printable_leaves_nothing_a_terminal_acts_on(text: str) -> None:
    shown = printable(text)
    assert all(c.isprintable() or c == " " for c in shown)
    assert "\x1b" not in shown


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(KEY_PROVIDER_IDS)), st.binary(min_size=1, max_size=96))
def test_a_key_provider_pin_matches_exactly_the_payload_dstack_measures(
    name: str, provider_id: bytes
) -> None:
    pinned = key_provider_pin(
        f"{name}:{provider_id.hex().upper()}" if KEY_PROVIDER_IDS[name] else f"{name}:", "pin"
    )
    payload = json.dumps({"name": name, "id": pinned.provider_id.hex()}, separators=(",", ":"))
    assert pinned.payload == payload.encode()
    assert measured_key_provider(payload.encode()) == pinned
    assert key_provider_pin(str(pinned), "pin") == pinned


@pytest.mark.parametrize(
    "payload",
    [
        None,
        b"",
        b"not json",
        b"[]",
        b'{"name":"kms"}',
        b'{"name": "kms", "id": "00"}',  # not dstack's serialisation
        b'{"id":"00","name":"kms"}',
        b'{"name":"kms","id":"00","extra":1}',
        b'{"name":"kms","id":"00","id":"01"}',
        b'{"name":"kms","id":"0A"}',
        b'{"name":"kms","id":0}',
        b'{"name":"vault","id":"00"}',
        b'{"name":"none","id":"00"}',
    ],
)
def test_a_measured_key_provider_other_than_dstacks_bytes_matches_no_pin(
    payload: bytes | None,
) -> None:
    assert measured_key_provider(payload) is None


def test_cli_refuses_a_malformed_key_provider_flag_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = run(["--dstack-quote", "q.hex", "--expect-key-provider", "kms:zz"], io.StringIO())
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--expect-key-provider: the id after kms: is not hex" in err
