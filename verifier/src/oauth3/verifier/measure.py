"""oauth3-measure: the MRTD and RTMR0-2 a dstack OS release boots to, to pin before deploying.

    oauth3-measure --dstack-quote FILE            # a GetQuote response (vm_config + event log)
    oauth3-measure --vm-config FILE --event-log FILE

The registers are recomputed from the measurement document (`sha256sum.txt` and
`measurement.tdx.cbor`) that `vm_config.tdx_measurement` carries, for the VM shape `vm_config`
declares; RTMR0's three ACPI digests are read from the event log's named RTMR0 events (their
contents are not verified). Nothing is compared with a quote: the output is what the release
boots to, for `--expect-*` flags or a `[[platform]]` entry (`--policy-entry`).

Each input mode is one function from the parsed arguments to a `Measured`, chosen in `SOURCES`;
a new mode (such as one reading image files) adds its flags to the `source` group and an entry.

Exit codes: 0 printed; 2 usage or unreadable input (one line on stderr); 3 the input is read but
the registers cannot be computed from it (no document, a refused memory size or QEMU version, no
named ACPI events, a document that does not bind to its os_image_hash).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from oauth3.attestation import AttestationError, load_evidence, parse_event_log
from oauth3.attestation.measurement_document import document_from_vm_config
from oauth3.attestation.tdx_registers import (
    acpi_digests_from_log,
    expected_registers,
    shape_from_vm_config,
)

from .commandline import OneLineParser, fail, read_input

EXIT_CANNOT_COMPUTE = 3
REGISTERS = ("mrtd", "rtmr0", "rtmr1", "rtmr2")


class CannotMeasure(Exception):
    """The input is readable but does not determine the registers (exit 3)."""


@dataclass(frozen=True, slots=True)
class Measured:
    """Computed registers by pin name, and the facts they were computed from."""

    registers: Mapping[str, bytes]
    facts: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """{"mrtd": hex, "rtmr0": hex, "rtmr1": hex, "rtmr2": hex, ...facts}."""
        return {**{k: self.registers[k].hex() for k in REGISTERS}, **self.facts}

    def policy_entry(self) -> str:
        """A ready `[[platform]]` block for an oauth3-verify policy."""
        name = str(self.facts.get("label", "computed by oauth3-measure"))
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        lines = ["[[platform]]", f'name = "{escaped}"']
        lines += [f'{k} = "{self.registers[k].hex()}"' for k in REGISTERS]
        return "\n".join(lines) + "\n"


def measure_lite(vm_config: Any, event_log: str) -> Measured:
    """Registers of the release `vm_config` attaches, ACPI digests from `event_log`.
    CannotMeasure saying what is missing or refused."""
    if not isinstance(vm_config, dict):
        raise CannotMeasure("vm_config is not a JSON object")
    try:
        document = document_from_vm_config(vm_config)
        if document is None:
            raise CannotMeasure(
                "vm_config carries no measurement document (tdx_measurement): a legacy boot or "
                "an image without measurement.tdx.cbor"
            )
        claimed = vm_config.get("os_image_hash")
        if isinstance(claimed, str):
            document.check_belongs_to(bytes.fromhex(claimed))
        shape = shape_from_vm_config(vm_config)
        acpi = acpi_digests_from_log(parse_event_log(event_log))
        registers = expected_registers(document.measurement, shape, acpi)
    except (AttestationError, ValueError) as exc:
        raise CannotMeasure(str(exc)) from None
    release = document.os_image_hash.hex()
    label = f"dstack OS {release[:16]}…, {shape.memory_size // 2**20} MiB"
    facts = {
        "os_image_hash": release,
        **shape.as_json(),
        "acpi": acpi.as_json(),
        "label": f"{label}, QEMU {shape.as_json()['qemu_version']}",
    }
    return Measured(registers.as_dict(), facts)


def _json_file(path: str, what: str) -> Any:
    try:
        return orjson.loads(read_input(path))
    except orjson.JSONDecodeError:
        fail(f"oauth3-measure: {what} {path} is not JSON")


def _from_dstack_quote(args: argparse.Namespace) -> Measured:
    try:
        loaded = load_evidence(read_input(args.dstack_quote))
    except AttestationError as exc:
        fail(f"oauth3-measure: {args.dstack_quote}: {exc}")
    document = loaded.document or {}
    text = document.get("vm_config")
    if not isinstance(text, str) or loaded.event_log is None:
        raise CannotMeasure(f"{args.dstack_quote} carries no vm_config and event log")
    try:
        vm_config = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise CannotMeasure(f"{args.dstack_quote}: its vm_config is not JSON") from None
    return measure_lite(vm_config, loaded.event_log)


def _from_vm_config(args: argparse.Namespace) -> Measured:
    if args.event_log is None:
        fail("oauth3-measure: error: --vm-config needs --event-log FILE (for the ACPI digests)")
    vm_config = _json_file(args.vm_config, "vm_config")
    if isinstance(vm_config, str):  # a vm_config as GetQuote carries it: JSON text in a string
        try:
            vm_config = orjson.loads(vm_config)
        except orjson.JSONDecodeError:
            fail(f"oauth3-measure: vm_config {args.vm_config} holds a string that is not JSON")
    log = read_input(args.event_log).decode("utf-8", "replace")
    return measure_lite(vm_config, log)


# input mode -> (the argparse dest that selects it, the function that measures it)
SOURCES: dict[str, tuple[str, Callable[[argparse.Namespace], Measured]]] = {
    "dstack-quote": ("dstack_quote", _from_dstack_quote),
    "vm-config": ("vm_config", _from_vm_config),
}


def build_parser() -> argparse.ArgumentParser:
    """oauth3-measure's arguments; modes are mutually exclusive in the `source` group."""
    parser = OneLineParser(
        prog="oauth3-measure",
        description="Print the MRTD and RTMR0-2 a dstack OS release boots to.",
        allow_abbrev=False,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dstack-quote", metavar="FILE", help="a dstack GetQuote response")
    source.add_argument("--vm-config", metavar="FILE", help="a dstack vm_config (JSON)")
    parser.add_argument("--event-log", metavar="FILE", help="the event log, with --vm-config")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object")
    output.add_argument(
        "--policy-entry", action="store_true", help="print a [[platform]] block for a policy"
    )
    return parser


def render_text(measured: Measured) -> str:
    """Human-readable: the four registers, then the facts they came from."""
    lines = [f"{k:<16}{measured.registers[k].hex()}" for k in REGISTERS]
    for key, value in measured.facts.items():
        if isinstance(value, Mapping):
            lines += [
                f"{k if k.startswith(key) else f'{key} {k}':<16}{v}" for k, v in value.items()
            ]
        elif key != "label":
            lines.append(f"{key:<16}{value}")
    return "\n".join(lines) + "\n"


def run(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Parse, measure, print; returns the exit code (usage errors exit 2 via SystemExit)."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    if args.event_log is not None and args.vm_config is None:
        fail("oauth3-measure: error: --event-log applies to --vm-config only")
    mode = next(m for m, (dest, _) in SOURCES.items() if getattr(args, dest, None) is not None)
    try:
        measured = SOURCES[mode][1](args)
    except CannotMeasure as exc:
        sys.stderr.write(f"oauth3-measure: cannot compute the registers: {exc}\n")
        return EXIT_CANNOT_COMPUTE
    if args.json:
        out.write(orjson.dumps(measured.as_json()).decode() + "\n")
    elif args.policy_entry:
        out.write(measured.policy_entry())
    else:
        out.write(render_text(measured))
    return 0


def main() -> None:
    """Console entry point."""
    raise SystemExit(run())


if __name__ == "__main__":
    main()
