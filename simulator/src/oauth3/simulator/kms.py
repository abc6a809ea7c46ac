"""The KMS a simulated CVM boots with, played as dstack @312dc605 (0.6.x) does it.

With a KMS, dstack-util measures, after `boot-mr-done`: `os-image-hash` (the KMS's answer, the
`os_image_hash` of the vm_config the guest sent and the KMS checked), then `key-provider` as
`{"name":"kms","id":"<hex of the KMS root CA's SubjectPublicKeyInfo>"}` (serde's field order, no
spaces). The app id is the one the deployment registered (on Phala Cloud, the app's contract
address), not compose_hash[:20]. The simulated KMS's root key is a P-256 key derived from the seed.
"""

from __future__ import annotations

import json
from collections.abc import Set
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from oauth3.attestation import app_id_without_kms
from oauth3.attestation.dstack_os import os_releases

from .seeded import Seed

KEY_PROVIDER_INFO = '{"name":"none","id":""}'
P256_ORDER = int("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551", 16)


def key_provider_info(name: str, provider_id: bytes) -> str:
    """The key-provider payload exactly as dstack serialises it: `{"name":…,"id":"<hex>"}`."""
    return json.dumps({"name": name, "id": provider_id.hex()}, separators=(",", ":"))


def kms_root_public_key(secret: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of the P-256 KMS root key derived from `secret`."""
    scalar = int.from_bytes(secret, "big") % (P256_ORDER - 1) + 1
    key = ec.derive_private_key(scalar, ec.SECP256R1())
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True, slots=True)
class KeyProvision:
    """Where the booting OS got its keys: the app id, the key-provider payload it measures, the
    os-image-hash a KMS answered (None without one), and what the app emits after boot."""

    app_id: bytes
    key_provider: str
    kms_os_image_hash: bytes | None = None
    late_events: tuple[tuple[str, bytes], ...] = ()


def simulated_kms_id(seed: str, genuine: bool = True) -> bytes:
    """The key-provider id (root public key) of the simulator's KMS, or of another KMS."""
    return kms_root_public_key(Seed(seed).take("kms/root" if genuine else "kms/other", 32))


def key_provision(
    seed: str, attacks: Set[str], kms: bool, digest: bytes, os_image_hash: bytes
) -> KeyProvision:
    """The keys' provenance for this boot: none (KMS-less) or the simulated KMS, with its lies
    (`attacks`: other-kms, late-key-provider, late-os-image-hash)."""
    late: list[tuple[str, bytes]] = []
    if "late-os-image-hash" in attacks:
        production = next(r for r in os_releases().values() if not r.dev)
        late.append(("os-image-hash", production.os_image_hash))
    if not kms:
        return KeyProvision(app_id_without_kms(digest), KEY_PROVIDER_INFO, None, tuple(late))
    genuine = key_provider_info("kms", simulated_kms_id(seed))
    if "late-key-provider" in attacks:
        late.append(("key-provider", genuine.encode()))
    honest = not {"other-kms", "late-key-provider"} & set(attacks)
    return KeyProvision(
        app_id=Seed(seed).take("kms/app-id", 20),
        key_provider=genuine if honest else key_provider_info("kms", simulated_kms_id(seed, False)),
        kms_os_image_hash=os_image_hash,
        late_events=tuple(late),
    )
