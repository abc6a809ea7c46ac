"""oauth3-measure: the MRTD and RTMR0-2 a dstack OS release boots to, to pin before deploying.

    oauth3-measure --dstack-quote FILE            # a GetQuote response (vm_config + event log)
    oauth3-measure --vm-config FILE --event-log FILE
    oauth3-measure --image-dir DIR --cpus N --memory SIZE [--qemu-version V] [--acpi-* HEX]

The registers are recomputed from the measurement document (`sha256sum.txt` and
`measurement.tdx.cbor`) that `vm_config.tdx_measurement` carries, for the VM shape `vm_config`
declares; RTMR0's three ACPI digests are read from the event log's named RTMR0 events (their
contents are not verified). Nothing is compared with a quote: the output is what the release
boots to, for `--expect-*` flags or a `[[platform]]` entry (`--policy-entry`).

`--image-dir` reads a downloaded release (`metadata.json`, OVMF, bzImage, initrd) and computes
MRTD, RTMR1 and RTMR2 from the files at the given shape, and RTMR0 only from ACPI digests pinned
with `--acpi-loader/--acpi-rsdp/--acpi-tables`: generating QEMU's ACPI tables needs dstack's
patched QEMU, which oauth3 does not run. With the directory's `sha256sum.txt` it names the release
and checks every file against it; `--write-measurement FILE` writes the `measurement.tdx.cbor`
dstack's builder makes for these files.

Each input mode is one function from the parsed arguments to a `Measured`, chosen in `SOURCES`;
a new mode (such as one reading image files) adds its flags to the `source` group and an entry.

Exit codes: 0 printed; 2 usage, an unreadable input, one over its size bound, or JSON input that
is not strict JSON (duplicate keys, NaN, nesting past 64 levels), and any fault of this program;
3 the input is read but the registers cannot be computed from it (no document, a refused memory
size or QEMU version, no named ACPI events, a document that does not bind to its os_image_hash, an
image file that is malformed or differs from its sha256sum.txt, `--policy-entry` without the ACPI
pins). Every failure is one escaped line on stderr, made in `run` alone; under `--json` stdout
also gets `{"verdict": "ERROR", "exit_code": N, "error": LINE}`, oauth3-verify's error shape.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

from oauth3.attestation import AttestationError, load_evidence, parse_event_log, parse_strict_json
from oauth3.attestation.dstack_os import release_for
from oauth3.attestation.measurement_document import MEASUREMENT_FILE, document_from_vm_config
from oauth3.attestation.os_image import (
    CHECKSUM_FILE,
    METADATA_FILE,
    ImageFiles,
    check_manifest,
    image_measurement,
    image_registers,
    parse_image_metadata,
)
from oauth3.attestation.tdx_registers import (
    AcpiDigests,
    acpi_digests_from_log,
    expected_registers,
    shape_from_vm_config,
)

from .cli_common import USAGE_ERROR, ClientArgumentParser, InputTooLarge, read_input_bytes
from .files import write_atomically
from .output import json_text, printable
from .policy import toml_string

PROG = "oauth3-measure"
EXIT_CANNOT_COMPUTE = 3
REGISTERS = ("mrtd", "rtmr0", "rtmr1", "rtmr2")
MAX_JSON_INPUT = 8 << 20  # a GetQuote answer, vm_config or event log is kilobytes


class MeasureError(Exception):
    """A refusal: one line for stderr and its documented exit code."""

    code = USAGE_ERROR


class CannotMeasure(MeasureError):
    """The input is readable but does not determine the registers (exit 3)."""

    code = EXIT_CANNOT_COMPUTE


class _Parser(ClientArgumentParser):
    """Argument errors become a MeasureError, so `run` alone prints them (and answers --json)."""

    def error(self, message: str) -> NoReturn:
        """Raise MeasureError("error: message")."""
        raise MeasureError(f"error: {message}")


def _read_input(path: str, limit: int | None = None) -> bytes:
    """A file's (or stdin's, for `-`) bytes; MeasureError when it cannot be read or holds more
    than `limit` bytes (the client tools' MAX_INPUT when None)."""
    try:
        data = read_input_bytes(path)
    except (OSError, InputTooLarge) as exc:
        raise MeasureError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if limit is not None and len(data) > limit:
        raise MeasureError(f"cannot read {path}: larger than {limit} bytes")
    return data


def _strict(data: bytes | str, what: str, error: type[MeasureError] = MeasureError) -> Any:
    try:
        return parse_strict_json(data)
    except AttestationError as exc:
        raise error(f"{what}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Measured:
    """Computed registers by pin name, and the facts they were computed from."""

    registers: Mapping[str, bytes | None]  # None: not computable from this input (RTMR0)
    facts: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """{"mrtd": hex, "rtmr0": hex or null, "rtmr1": hex, "rtmr2": hex, ...facts}."""
        return {**{k: _hex(self.registers[k]) for k in REGISTERS}, **self.facts}

    def policy_entry(self) -> str:
        """A ready `[[platform]]` block for an oauth3-verify policy; CannotMeasure when a register
        is open, since a platform pin needs all four."""
        missing = [k for k in REGISTERS if self.registers[k] is None]
        if missing:
            raise CannotMeasure(
                f"a [[platform]] entry needs {', '.join(missing)}: pin --acpi-loader, --acpi-rsdp "
                "and --acpi-tables (only dstack's patched QEMU generates the ACPI tables)"
            )
        name = printable(str(self.facts.get("label", "computed by oauth3-measure")))
        lines = ["[[platform]]", f"name = {toml_string(name)}"]
        lines += [f'{k} = "{_hex(self.registers[k])}"' for k in REGISTERS]
        return "\n".join(lines) + "\n"


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


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


def _from_dstack_quote(args: argparse.Namespace) -> Measured:
    try:
        loaded = load_evidence(_read_input(args.dstack_quote, MAX_JSON_INPUT))
    except AttestationError as exc:
        raise MeasureError(f"{args.dstack_quote}: {exc}") from None
    document = loaded.document or {}
    text = document.get("vm_config")
    if not isinstance(text, str) or loaded.event_log is None:
        raise CannotMeasure(f"{args.dstack_quote} carries no vm_config and event log")
    vm_config = _strict(text, f"{args.dstack_quote}: its vm_config", CannotMeasure)
    return measure_lite(vm_config, loaded.event_log)


def _from_vm_config(args: argparse.Namespace) -> Measured:
    if args.event_log is None:
        raise MeasureError("error: --vm-config needs --event-log FILE (for the ACPI digests)")
    vm_config = _strict(_read_input(args.vm_config, MAX_JSON_INPUT), f"vm_config {args.vm_config}")
    if isinstance(vm_config, str):  # a vm_config as GetQuote carries it: JSON text in a string
        vm_config = _strict(vm_config, f"the string in vm_config {args.vm_config}")
    log = _read_input(args.event_log, MAX_JSON_INPUT)
    _strict(log, f"event log {args.event_log}")  # a file that is no JSON is exit 2, as vm_config
    return measure_lite(vm_config, log.decode())


_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)
ACPI_NOT_PINNED = (
    "not pinned: RTMR0 needs --acpi-loader, --acpi-rsdp and --acpi-tables (generating QEMU's ACPI "
    "tables needs dstack's patched QEMU, which oauth3 does not run)"
)


def memory_size(text: str) -> int:
    """argparse type: bytes, or a binary size such as 2G, 2048M, 3GiB."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 2G, 2048M or 2147483648")
    value = int(match[1]) << 10 * " KMGT".index(match[2].upper() or " ")
    if not 0 < value < 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive 64-bit size")
    return value


def sha384_hex(text: str) -> bytes:
    """argparse type: 96 hex digits (a SHA-384 digest)."""
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != 48:
        raise argparse.ArgumentTypeError(f"{text!r} is not 96 hex digits")
    return value


def _acpi_pins(args: argparse.Namespace) -> AcpiDigests | None:
    pins = (args.acpi_loader, args.acpi_rsdp, args.acpi_tables)
    if all(p is None for p in pins):
        return None
    if any(p is None for p in pins):
        raise MeasureError("error: --acpi-loader, --acpi-rsdp and --acpi-tables go together")
    return AcpiDigests(*pins, "pinned on the command line (ACPI contents not verified)")


def _image_files(directory: Path) -> ImageFiles:
    try:
        metadata = parse_image_metadata(_read_input(str(directory / METADATA_FILE)))
    except AttestationError as exc:
        raise CannotMeasure(str(exc)) from None
    names = (metadata.bios, metadata.kernel, metadata.initrd)
    firmware, kernel, initrd = (_read_input(str(directory / name)) for name in names)
    return ImageFiles(metadata, firmware, kernel, initrd)


def _release_facts(directory: Path, files: ImageFiles, cbor: bytes | None) -> dict[str, Any]:
    """os_image_hash and release name from the directory's sha256sum.txt, if it has one, and
    whether our measurement.tdx.cbor equals the one the image ships."""
    shipped = directory / MEASUREMENT_FILE
    shipped_cbor = _read_input(str(shipped)) if shipped.is_file() else None
    facts: dict[str, Any] = {"os_image_hash": None, "release": None}
    if (directory / CHECKSUM_FILE).is_file():
        contents = {
            METADATA_FILE: _read_input(str(directory / METADATA_FILE)),
            files.metadata.bios: files.firmware,
            files.metadata.kernel: files.kernel,
            files.metadata.initrd: files.initrd,
        }
        if shipped_cbor is not None:
            contents[MEASUREMENT_FILE] = shipped_cbor
        try:
            os_image_hash = check_manifest(_read_input(str(directory / CHECKSUM_FILE)), contents)
        except AttestationError as exc:
            raise CannotMeasure(f"{directory}: {exc}") from None
        release = release_for(os_image_hash)
        facts = {"os_image_hash": os_image_hash.hex(), "release": release and release.label}
    if shipped_cbor is None:
        facts["shipped_cbor"] = "none"
    else:
        same = cbor == shipped_cbor
        facts["shipped_cbor"] = f"{'identical to' if same else 'differs from'} the computed one"
    return facts


def _from_image_dir(args: argparse.Namespace) -> Measured:
    if args.cpus is None or args.memory is None:
        raise MeasureError("error: --image-dir needs --cpus N and --memory SIZE")
    acpi = _acpi_pins(args)
    directory = Path(args.image_dir)
    files = _image_files(directory)
    config = {"memory_size": args.memory, "qemu_version": args.qemu_version}
    try:
        shape = shape_from_vm_config(config)
        registers = image_registers(files, shape, acpi).as_dict()
    except AttestationError as exc:
        raise CannotMeasure(str(exc)) from None
    try:
        cbor: bytes | None = image_measurement(files).to_cbor()
    except AttestationError as exc:
        if args.write_measurement:
            raise CannotMeasure(f"no {MEASUREMENT_FILE}: {exc}") from None
        cbor = None
    facts = _release_facts(directory, files, cbor)
    if args.write_measurement and cbor is not None:
        try:
            write_atomically(Path(args.write_measurement), cbor)
        except OSError as exc:
            raise MeasureError(
                f"cannot write {args.write_measurement}: {exc.strerror or exc}"
            ) from None
    name = facts["release"] or files.metadata.version or directory.name
    label = f"{name}, {args.cpus} vCPU, {shape.memory_size // 2**20} MiB"
    acpi_fact = ACPI_NOT_PINNED if acpi is None else acpi.as_json()
    facts |= {"cpus": args.cpus, **shape.as_json(), "acpi": acpi_fact}
    facts["label"] = f"{label}, QEMU {shape.as_json()['qemu_version']}"
    return Measured(registers, facts)


# input mode -> (the argparse dest that selects it, the function that measures it)
SOURCES: dict[str, tuple[str, Callable[[argparse.Namespace], Measured]]] = {
    "dstack-quote": ("dstack_quote", _from_dstack_quote),
    "vm-config": ("vm_config", _from_vm_config),
    "image-dir": ("image_dir", _from_image_dir),
}


def build_parser() -> argparse.ArgumentParser:
    """oauth3-measure's arguments; modes are mutually exclusive in the `source` group."""
    parser = _Parser(
        prog=PROG,
        description="Print the MRTD and RTMR0-2 a dstack OS release boots to.",
        allow_abbrev=False,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dstack-quote", metavar="FILE", help="a dstack GetQuote response")
    source.add_argument("--vm-config", metavar="FILE", help="a dstack vm_config (JSON)")
    source.add_argument(
        "--image-dir", metavar="DIR", help="a downloaded dstack OS release (with metadata.json)"
    )
    parser.add_argument("--event-log", metavar="FILE", help="the event log, with --vm-config")
    image = parser.add_argument_group(
        "--image-dir options",
        "MRTD, RTMR1 and RTMR2 come from the files; RTMR0 only with the three ACPI digests pinned, "
        "because generating QEMU's ACPI tables needs dstack's patched QEMU (out of scope here).",
    )
    image.add_argument("--cpus", type=int, metavar="N", help="vCPUs of the VM (names the pin)")
    image.add_argument("--memory", type=memory_size, metavar="SIZE", help="RAM, e.g. 2G, 4096M")
    image.add_argument("--qemu-version", metavar="V", help="QEMU of the host (default 9.1.0)")
    for blob in ("loader", "rsdp", "tables"):
        image.add_argument(
            f"--acpi-{blob}",
            type=sha384_hex,
            metavar="HEX",
            help=f"SHA-384 of QEMU's ACPI {blob} blob (RTMR0; all three or none)",
        )
    image.add_argument(
        "--write-measurement", metavar="FILE", help="write the measurement.tdx.cbor dstack builds"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object")
    output.add_argument(
        "--policy-entry", action="store_true", help="print a [[platform]] block for a policy"
    )
    return parser


def render_text(measured: Measured) -> str:
    """Human-readable: the four registers, then the facts they came from."""
    lines = [f"{k:<16}{_hex(measured.registers[k]) or 'not computed'}" for k in REGISTERS]
    for key, value in measured.facts.items():
        if isinstance(value, Mapping):
            lines += [
                f"{k if k.startswith(key) else f'{key} {k}':<16}{v}" for k, v in value.items()
            ]
        elif key != "label":
            lines.append(f"{key:<16}{value}")
    return "".join(printable(line) + "\n" for line in lines)


def _measure(argv: list[str] | None) -> str:
    """The text to print for `argv`; MeasureError (or anything else, a bug) when there is none."""
    args = build_parser().parse_args(argv)
    if args.event_log is not None and args.vm_config is None:
        raise MeasureError("error: --event-log applies to --vm-config only")
    _check_image_options(args)
    mode = next(m for m, (dest, _) in SOURCES.items() if getattr(args, dest, None) is not None)
    measured = SOURCES[mode][1](args)
    if args.json:
        return json_text(measured.as_json()) + "\n"
    return measured.policy_entry() if args.policy_entry else render_text(measured)


def run(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Parse, measure, print; return the exit code. The one place a failure of any kind becomes
    one escaped line on stderr, its documented code and, under --json, an ERROR object."""
    out = out or sys.stdout
    words = argv if argv is not None else sys.argv[1:]
    try:
        text = _measure(argv)
    except MeasureError as exc:
        prefix = "cannot compute the registers: " if isinstance(exc, CannotMeasure) else ""
        return _error(f"{prefix}{exc}", exc.code, "--json" in words, out)
    except Exception as exc:
        problem = f"internal error (a bug: please report it): {type(exc).__name__}: {exc}"
        return _error(problem, USAGE_ERROR, "--json" in words, out)
    out.write(text)
    return 0


def _error(message: str, code: int, as_json: bool, out: TextIO) -> int:
    line = printable(" ".join(message.split()))
    sys.stderr.write(f"{PROG}: {line}\n")
    if as_json:
        out.write(json_text({"verdict": "ERROR", "exit_code": code, "error": line}) + "\n")
    return code


def _check_image_options(args: argparse.Namespace) -> None:
    image_only = ("cpus", "memory", "qemu_version", "acpi_loader", "acpi_rsdp", "acpi_tables")
    used = [n for n in (*image_only, "write_measurement") if getattr(args, n) is not None]
    if used and args.image_dir is None:
        flag = "--" + used[0].replace("_", "-")
        raise MeasureError(f"error: {flag} applies to --image-dir only")


def main() -> None:
    """Console entry point."""
    raise SystemExit(run())


if __name__ == "__main__":
    main()
