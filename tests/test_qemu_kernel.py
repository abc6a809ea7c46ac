"""The QEMU setup-header patch, dstack's Authenticode variant (against LIEF), RTMR1 and RTMR2."""

from __future__ import annotations

import hashlib

import lief
import pytest

from oauth3.attestation.authenticode import authenticode_sha384
from oauth3.attestation.errors import MeasurementError
from oauth3.attestation.qemu_kernel import (
    cmdline_digest,
    initrd_address,
    patch_setup_header,
    patched_kernel_digest,
    rtmr2_events,
)
from oauth3.attestation.td_hob import HIGH_MEMORY_SPLIT, LOW_MEMORY_TOP
from tests.os_image_builders import build_bzimage

INITRD = 0x100000


def _lief_sha384(image: bytes) -> bytes:
    """LIEF's Authenticode SHA-384 (an independent C++ implementation of Microsoft's spec)."""
    binary = lief.PE.parse(list(image))
    assert binary is not None
    return bytes(binary.authentihash(lief.PE.ALGORITHMS.SHA_384))


def _initrd_field(kernel: bytes) -> int:
    return int.from_bytes(kernel[0x218:0x21C], "little")


def test_initrd_address_equalities_of_dstack_kernel_rs() -> None:
    """dstack-mr kernel.rs:274-312: 2 GiB and >= 0xB0000000 patch alike; just below each do not."""
    kernel = bytearray(0x1000)
    kernel[0x206:0x208] = (0x020C).to_bytes(2, "little")
    kernel[0x236:0x238] = (0x0040).to_bytes(2, "little")
    at = {
        name: _initrd_field(patch_setup_header(bytes(kernel), INITRD, size))
        for name, size in {
            "below_2g": LOW_MEMORY_TOP - 0x1000,
            "at_2g": LOW_MEMORY_TOP,
            "below_high": HIGH_MEMORY_SPLIT - 0x1000,
            "at_high": HIGH_MEMORY_SPLIT,
            "above_high": HIGH_MEMORY_SPLIT + 0x4000_0000,
        }.items()
    }
    assert at["below_2g"] != at["at_2g"]
    assert at["below_high"] != at["at_high"]
    assert at["at_2g"] == at["at_high"] == at["above_high"]
    assert at["at_high"] == (0x8000_0000 - 0x28000 - 1 - INITRD) & ~0xFFF


def test_patch_sets_the_loader_fields_qemu_sets() -> None:
    kernel = build_bzimage()
    patched = patch_setup_header(kernel, INITRD, HIGH_MEMORY_SPLIT)
    assert patched[0x210] == 0xB0
    assert patched[0x211] == 0x81
    assert int.from_bytes(patched[0x224:0x228], "little") == 0x20000 - 0x10000 - 0x200
    assert int.from_bytes(patched[0x228:0x22C], "little") == 0x20000
    assert int.from_bytes(patched[0x21C:0x220], "little") == INITRD
    changed = [i for i in range(len(kernel)) if kernel[i] != patched[i]]
    assert all(0x210 <= i < 0x22C for i in changed)


@pytest.mark.parametrize(
    ("protocol", "xloadflags", "expected_max"),
    [
        (0x20C, 0x00, 0x37FFFFFF),  # 2.12 without XLF_CAN_BE_LOADED_ABOVE_4G
        (0x20B, 0x40, 0x3FFFFFFF),  # 2.03-2.11 read initrd_addr_max
        (0x202, 0x40, 0x37FFFFFF),  # older: QEMU's default
    ],
)
def test_initrd_max_follows_the_boot_protocol(
    protocol: int, xloadflags: int, expected_max: int
) -> None:
    kernel = build_bzimage(protocol=protocol, xloadflags=xloadflags)
    assert initrd_address(kernel, INITRD, 8 << 30) == (expected_max - INITRD) & ~0xFFF


def test_bad_kernels_and_sizes_are_refused() -> None:
    with pytest.raises(MeasurementError, match="shorter"):
        patch_setup_header(b"\0" * 100, INITRD, LOW_MEMORY_TOP)
    with pytest.raises(MeasurementError, match="too large"):
        patch_setup_header(build_bzimage(), 0x7FFE0000, LOW_MEMORY_TOP)
    with pytest.raises(MeasurementError, match=r"older than 2\.00"):
        patch_setup_header(build_bzimage(protocol=0x1FF), INITRD, LOW_MEMORY_TOP)
    with pytest.raises(MeasurementError, match="PE signature"):
        authenticode_sha384(b"MZ" + bytes(0x1000))


def test_only_2g_and_high_memory_share_the_precomputed_hash() -> None:
    kernel = build_bzimage()
    high = patched_kernel_digest(kernel, INITRD, HIGH_MEMORY_SPLIT)
    assert patched_kernel_digest(kernel, INITRD, LOW_MEMORY_TOP) == high
    assert patched_kernel_digest(kernel, INITRD, 64 << 30) == high
    assert patched_kernel_digest(kernel, INITRD, 3 << 29) != high


@pytest.mark.parametrize(
    "image",
    [
        build_bzimage(),
        build_bzimage(size=0x6000, trailer=b"T" * 24, cert_table=b"C" * 40),
        build_bzimage(protocol=0x20C, xloadflags=0),
        build_bzimage(pe32=True, bss=True),
        build_bzimage(pe32=True, size=0x5000, trailer=b"T" * 8, cert_table=b"C" * 16),
    ],
    ids=["plain", "signed-with-trailer", "protocol-2.12", "pe32-bss", "pe32-signed"],
)
def test_authenticode_equals_lief_on_8_byte_aligned_images(image: bytes) -> None:
    for candidate in (image, patch_setup_header(image, INITRD, HIGH_MEMORY_SPLIT)):
        assert len(candidate) % 8 == 0
        assert authenticode_sha384(candidate) == _lief_sha384(candidate)


def test_dstack_pads_unaligned_images_with_zeros_where_lief_does_not() -> None:
    """LIEF has no pad; hashing the same image extended by the pad as overlay gives dstack's."""
    image = build_bzimage(size=0x4003)
    ours = authenticode_sha384(image)
    assert ours != _lief_sha384(image)
    assert ours == _lief_sha384(image + bytes(5))


def test_bytes_past_the_sections_count_only_with_a_certificate_table() -> None:
    """dstack hashes trailing bytes only when a certificate table is declared (LIEF always)."""
    plain = build_bzimage()
    trailer = build_bzimage(trailer=b"T" * 16)
    assert authenticode_sha384(trailer) == authenticode_sha384(plain)
    assert _lief_sha384(trailer) != _lief_sha384(plain)
    signed = build_bzimage(trailer=b"T" * 16, cert_table=b"C" * 24)
    assert authenticode_sha384(signed) == _lief_sha384(signed) != authenticode_sha384(plain)


def test_authenticode_ignores_checksum_and_security_directory_only() -> None:
    image = bytearray(build_bzimage())
    base = authenticode_sha384(bytes(image))
    image[0x58 + 64] ^= 0xFF  # CheckSum
    assert authenticode_sha384(bytes(image)) == base
    image[0x3000] ^= 1  # a section byte
    assert authenticode_sha384(bytes(image)) != base


def test_rtmr2_event_list() -> None:
    cmdline = "console=ttyS0 dstack.rootfs_hash=ab"
    expected = hashlib.sha384(
        "console=ttyS0 dstack.rootfs_hash=ab initrd=initrd\0".encode("utf-16-le")
    ).digest()
    assert cmdline_digest(cmdline) == expected
    assert rtmr2_events(cmdline, b"initrd") == [expected, hashlib.sha384(b"initrd").digest()]
