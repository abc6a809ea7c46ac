"""The simulator's mock-platform options that a TCB policy must handle, read from flags and env."""

from __future__ import annotations

from datetime import timedelta

import pytest

from oauth3.runtime.cli import OneLineParser
from oauth3.runtime.env_settings import ConfigError
from oauth3.simulator.settings import SimulatorSettings, from_args, parser


def settings(argv: list[str], env: dict[str, str] | None = None) -> SimulatorSettings:
    args = parser("oauth3-simulator", OneLineParser).parse_args(["--socket", "/tmp/x.sock", *argv])
    return from_args(args, env or {})


def test_defaults_are_an_up_to_date_platform() -> None:
    dcap = settings([]).dcap
    assert dcap.tcb_status == "UpToDate"
    assert dcap.advisory_ids == ()
    assert not dcap.revoked_pck
    assert dcap.validity == timedelta(days=30)


def test_flags() -> None:
    dcap = settings(
        [
            "--tcb-status",
            "OutOfDate",
            "--advisory-ids",
            "INTEL-SA-00837,INTEL-SA-00960",
            "--revoked-pck",
            "--collateral-validity-s",
            "60",
        ]
    ).dcap
    assert dcap.tcb_status == "OutOfDate"
    assert dcap.advisory_ids == ("INTEL-SA-00837", "INTEL-SA-00960")
    assert dcap.revoked_pck
    assert dcap.validity == timedelta(seconds=60)


def test_environment() -> None:
    env = {"OAUTH3_SIM_TCB_STATUS": "SWHardeningNeeded", "OAUTH3_SIM_REVOKED_PCK": "true"}
    dcap = settings([], env).dcap
    assert dcap.tcb_status == "SWHardeningNeeded"
    assert dcap.revoked_pck


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OAUTH3_SIM_TCB_STATUS": "Fine"}, "OAUTH3_SIM_TCB_STATUS must be one of"),
        ({"OAUTH3_SIM_REVOKED_PCK": "maybe"}, "OAUTH3_SIM_REVOKED_PCK must be 1 or 0"),
        (
            {"OAUTH3_SIM_COLLATERAL_VALIDITY_S": "soon"},
            "OAUTH3_SIM_COLLATERAL_VALIDITY_S must be a number",
        ),
        ({"OAUTH3_SIM_COLLATERAL_VALIDITY_S": "0"}, "must be between 1 and"),
    ],
)
def test_invalid_values_are_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings([], env)
