"""RTMR3 under dstack's rules: what the OS measured while booting the app, and what came after.

RTMR3 is extended only with dstack runtime events (type 0x08000001), whose digests are always
recomputed from name and payload. The dstack OS measures its own events first, in a fixed order,
and ends boot with `system-ready`; init scripts, pre-launch scripts, containers and the guest agent
all start after it, so anything later was emitted by the app (EmitEvent, OS 0.5.x) and can never
stand for an OS fact. OS 0.3.x has no system-ready marker and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import EventLogError
from .eventlog import BOOT_DONE_EVENT, RUNTIME_EVENT_TYPE, Event
from .strict_json import StrictJSONError, parse_strict_json

APP_RTMR = 3
# Every event the dstack OS measures into RTMR3 before system-ready, in the order it emits them,
# over the OS versions that end boot with system-ready (0.4.0-dev on): rootfs-hash is 0.4.0-dev
# only; mr-kms (0.4.2 to 0.5.x) and os-image-hash (0.5.1 on) come with KMS and repeat when a KMS
# attempt fails and the next is tried; storage-fs from 0.5.5; init-script-hash (up to five),
# gpu-policy-hash and gpu-attestation from 0.6. Names on one row share a place in the order.
OS_EVENT_ORDER: tuple[tuple[str, ...], ...] = (
    ("system-preparing",),
    ("rootfs-hash",),
    ("app-id",),
    ("compose-hash",),
    ("init-script-hash",),
    ("gpu-policy-hash",),
    ("gpu-attestation",),
    ("instance-id",),
    ("boot-mr-done",),
    ("mr-kms", "os-image-hash"),
    ("key-provider",),
    ("storage-fs",),
    (BOOT_DONE_EVENT,),
)
MAX_REPEATS: Mapping[str, int] = {"init-script-hash": 5, "mr-kms": 8, "os-image-hash": 8}
REQUIRED_OS_EVENTS = (
    "system-preparing",
    "app-id",
    "compose-hash",
    "instance-id",
    "boot-mr-done",
    "key-provider",
)
PAYLOAD_SIZES: Mapping[str, tuple[int, ...]] = {
    "system-preparing": (0,),
    "rootfs-hash": (32,),
    "app-id": (20,),
    "compose-hash": (32,),
    "init-script-hash": (32,),
    "gpu-policy-hash": (32,),
    "instance-id": (0, 20),
    "boot-mr-done": (0,),
    "mr-kms": (32,),
    "os-image-hash": (32,),
    BOOT_DONE_EVENT: (0,),
}
_RANK = {name: rank for rank, names in enumerate(OS_EVENT_ORDER) for name in names}
_ORDER_TEXT = ", ".join("/".join(names) for names in OS_EVENT_ORDER)


@dataclass(frozen=True, slots=True)
class BootRecord:
    """RTMR3 read under dstack's rules: the OS's own events (ending with system-ready), the app's
    later events, and the facts taken only from the OS's events."""

    os_events: tuple[Event, ...]
    app_events: tuple[Event, ...]

    def _payload(self, name: str) -> bytes | None:
        return next((e.event_payload for e in self.os_events if e.event == name), None)

    @property
    def app_id(self) -> bytes:
        """The app id the OS measured (KMS-assigned, or compose_hash[:20] without KMS)."""
        return self._payload("app-id") or b""

    @property
    def compose_hash(self) -> bytes:
        """SHA-256 of the app-compose.json the OS booted."""
        return self._payload("compose-hash") or b""

    @property
    def instance_id(self) -> bytes | None:
        """This instance's id; empty when the app-compose sets no_instance_id."""
        return self._payload("instance-id")

    @property
    def key_provider(self) -> str | None:
        """The key provider JSON (`{"name":"kms"|"local-sgx"|"none","id":…}`), if measured."""
        payload = self._payload("key-provider")
        return payload.decode("utf-8", "replace") if payload is not None else None

    @property
    def key_provider_payload(self) -> bytes | None:
        """The key-provider event's payload, byte for byte, if measured."""
        return self._payload("key-provider")

    @property
    def os_image_hash(self) -> bytes | None:
        """The OS image hash the OS measured (KMS deployments only)."""
        return self._payload("os-image-hash")

    @property
    def names(self) -> list[str]:
        """The OS event names in log order."""
        return [e.event for e in self.os_events]


def _where(index: int, event: Event) -> str:
    return f"event {index} ({event.event!r}, RTMR{event.imr})"


def check_runtime_placement(events: Sequence[Event]) -> None:
    """Every RTMR3 event is a runtime event and every runtime event is in RTMR3; a re-typed
    event would otherwise be replayed from a digest nobody recomputes."""
    for index, event in enumerate(events):
        if event.imr == APP_RTMR and not event.is_runtime:
            raise EventLogError(
                f"event {index} in RTMR3 has type 0x{event.event_type:08x}: only dstack runtime "
                f"events (0x{RUNTIME_EVENT_TYPE:08x}) may extend RTMR3"
            )
        if event.is_runtime and event.imr != APP_RTMR:
            raise EventLogError(
                f"{_where(index, event)} is a runtime event outside RTMR3; dstack extends only "
                "RTMR3 at runtime"
            )


def _check_payload(index: int, event: Event) -> None:
    sizes = PAYLOAD_SIZES.get(event.event)
    if sizes is not None and len(event.event_payload) not in sizes:
        allowed = " or ".join(str(s) for s in sizes)
        raise EventLogError(
            f"{_where(index, event)} has a {len(event.event_payload)}-byte payload; "
            f"dstack measures {allowed} bytes"
        )
    if event.event == "key-provider":
        try:
            document = parse_strict_json(event.event_payload)
        except StrictJSONError:
            document = None
        if not isinstance(document, dict) or not isinstance(document.get("name"), str):
            raise EventLogError(f"{_where(index, event)} is not a key-provider JSON object")


def read_boot_record(events: Sequence[Event]) -> BootRecord:
    """Split RTMR3 into the OS's boot events and the app's later events, enforcing dstack's rules:
    runtime events only, OS events known, each at most once and in order, the required ones
    present, and boot ended by system-ready. EventLogError names the first event that breaks one.
    Call it on the same events that replayed to the quote's RTMR3."""
    check_runtime_placement(events)
    rtmr3 = [(index, e) for index, e in enumerate(events) if e.imr == APP_RTMR]
    ready_at = next(
        (position for position, (_, e) in enumerate(rtmr3) if e.event == BOOT_DONE_EVENT), None
    )
    if ready_at is None:
        raise EventLogError(
            f"RTMR3 has no {BOOT_DONE_EVENT!r} event: boot did not finish, or the log was cut"
        )
    last_rank = -1
    seen: dict[str, int] = {}
    for index, event in rtmr3[: ready_at + 1]:
        rank = _RANK.get(event.event)
        if rank is None:
            raise EventLogError(
                f"{_where(index, event)} comes before {BOOT_DONE_EVENT} but is not an event the "
                "dstack OS measures"
            )
        count = seen[event.event] = seen.get(event.event, 0) + 1
        if rank < last_rank or count > MAX_REPEATS.get(event.event, 1):
            raise EventLogError(
                f"{_where(index, event)} is out of dstack's order or repeated "
                f"(expected order: {_ORDER_TEXT})"
            )
        last_rank = rank
        _check_payload(index, event)
    os_events = tuple(e for _, e in rtmr3[: ready_at + 1])
    missing = [name for name in REQUIRED_OS_EVENTS if name not in seen]
    if missing:
        raise EventLogError(f"RTMR3 lacks the OS event(s) {', '.join(missing)} before system-ready")
    image_hashes = {e.event_payload for e in os_events if e.event == "os-image-hash"}
    if len(image_hashes) > 1:
        raise EventLogError("RTMR3 measures different os-image-hash values during one boot")
    versions = {e.version or 1 for _, e in rtmr3}
    if len(versions) > 1:
        raise EventLogError(
            "RTMR3 mixes V1 and V2 runtime events; dstack fixes one format per boot"
        )
    return BootRecord(os_events=os_events, app_events=tuple(e for _, e in rtmr3[ready_at + 1 :]))
