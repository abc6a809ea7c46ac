"""Typed errors raised by every parser in `oauth3.attestation` (never IndexError or KeyError)."""


class AttestationError(ValueError):
    """Base class: input that is not a well-formed piece of attestation evidence."""


class QuoteFormatError(AttestationError):
    """A TDX quote is truncated or inconsistent; the message names the field and its byte offset."""

    def __init__(self, what: str, offset: int | None = None) -> None:
        self.what = what
        self.offset = offset
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"malformed quote: {what}{where}")


class EventLogError(AttestationError):
    """An event log cannot be parsed, or an event's recorded digest contradicts its content."""


class ReportDataError(AttestationError):
    """A nonce or a report_data value breaks the `oauth3/v1` layout rules."""


class EvidenceError(AttestationError):
    """A file or document is not any of the evidence shapes we understand."""


class ResponseError(AttestationError):
    """An /attestation response document is malformed; the message names the member."""


class CborError(AttestationError):
    """Bytes that are not one well-formed, definite-length, minimally encoded CBOR item."""


class MeasurementError(AttestationError):
    """An OS measurement document, VM shape or event log cannot yield expected registers; the
    message says which input and why."""
