"""The public oauth3 HTTP API (/info, /attestation, /healthz, /readyz); no dstack socket here."""
