"""The simulated CVM: boot and runtime event logs, RTMRs, quotes and the Info document, from a seed.

Everything is derived from (seed, app-compose bytes), so the quote, the event log and Info agree:
RTMR0-3 replay from the log, the compose-hash event is SHA-256 of the app-compose served in Info,
and mr_config_id binds the same hash. By default the deployment is KMS-less: app-id =
compose_hash[:20] and the key provider is `{"name":"none","id":""}`; a KMS boot (`kms.py`) adds
the os-image-hash event, the KMS key provider and an app id the deployment registered.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

import orjson

from oauth3.attestation import (
    RUNTIME_EVENT_TYPE,
    Event,
    compose_hash,
    dump_event_log,
    event_objects,
    mr_config_id_v1,
    replay_rtmrs,
    runtime_event_preimage,
    stripped,
)
from oauth3.attestation.dstack_os import a_dev_release
from oauth3.attestation.tdx_registers import ACPI_EVENT_NAMES, shape_from_vm_config
from oauth3.simulator.quote import DEFAULT_TD_ATTRIBUTES, QuoteSigner, build_quote, td_report_body

from .kms import KEY_PROVIDER_INFO, key_provision
from .release import SimulatedRelease, cmdline_payload, measured_as_released, simulated_release
from .seeded import Seed
from .wire import RpcError

EventLogFormat = Literal["full", "stripped"]
EVENT_LOG_FORMATS: tuple[EventLogFormat, ...] = ("full", "stripped")
ACPI_NAMES = frozenset(ACPI_EVENT_NAMES)
Attack = Literal[
    "debug-td",
    "retyped-os-events",
    "dev-os",
    "other-mrtd",
    "other-kms",
    "late-key-provider",
    "late-os-image-hash",
]
# attacks that only make sense on a KMS boot, which they imply
KMS_ATTACKS: frozenset[str] = frozenset({"other-kms", "late-key-provider"})
ATTACKS: tuple[Attack, ...] = get_args(Attack)
RuntimeEventVersion = Literal[1, 2]
STORAGE_FS = b"ext4"
TD_DEBUG = 0x01
QEMU_VERSION = "9.2.1"
VM_SHAPE = {"cpu_count": 2, "memory_size": 2 * 1024**3}
OsReleaseMode = Literal["simulated", "none"]
OS_RELEASE_MODES: tuple[OsReleaseMode, ...] = get_args(OsReleaseMode)
REPORT_DATA_SIZE = 64
CLOUD_VENDOR = "oauth3 simulator"
CLOUD_PRODUCT = "simulated TDX CVM (not Intel hardware)"

EV_SEPARATOR = 0x4
EV_EVENT_TAG = 0x6
EV_PLATFORM_CONFIG_FLAGS = 0xA
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
EV_EFI_HANDOFF_TABLES2 = 0x8000000B
EFI_GLOBAL_VARIABLE = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = bytes.fromhex("cbb219d73a3d9645a3bcdad00e67656f")


def pad_report_data(report_data: bytes) -> bytes:
    """Right-pad to 64 bytes with zeros, as the agent does; RpcError when longer than 64."""
    if len(report_data) > REPORT_DATA_SIZE:
        raise RpcError("Report data is too long")
    return report_data.ljust(REPORT_DATA_SIZE, b"\0")


def _uefi_variable(guid: bytes, name: str, data: bytes) -> bytes:
    encoded = name.encode("utf-16-le")
    return guid + struct.pack("<QQ", len(name), len(data)) + encoded + data


def _boot(imr: int, event_type: int, payload: bytes, digest: bytes | None = None) -> Event:
    """A firmware event; without an explicit digest it measured its own payload."""
    return Event(
        imr=imr,
        event_type=event_type,
        digest=digest if digest is not None else hashlib.sha384(payload).digest(),
        event="",
        event_payload=payload,
    )


def boot_events(
    seed: Seed, os_image_hash: bytes, dev: bool = False, cmdline: bytes | None = None
) -> list[Event]:
    """Firmware, boot loader and kernel measurements (RTMR0-2) shaped like a real TDX boot log;
    a dev image boots another kernel command line (root login), so RTMR2 differs. `cmdline` is
    the measured command line of a release that fixes its own."""
    measured = {label: seed.take(f"digest/{label}", 48) for label in ("hob", "cfv", "kernel")}
    measured.update({f"acpi{n}": seed.take(f"digest/acpi{n}", 48) for n in range(3)})
    separator = bytes(4)
    default = (
        "console=ttyS0 init=/init panic=1 oauth3.simulated=1 dstack.os_image="
        + os_image_hash.hex()
        + (" dstack.dev=1 root_login=1" if dev else "")
    )
    cmdline_payload = cmdline or b"LOADED_IMAGE::LoadOptions\0" + default.encode("utf-16-le")
    return [
        _boot(0, EV_EFI_HANDOFF_TABLES2, b"\x09TdxTable\0" + seed.take("hob", 24), measured["hob"]),
        _boot(0, EV_EFI_PLATFORM_FIRMWARE_BLOB2, b"\x0dSIMULATED-CFV" + bytes(16), measured["cfv"]),
        _boot(
            0, EV_EFI_VARIABLE_DRIVER_CONFIG, _uefi_variable(EFI_GLOBAL_VARIABLE, "SecureBoot", b"")
        ),
        _boot(0, EV_EFI_VARIABLE_DRIVER_CONFIG, _uefi_variable(EFI_GLOBAL_VARIABLE, "PK", b"")),
        _boot(0, EV_EFI_VARIABLE_DRIVER_CONFIG, _uefi_variable(EFI_GLOBAL_VARIABLE, "KEK", b"")),
        _boot(
            0, EV_EFI_VARIABLE_DRIVER_CONFIG, _uefi_variable(EFI_IMAGE_SECURITY_DATABASE, "db", b"")
        ),
        _boot(
            0,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            _uefi_variable(EFI_IMAGE_SECURITY_DATABASE, "dbx", b""),
        ),
        _boot(0, EV_SEPARATOR, separator),
        *(_boot(0, EV_PLATFORM_CONFIG_FLAGS, b"ACPI DATA", measured[f"acpi{n}"]) for n in range(3)),
        _boot(
            1, EV_EFI_BOOT_SERVICES_APPLICATION, seed.take("kernel-path", 74), measured["kernel"]
        ),
        _boot(0, EV_EFI_VARIABLE_BOOT, _uefi_variable(EFI_GLOBAL_VARIABLE, "BootOrder", bytes(2))),
        _boot(
            0,
            EV_EFI_VARIABLE_BOOT,
            _uefi_variable(EFI_GLOBAL_VARIABLE, "Boot0000", seed.take("boot-option", 62)),
        ),
        _boot(1, EV_EFI_ACTION, b"Calling EFI Application from Boot Option"),
        _boot(1, EV_SEPARATOR, separator),
        _boot(2, EV_EVENT_TAG, cmdline_payload),
        _boot(2, EV_EVENT_TAG, b"Linux initrd\0", seed.take("digest/initrd", 48)),
        _boot(1, EV_EFI_ACTION, b"Exit Boot Services Invocation"),
        _boot(1, EV_EFI_ACTION, b"Exit Boot Services Returned with Success"),
    ]


def runtime_event(name: str, payload: bytes, version: RuntimeEventVersion = 1) -> Event:
    """A dstack runtime event in RTMR3, in the V1 or V2 digest format (V2 carries its preimage,
    as dstack 0.6 sends it)."""
    preimage = runtime_event_preimage(name, payload, version)
    return Event(
        imr=3,
        event_type=RUNTIME_EVENT_TYPE,
        digest=hashlib.sha384(preimage).digest(),
        event=name,
        event_payload=payload,
        version=2 if version == 2 else None,
        preimage=preimage if version == 2 else None,
    )


def runtime_events(
    app_id: bytes,
    compose_digest: bytes,
    instance_id: bytes,
    key_provider: str,
    version: RuntimeEventVersion = 1,
    *,
    kms_os_image_hash: bytes | None = None,
) -> list[Event]:
    """The RTMR3 sequence a dstack OS (0.5.5 and later) measures while booting an app; with a KMS,
    the os-image-hash the KMS answered comes between boot-mr-done and key-provider."""
    kms = [] if kms_os_image_hash is None else [("os-image-hash", kms_os_image_hash)]
    return [
        runtime_event(name, payload, version)
        for name, payload in (
            ("system-preparing", b""),
            ("app-id", app_id),
            ("compose-hash", compose_digest),
            ("instance-id", instance_id),
            ("boot-mr-done", b""),
            *kms,
            ("key-provider", key_provider.encode()),
            ("storage-fs", STORAGE_FS),
            ("system-ready", b""),
        )
    ]


def retyped(events: list[Event]) -> list[Event]:
    """The retyping attack: the OS's own RTMR3 events relabelled as a firmware event type with
    their digests kept, so RTMR3 still replays while a lenient reader skips them."""
    ready = next(i for i, e in enumerate(events) if e.event == "system-ready" and e.imr == 3)
    return [
        replace(e, event_type=EV_EFI_ACTION, version=None, preimage=None)
        if e.imr == 3 and index <= ready and e.event != "system-preparing"
        else e
        for index, e in enumerate(events)
    ]


@dataclass(frozen=True, slots=True)
class CvmVariant:
    """How this simulated CVM departs from an honest default one: attacks it plays, events the
    app emitted after boot, and the runtime-event digest format."""

    attacks: frozenset[Attack] = frozenset()
    emitted: tuple[tuple[str, bytes], ...] = ()
    runtime_event_version: RuntimeEventVersion = 1
    kms: bool = False
    os_release: OsReleaseMode = "simulated"

    @property
    def boots_with_kms(self) -> bool:
        """A KMS boot: asked for, or implied by an attack on one."""
        return self.kms or bool(KMS_ATTACKS.intersection(self.attacks))


def vm_config_json(os_image_hash: bytes, release: SimulatedRelease | None = None) -> str:
    """The host's vm_config string: the 12 keys dstack 0.5.5 sends, in its key order; or, for a
    release booted the lite way, the keys of a dstack 0.6 host with the measurement document."""
    if release is None:
        return json.dumps(
            {
                "spec_version": 1,
                "os_image_hash": os_image_hash.hex(),
                **VM_SHAPE,
                "qemu_single_pass_add_pages": False,
                "pic": False,
                "pci_hole64_size": 0,
                "num_gpus": 0,
                "num_nvswitches": 0,
                "hugepages": False,
                "hotplug_off": False,
                "qemu_version": QEMU_VERSION,
            }
        )
    return json.dumps(
        {
            "os_image_hash": os_image_hash.hex(),
            **VM_SHAPE,
            "qemu_version": QEMU_VERSION,
            "pci_hole64_size": 0,
            "hugepages": False,
            "num_gpus": 0,
            "num_nvswitches": 0,
            "hotplug_off": False,
            **release.vm_config_fields(),
            "spec_version": 1,
        }
    )


def os_image(seed: Seed, variant: CvmVariant) -> tuple[bytes, SimulatedRelease | None]:
    """The OS the CVM boots: the seed's simulated release (lite), a published dev image (the
    dev-os attack) or, without a release, an unpublished image the host names by hash only."""
    if "dev-os" in variant.attacks:
        return a_dev_release().os_image_hash, None
    if variant.os_release == "none":
        return seed.take("os-image", 32), None
    shape = shape_from_vm_config({**VM_SHAPE, "qemu_version": QEMU_VERSION})
    release = simulated_release(seed.take, shape)
    return release.os_image_hash, release


def _app_compose_fields(app_compose: bytes) -> dict[str, Any]:
    try:
        document = json.loads(app_compose)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"app-compose is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("app-compose must be a JSON object")
    name = document.get("name", "")
    if not isinstance(name, str):
        raise ValueError("app-compose 'name' must be a string")
    return document


@dataclass(frozen=True)
class SimulatedCvm:
    """One simulated confidential VM: its measurements, event log, Info document and quoter."""

    app_compose: bytes
    app_name: str
    compose_hash: bytes
    app_id: bytes
    instance_id: bytes
    mr_td: bytes
    mr_config_id: bytes
    rtmrs: tuple[bytes, ...]
    events: tuple[Event, ...]
    os_image_hash: bytes
    vm_config: str
    signer: QuoteSigner = field(repr=False)
    key_provider_info: str = KEY_PROVIDER_INFO
    td_attributes: bytes = DEFAULT_TD_ATTRIBUTES
    served_events: tuple[Event, ...] | None = None

    @property
    def device_id(self) -> bytes:
        """SHA-256 of the quoting enclave's header user_data (the OS 0.5.4 definition)."""
        return hashlib.sha256(self.signer.user_data).digest()

    @property
    def mr_aggregated(self) -> bytes:
        """SHA-256(mr_td ‖ RTMR0-3 ‖ mr_config_id ‖ mr_owner ‖ mr_owner_config); owner fields 0."""
        owner = bytes(48)
        return hashlib.sha256(
            self.mr_td + b"".join(self.rtmrs) + self.mr_config_id + owner + owner
        ).digest()

    def quote(self, report_data: bytes) -> bytes:
        """A signed TDX v4 quote over these measurements and exactly 64 bytes of report_data."""
        body = td_report_body(
            mr_td=self.mr_td,
            rtmrs=self.rtmrs,
            mr_config_id=self.mr_config_id,
            report_data=report_data,
            td_attributes=self.td_attributes,
        )
        return build_quote(body, self.signer)

    @property
    def log_events(self) -> tuple[Event, ...]:
        """The events this agent reports: what it measured, unless an attack rewrites them."""
        return self.served_events if self.served_events is not None else self.events

    def event_log(self, fmt: EventLogFormat) -> str:
        """GetQuote's `event_log` string: `full` (OS <= 0.5.5) or `stripped` (OS >= 0.5.6)."""
        events = self.log_events
        if fmt == "full":
            return dump_event_log(events)
        # dstack 0.6 keeps the named ACPI events' marker payload, which lite verification reads
        kept = [
            replace(short, event_payload=event.event_payload)
            if event.event in ACPI_NAMES
            else short
            for event, short in zip(events, stripped(events), strict=True)
        ]
        return dump_event_log(kept)

    def tcb_info(self) -> str:
        """Info's `tcb_info`: pretty JSON with the RTMRs, hashes, full event log and app-compose."""
        document = {
            "mrtd": self.mr_td.hex(),
            **{f"rtmr{i}": rtmr.hex() for i, rtmr in enumerate(self.rtmrs)},
            "mr_aggregated": self.mr_aggregated.hex(),
            "os_image_hash": self.os_image_hash.hex(),
            "compose_hash": self.compose_hash.hex(),
            "device_id": self.device_id.hex(),
            "event_log": event_objects(self.log_events),
            "app_compose": self.app_compose.decode(),
        }
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()

    def info(self) -> dict[str, str]:
        """The /Info answer, every field the official SDKs require, consistent with the quote."""
        return {
            "app_id": self.app_id.hex(),
            "instance_id": self.instance_id.hex(),
            "app_cert": "",
            "tcb_info": self.tcb_info(),
            "app_name": self.app_name,
            "device_id": self.device_id.hex(),
            "mr_aggregated": self.mr_aggregated.hex(),
            "os_image_hash": self.os_image_hash.hex(),
            "key_provider_info": self.key_provider_info,
            "compose_hash": self.compose_hash.hex(),
            "vm_config": self.vm_config,
            "cloud_vendor": CLOUD_VENDOR,
            "cloud_product": CLOUD_PRODUCT,
        }


def _mr_td(seed: Seed, attacks: frozenset[Attack], release: SimulatedRelease | None) -> bytes:
    """The firmware the TD booted: the release's, unless the host swapped it (other-mrtd)."""
    if "other-mrtd" in attacks:
        return seed.take("mr-td/other", 48)
    return release.registers.mrtd if release else seed.take("mr-td", 48)


def build_cvm(
    app_compose: bytes, seed: str, signer: QuoteSigner, variant: CvmVariant | None = None
) -> SimulatedCvm:
    """Boot a simulated CVM for this app-compose; ValueError if it is not a UTF-8 JSON object.
    `variant` plays attacks and app events; without it the CVM is honest."""
    variant = variant or CvmVariant()
    attacks = variant.attacks
    document = _app_compose_fields(app_compose)
    derive = Seed(seed)
    digest = compose_hash(app_compose)
    dev = "dev-os" in attacks
    os_image_hash, release = os_image(derive, variant)
    keys = key_provision(seed, variant.attacks, variant.boots_with_kms, digest, os_image_hash)
    app_id = keys.app_id
    instance_id = (
        b""
        if document.get("no_instance_id") is True
        else hashlib.sha256(derive.take("instance-id-seed", 32) + app_id).digest()[:20]
    )
    version = variant.runtime_event_version
    firmware = boot_events(derive, os_image_hash, dev, cmdline_payload() if release else None)
    events = [
        *(measured_as_released(firmware, release.registers) if release else firmware),
        *runtime_events(
            app_id,
            digest,
            instance_id,
            keys.key_provider,
            version,
            kms_os_image_hash=keys.kms_os_image_hash,
        ),
        *(runtime_event(name, payload, version) for name, payload in keys.late_events),
        *(runtime_event(name, payload, version) for name, payload in variant.emitted),
    ]
    td_attributes = DEFAULT_TD_ATTRIBUTES
    if "debug-td" in attacks:
        td_attributes = bytes([td_attributes[0] | TD_DEBUG]) + td_attributes[1:]
    return SimulatedCvm(
        app_compose=app_compose,
        app_name=document.get("name", ""),
        compose_hash=digest,
        app_id=app_id,
        instance_id=instance_id,
        mr_td=_mr_td(derive, attacks, release),
        # the host picks mr_config_id at launch; a host playing the retyping attack leaves it
        # unused (all zero, as most deployments have it), so it cannot betray the real hash
        mr_config_id=bytes(48) if "retyped-os-events" in attacks else mr_config_id_v1(digest),
        rtmrs=replay_rtmrs(events),
        events=tuple(events),
        os_image_hash=os_image_hash,
        vm_config=vm_config_json(os_image_hash, release),
        signer=signer,
        key_provider_info=keys.key_provider,
        td_attributes=td_attributes,
        served_events=tuple(retyped(events)) if "retyped-os-events" in attacks else None,
    )
