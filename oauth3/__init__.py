"""oauth3: attestation service for dstack / Intel TDX on Phala Cloud."""
