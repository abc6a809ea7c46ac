"""The official dstack-sdk client against the real `oauth3-simulator` process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from dstack_sdk import AsyncDstackClient, GetQuoteResponse, InfoResponse
from dstack_sdk.dstack_client import TcbInfoV05x

from oauth3.attestation import compare_with_quote, parse_event_log, parse_quote

from .test_simulator import simulator_process, sock_dir

__all__ = ["sock_dir"]


@pytest.mark.parametrize("fmt", ["full", "stripped"])
async def test_official_async_client_quotes_and_reads_info(sock_dir: Path, fmt: str) -> None:
    sock = sock_dir / "dstack.sock"
    with simulator_process(sock, "--event-log", fmt, "--seed", "sdk"):
        client = AsyncDstackClient(endpoint=str(sock))
        async with client:
            quoted = await client.get_quote(b"oauth3 sdk check")
            info = await client.info()
            version = await client.version()
    assert isinstance(quoted, GetQuoteResponse)
    assert isinstance(info, InfoResponse)
    quote = parse_quote(quoted.decode_quote())
    assert quote.report.report_data == b"oauth3 sdk check".ljust(64, b"\0")
    assert bytes.fromhex(quoted.report_data) == quote.report.report_data
    events = parse_event_log(quoted.event_log)
    assert all(compare_with_quote(events, quote.report.rtmr).matches)
    assert len(quoted.decode_event_log()) == len(events)
    tcb = info.tcb_info
    assert isinstance(tcb, TcbInfoV05x)
    assert tcb.mrtd == quote.report.mr_td.hex()
    assert [tcb.rtmr0, tcb.rtmr1, tcb.rtmr2, tcb.rtmr3] == [r.hex() for r in quote.report.rtmr]
    assert hashlib.sha256(tcb.app_compose.encode()).hexdigest() == info.compose_hash
    assert tcb.compose_hash == info.compose_hash
    assert info.app_id == info.compose_hash[:40]
    assert info.app_name == json.loads(tcb.app_compose)["name"]
    assert len(tcb.event_log) == len(events)
    assert version.version.endswith("-simulator")
    if fmt == "full":
        # the SDK replays digests only, which is right for the full format
        assert quoted.replay_rtmrs()[3] == quote.report.rtmr[3].hex()
