"""oauth3-phala: the operator's Phala Cloud tools (render, check, deploy), not the verifier's."""
