"""The `/attestation` response document, both layouts: built by the service, read by clients.

`oauth3/v1`: {layout, quote (base64), eventLog, reportData (hex), vmConfig, generatedAt, nonce}.
`oauth3/v2` adds `merkle` {leafIndex, batchSize, path}: the nonce's inclusion proof in the batch
whose Merkle root is report_data[32:64]. Member order is part of the bytes on the wire.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import ResponseError
from .merkle import HASH_SIZE, MerkleError, MerkleTree, root_from_path
from .report_data import (
    LAYOUT,
    LAYOUT_V2,
    LAYOUTS,
    NONCE_SIZE,
    REPORT_DATA_SIZE,
    batch_report_data_for,
    report_data_for,
)


@dataclass(frozen=True, slots=True)
class QuotedEvidence:
    """What the guest agent answered for one quote: the members every layout carries."""

    quote: bytes
    event_log: str
    vm_config: str


@dataclass(frozen=True, slots=True)
class BatchProof:
    """An oauth3/v2 response's proof that its nonce is a leaf of the quoted batch."""

    leaf_index: int
    batch_size: int
    path: tuple[bytes, ...]


def generated_at(moment: datetime | None = None) -> str:
    """RFC 3339 UTC to the second with a `Z`, as `generatedAt` carries it (now by default)."""
    moment = datetime.now(UTC) if moment is None else moment
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _members(evidence: QuotedEvidence, layout: str, report_data: bytes) -> dict[str, Any]:
    return {
        "layout": layout,
        "quote": base64.b64encode(evidence.quote).decode(),
        "eventLog": evidence.event_log,
        "reportData": report_data.hex(),
        "vmConfig": evidence.vm_config,
        "generatedAt": generated_at(),
    }


def v1_body(evidence: QuotedEvidence, report_data: bytes, nonce: bytes | None) -> bytes:
    """The oauth3/v1 document for a quote over `report_data` (see report_data_for)."""
    members = _members(evidence, LAYOUT, report_data)
    members["nonce"] = nonce.hex() if nonce is not None else None
    return orjson.dumps(members)


@dataclass(frozen=True, slots=True)
class BatchBodies:
    """The oauth3/v2 documents of one quoted batch: the members they share are serialised once
    and each client's nonce and proof spliced after them."""

    tree: MerkleTree
    shared: bytes  # the JSON object without its closing brace

    @classmethod
    def for_batch(
        cls, evidence: QuotedEvidence, tree: MerkleTree, report_data: bytes
    ) -> BatchBodies:
        """The bodies of a batch whose quote is over `report_data` (see batch_report_data_for)."""
        return cls(tree, orjson.dumps(_members(evidence, LAYOUT_V2, report_data))[:-1])

    def body(self, nonce: bytes, index: int) -> bytes:
        """One client's document: the shared members, its nonce and its inclusion proof."""
        proof = orjson.dumps(
            {
                "leafIndex": index,
                "batchSize": self.tree.size,
                "path": [sibling.hex() for sibling in self.tree.path(index)],
            }
        )
        return b'%s,"nonce":"%s","merkle":%s}' % (self.shared, nonce.hex().encode(), proof)


@dataclass(frozen=True, slots=True)
class AttestationResponse:
    """A parsed /attestation document (either layout); `bound_report_data` says what its quote
    must carry for a given nonce."""

    layout: str
    quote: bytes
    event_log: str | None
    report_data: bytes | None  # the reportData member, as declared (the quote's is what counts)
    vm_config: str | None
    generated_at: str | None
    nonce: bytes | None
    proof: BatchProof | None  # oauth3/v2 only

    def bound_report_data(self, info_digest: bytes, nonce: bytes | None) -> bytes:
        """The 64 report_data bytes the quote must carry to bind these /info bytes and `nonce`,
        the nonce the client itself sent or recorded (never this document's own `nonce` member):
        v1 the nonce itself, v2 the batch root its proof leads to. ResponseError when the
        document cannot bind it."""
        if self.layout == LAYOUT:
            return report_data_for(info_digest, nonce)
        if nonce is None or self.proof is None:
            raise ResponseError("an oauth3/v2 response binds a nonce, through its 'merkle' proof")
        proof = self.proof
        try:
            root = root_from_path(nonce, proof.leaf_index, proof.batch_size, proof.path)
        except MerkleError as exc:
            raise ResponseError(f"merkle: {exc}") from None
        return batch_report_data_for(info_digest, root)


def _optional(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise ResponseError(f"{key!r} must be a string")
    return value


def _hex(doc: Mapping[str, Any], key: str, size: int) -> bytes | None:
    text = _optional(doc, key)
    if text is None:
        return None
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise ResponseError(f"{key!r} is not hex") from None
    if len(value) != size:
        raise ResponseError(f"{key!r} must be {size} bytes, got {len(value)}")
    return value


def read_batch_proof(member: object) -> BatchProof:
    """The `merkle` member of an oauth3/v2 response; ResponseError naming what is malformed."""
    if not isinstance(member, dict):
        raise ResponseError("an oauth3/v2 response must carry its inclusion proof ('merkle')")
    index, size, path = member.get("leafIndex"), member.get("batchSize"), member.get("path")
    if type(index) is not int or type(size) is not int:  # bool is an int subclass: refuse it
        raise ResponseError("merkle: leafIndex and batchSize must be integers")
    if not isinstance(path, list) or not all(isinstance(p, str) for p in path):
        raise ResponseError("merkle: path must be a list of hex strings")
    try:
        siblings = tuple(bytes.fromhex(p) for p in path)
    except ValueError:
        raise ResponseError("merkle: path is not hex") from None
    if any(len(s) != HASH_SIZE for s in siblings):
        raise ResponseError(f"merkle: every path hash must be {HASH_SIZE} bytes")
    return BatchProof(index, size, siblings)


def read_response(doc: Mapping[str, Any]) -> AttestationResponse:
    """Read a decoded /attestation document; ResponseError names the first bad member. A
    missing `layout` reads as oauth3/v1 (the only layout before there were two)."""
    layout = _optional(doc, "layout") or LAYOUT
    if layout not in LAYOUTS:
        raise ResponseError(f"layout {layout!r} is none of {', '.join(LAYOUTS)}")
    quote_text = doc.get("quote")
    if not isinstance(quote_text, str):
        raise ResponseError("'quote' must be a base64 string")
    try:
        quote = base64.b64decode(quote_text, validate=True)
    except (binascii.Error, ValueError):
        raise ResponseError("'quote' is not valid base64") from None
    return AttestationResponse(
        layout=layout,
        quote=quote,
        event_log=_optional(doc, "eventLog"),
        report_data=_hex(doc, "reportData", REPORT_DATA_SIZE),
        vm_config=_optional(doc, "vmConfig"),
        generated_at=_optional(doc, "generatedAt"),
        nonce=_hex(doc, "nonce", NONCE_SIZE),
        proof=read_batch_proof(doc.get("merkle")) if layout == LAYOUT_V2 else None,
    )


def parse_response(body: bytes) -> AttestationResponse:
    """Parse /attestation response bytes; ResponseError when not a JSON object or malformed."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ResponseError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ResponseError("not a JSON object")
    return read_response(doc)


__all__ = [
    "AttestationResponse",
    "BatchBodies",
    "BatchProof",
    "QuotedEvidence",
    "ResponseError",
    "generated_at",
    "parse_response",
    "read_response",
    "v1_body",
]
