"""Intel's TCB status names, as DCAP collateral and dcap-qvl spell them."""

from __future__ import annotations

from typing import Literal, get_args

TcbStatus = Literal[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
]
TCB_STATUSES: tuple[str, ...] = get_args(TcbStatus)
