"""The /attestation document's one home: both layouts built and read back, member order pinned,
the report_data each binds, and every malformed member named."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from oauth3.attestation import (
    LAYOUT,
    LAYOUT_V2,
    ResponseError,
    batch_report_data_for,
    parse_response,
    report_data_for,
)
from oauth3.attestation.merkle import MerkleTree
from oauth3.attestation.response import BatchBodies, QuotedEvidence, v1_body

EVIDENCE = QuotedEvidence(quote=b"\x04\x00quote", event_log="[]", vm_config='{"cpu":1}')
DIGEST = hashlib.sha256(b'{"info":1}').digest()
NONCES = [bytes([n]) * 32 for n in range(1, 6)]
V1_ORDER = ["layout", "quote", "eventLog", "reportData", "vmConfig", "generatedAt", "nonce"]


def test_a_v1_document_reads_back_and_binds_its_nonce() -> None:
    report_data = report_data_for(DIGEST, NONCES[0])
    body = v1_body(EVIDENCE, report_data, NONCES[0])
    assert list(orjson.loads(body)) == V1_ORDER
    response = parse_response(body)
    assert (response.layout, response.quote, response.nonce) == (LAYOUT, EVIDENCE.quote, NONCES[0])
    assert response.report_data == report_data
    assert response.bound_report_data(DIGEST, NONCES[0]) == report_data
    assert response.generated_at is not None
    assert response.generated_at.endswith("Z")


def test_a_v1_document_without_a_nonce_binds_zeros() -> None:
    body = v1_body(EVIDENCE, report_data_for(DIGEST), None)
    assert orjson.loads(body)["nonce"] is None
    assert parse_response(body).bound_report_data(DIGEST, None) == DIGEST + bytes(32)


def test_every_client_of_a_batch_reads_the_batch_root_from_its_own_proof() -> None:
    tree = MerkleTree(NONCES)
    report_data = batch_report_data_for(DIGEST, tree.root)
    bodies = BatchBodies.for_batch(EVIDENCE, tree, report_data)
    for index, nonce in enumerate(NONCES):
        body = bodies.body(nonce, index)
        assert list(orjson.loads(body)) == [*V1_ORDER, "merkle"]
        response = parse_response(body)
        assert response.layout == LAYOUT_V2
        assert response.proof is not None
        assert response.proof.batch_size == len(NONCES)
        assert response.bound_report_data(DIGEST, nonce) == report_data


def test_a_proof_for_another_leaf_leads_to_another_root() -> None:
    tree = MerkleTree(NONCES)
    report_data = batch_report_data_for(DIGEST, tree.root)
    response = parse_response(BatchBodies.for_batch(EVIDENCE, tree, report_data).body(NONCES[1], 0))
    assert response.bound_report_data(DIGEST, NONCES[1]) != report_data


def test_the_binding_is_to_the_clients_nonce_not_the_documents() -> None:
    """A replayed v1 answer names its own nonce; bound to the client's, it asks for another
    report_data than the quote carries."""
    report_data = report_data_for(DIGEST, NONCES[0])
    response = parse_response(v1_body(EVIDENCE, report_data, NONCES[0]))
    assert response.bound_report_data(DIGEST, NONCES[1]) != report_data
    tree = MerkleTree(NONCES)
    batch = batch_report_data_for(DIGEST, tree.root)
    v2 = parse_response(BatchBodies.for_batch(EVIDENCE, tree, batch).body(NONCES[0], 0))
    assert v2.bound_report_data(DIGEST, NONCES[0]) == batch
    with pytest.raises(ResponseError, match="binds a nonce"):
        v2.bound_report_data(DIGEST, None)


def _v1(**changes: object) -> bytes:
    doc = orjson.loads(v1_body(EVIDENCE, report_data_for(DIGEST, NONCES[0]), NONCES[0]))
    doc.update(changes)
    return orjson.dumps({k: v for k, v in doc.items() if v != "<drop>"})


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"[]", "not a JSON object"),
        (b"{", "not JSON"),
        (_v1(layout="oauth3/v9"), "layout"),
        (_v1(quote="<drop>"), "'quote'"),
        (_v1(quote="not base64!"), "'quote'"),
        (_v1(reportData="ab"), "'reportData'"),
        (_v1(nonce="zz"), "'nonce'"),
        (_v1(eventLog=5), "'eventLog'"),
        (_v1(layout=LAYOUT_V2), "merkle"),
        (_v1(layout=LAYOUT_V2, merkle={"leafIndex": True, "batchSize": 1, "path": []}), "merkle"),
        (_v1(layout=LAYOUT_V2, merkle={"leafIndex": 0, "batchSize": 1, "path": ["ab"]}), "merkle"),
    ],
)
def test_a_malformed_document_names_what_is_wrong(body: bytes, named: str) -> None:
    with pytest.raises(ResponseError, match=named):
        parse_response(body)


def test_a_v2_proof_outside_its_tree_is_a_response_error() -> None:
    proof = {"leafIndex": 3, "batchSize": 2, "path": []}
    response = parse_response(_v1(layout=LAYOUT_V2, merkle=proof))
    with pytest.raises(ResponseError, match="outside"):
        response.bound_report_data(DIGEST, NONCES[0])


def test_the_quote_member_is_the_quote_in_standard_base64() -> None:
    doc = orjson.loads(v1_body(EVIDENCE, report_data_for(DIGEST), None))
    assert base64.b64decode(doc["quote"]) == EVIDENCE.quote
