"""What OVMF measures of the kernel QEMU boots: the setup-header patch, kernel and cmdline digests.

Mirrors dstack-mr's `kernel.rs`: QEMU writes loader fields into the bzImage's setup header
before OVMF hashes it, so RTMR1 depends on the initrd size and, below 0xB0000000 bytes of
memory (except exactly 2 GiB), on the memory size.
"""

from __future__ import annotations

import hashlib

from .authenticode import authenticode_sha384
from .errors import MeasurementError
from .td_hob import HIGH_MEMORY_SPLIT, LOW_MEMORY_TOP

ACPI_DATA_SIZE = 0x28000
INITRD_SUFFIX = " initrd=initrd"
_DEFAULT_INITRD_MAX = 0x37FFFFFF
_U32_MAX = 0xFFFFFFFF


def _put(kernel: bytearray, offset: int, value: int, size: int) -> None:
    kernel[offset : offset + size] = value.to_bytes(size, "little")


def _initrd_max(kernel: bytes, protocol: int) -> int:
    if protocol >= 0x20C:
        xloadflags = int.from_bytes(kernel[0x236:0x238], "little")
        return _U32_MAX if xloadflags & 0x40 else _DEFAULT_INITRD_MAX
    if protocol >= 0x203:
        return int.from_bytes(kernel[0x22C:0x230], "little") or _DEFAULT_INITRD_MAX
    return _DEFAULT_INITRD_MAX


def initrd_address(
    kernel: bytes, initrd_size: int, memory_size: int, acpi_data_size: int = ACPI_DATA_SIZE
) -> int:
    """Where QEMU places the initrd (`ramdisk_image`), from memory below 4 GiB and the sizes."""
    protocol = int.from_bytes(kernel[0x206:0x208], "little")
    if protocol < 0x200:
        raise MeasurementError("kernel: boot protocol older than 2.00 cannot take an initrd")
    lowmem = HIGH_MEMORY_SPLIT if memory_size < HIGH_MEMORY_SPLIT else LOW_MEMORY_TOP
    below_4g = min(memory_size, lowmem)
    if acpi_data_size > below_4g:
        raise MeasurementError(f"kernel: ACPI data {acpi_data_size} exceeds memory {below_4g}")
    initrd_max = _initrd_max(kernel, protocol)
    available = below_4g - acpi_data_size
    if initrd_max >= available:
        initrd_max = max(available - 1, 0)
    if initrd_size >= initrd_max:
        raise MeasurementError(f"kernel: initrd of {initrd_size} bytes is too large for QEMU")
    return (initrd_max - initrd_size) & ~0xFFF


def patch_setup_header(
    kernel: bytes, initrd_size: int, memory_size: int, acpi_data_size: int = ACPI_DATA_SIZE
) -> bytes:
    """The bzImage as QEMU leaves it for OVMF: loader type, heap, cmdline and initrd fields set."""
    if len(kernel) < 0x1000:
        raise MeasurementError(f"kernel: {len(kernel)} bytes is shorter than a setup header page")
    if initrd_size > _U32_MAX:
        raise MeasurementError("kernel: initrd is larger than 4 GiB")
    patched = bytearray(kernel)
    protocol = int.from_bytes(kernel[0x206:0x208], "little")
    loaded_high = protocol >= 0x200 and kernel[0x211] & 0x01
    real_addr, cmdline_addr = (0x10000, 0x20000) if loaded_high else (0x90000, 0x9A000)
    if protocol >= 0x200:
        patched[0x210] = 0xB0
    if protocol >= 0x201:
        patched[0x211] |= 0x80
        _put(patched, 0x224, max(cmdline_addr - real_addr - 0x200, 0), 4)
    if protocol >= 0x202:
        _put(patched, 0x228, cmdline_addr, 4)
    else:
        _put(patched, 0x20, 0xA33F, 2)
        _put(patched, 0x22, (cmdline_addr - real_addr) & 0xFFFF, 2)
    if initrd_size > 0:
        address = initrd_address(kernel, initrd_size, memory_size, acpi_data_size)
        _put(patched, 0x218, address, 4)
        _put(patched, 0x21C, initrd_size, 4)
    return bytes(patched)


def patched_kernel_digest(
    kernel: bytes, initrd_size: int, memory_size: int, acpi_data_size: int = ACPI_DATA_SIZE
) -> bytes:
    """RTMR1's first event: the Authenticode-style SHA-384 of the QEMU-patched kernel."""
    patched = patch_setup_header(kernel, initrd_size, memory_size, acpi_data_size)
    return authenticode_sha384(patched)


def cmdline_digest(base_cmdline: str) -> bytes:
    """RTMR2's first event: `base_cmdline + " initrd=initrd"` in UTF-16LE with a NUL, SHA-384."""
    return hashlib.sha384((base_cmdline + INITRD_SUFFIX).encode("utf-16-le") + b"\0\0").digest()


def rtmr2_events(base_cmdline: str, initrd: bytes) -> list[bytes]:
    """RTMR2's two event digests: the measured command line and the initrd file."""
    return [cmdline_digest(base_cmdline), hashlib.sha384(initrd).digest()]
