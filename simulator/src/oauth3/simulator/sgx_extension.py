"""The DER of Intel's SGX extension that a PCK certificate carries (what DCAP verifiers read the
FMSPC, CPUSVN and PCESVN from), written by hand: `cryptography` encodes no such extension."""

from __future__ import annotations

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
SGX_TYPE_SCALABLE = 1


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    size_bytes = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size_bytes)]) + size_bytes + content


def _base128(value: int) -> bytes:
    out = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        out.append(0x80 | (value & 0x7F))
    return bytes(reversed(out))


def _der_oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    encoded = b"".join(_base128(arc) for arc in [40 * arcs[0] + arcs[1], *arcs[2:]])
    return _der(0x06, encoded)


def _der_uint(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _sgx_item(sub_oid: str, value: bytes) -> bytes:
    return _der(0x30, _der_oid(f"{SGX_EXTENSION_OID}.{sub_oid}") + value)


def sgx_pck_extension(
    *, ppid: bytes, cpusvn: bytes, pcesvn: int, pce_id: bytes, fmspc: bytes, platform_id: bytes
) -> bytes:
    """DER of Intel's SGX extension (OID 1.2.840.113741.1.13.1) that a PCK certificate carries."""
    tcb = b"".join(_sgx_item(f"2.{i + 1}", _der_uint(svn)) for i, svn in enumerate(cpusvn))
    tcb += _sgx_item("2.17", _der_uint(pcesvn)) + _sgx_item("2.18", _der(0x04, cpusvn))
    false = _der(0x01, b"\x00")
    configuration = b"".join(_sgx_item(f"7.{i}", false) for i in (1, 2, 3))
    return _der(
        0x30,
        b"".join(
            [
                _sgx_item("1", _der(0x04, ppid)),
                _sgx_item("2", _der(0x30, tcb)),
                _sgx_item("3", _der(0x04, pce_id)),
                _sgx_item("4", _der(0x04, fmspc)),
                _sgx_item("5", _der(0x0A, bytes([SGX_TYPE_SCALABLE]))),
                _sgx_item("6", _der(0x04, platform_id)),
                _sgx_item("7", _der(0x30, configuration)),
            ]
        ),
    )
