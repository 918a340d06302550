"""The sample logging app, driven through App.invoke over a real Store as the runtime does."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from charter.enclave_app.app import Caller, Outcome, all_of
from charter.enclave_app.kv import STR, U64, Store, WriteSet
from charter.enclave_app.samples.logging import PRIVATE_RECORDS, PUBLIC_RECORDS, app

USER = Caller("user", "cd" * 32, None, {})


class Node:
    """The runtime's loop in miniature: match, invoke, commit only when told to."""

    def __init__(self) -> None:
        self.store = Store()
        self.ledger: list[WriteSet] = []

    def request(self, method: str, path: str, body: Any = None, query: str = "") -> Outcome:
        match = app.match(method, path)
        assert match is not None
        raw = b"" if body is None else json.dumps(body).encode()
        tx = self.store.begin()
        outcome = app.invoke(match, tx=tx, caller=USER, body=raw, query=query, headers={})
        if outcome.commit:
            self.ledger.append(self.store.commit(tx, self.store.version + 1))
        return outcome


def payload(outcome: Outcome) -> Any:
    return json.loads(outcome.response.body)


@pytest.fixture
def node() -> Node:
    return Node()


@pytest.mark.parametrize("kind", ["private", "public"])
def test_recorded_message_can_be_read_back(node: Node, kind: str) -> None:
    posted = node.request("POST", f"/app/log/{kind}", {"id": 42, "msg": "hello"})
    assert posted.response.status == 200
    assert payload(posted) is True
    assert posted.commit is True
    read = node.request("GET", f"/app/log/{kind}", query="id=42")
    assert read.response.status == 200
    assert payload(read) == {"msg": "hello"}
    assert read.commit is False


@pytest.mark.parametrize("kind", ["private", "public"])
def test_absent_record_is_404_resource_not_found(node: Node, kind: str) -> None:
    outcome = node.request("GET", f"/app/log/{kind}", query="id=7")
    assert outcome.response.status == 404
    assert payload(outcome)["error"]["code"] == "ResourceNotFound"


def test_private_and_public_records_use_ccf_sample_maps_and_encodings(node: Node) -> None:
    node.request("POST", "/app/log/private", {"id": 1, "msg": "secret"})
    node.request("POST", "/app/log/public", {"id": 2, "msg": "open"})
    key_1 = (1).to_bytes(8, "little")
    key_2 = (2).to_bytes(8, "little")
    assert node.ledger == [
        {PRIVATE_RECORDS: {key_1: b"secret"}},
        {PUBLIC_RECORDS: {key_2: b"open"}},
    ]
    assert PRIVATE_RECORDS == "records" and PUBLIC_RECORDS == "public:records"
    public, private = node.store.snapshot()
    assert b"secret" in private and b"secret" not in public
    assert b"open" in public
    assert node.store.begin().view(PRIVATE_RECORDS, U64, STR).get(1) == "secret"


def test_private_and_public_ids_are_separate(node: Node) -> None:
    node.request("POST", "/app/log/private", {"id": 5, "msg": "p"})
    assert node.request("GET", "/app/log/public", query="id=5").response.status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": -1, "msg": "x"}, "body.id"),
        ({"id": 2**64, "msg": "x"}, "body.id"),
        ({"id": "seven", "msg": "x"}, "body.id"),
        ({"id": 1}, "body.msg"),
        ({"id": 1, "msg": "x" * (64 * 1024 + 1)}, "body.msg"),
        ({"id": 1, "msg": "é" * (32 * 1024 + 1)}, "body.msg"),
        ({"id": 1, "msg": "x", "extra": True}, "body.extra"),
    ],
)
def test_invalid_record_is_422_and_writes_nothing(
    node: Node, body: dict[str, Any], field: str
) -> None:
    outcome = node.request("POST", "/app/log/private", body)
    assert outcome.response.status == 422
    assert field in payload(outcome)["error"]["message"]
    assert outcome.commit is False
    assert node.store.version == 0


def test_message_of_exactly_64_kib_is_accepted(node: Node) -> None:
    msg = "x" * (64 * 1024)
    assert node.request("POST", "/app/log/public", {"id": 3, "msg": msg}).commit is True
    assert payload(node.request("GET", "/app/log/public", query="id=3")) == {"msg": msg}


def test_bad_query_id_is_422(node: Node) -> None:
    assert node.request("GET", "/app/log/private", query="id=abc").response.status == 422
    assert node.request("GET", "/app/log/private").response.status == 422


def test_record_claim_binds_sha256_of_the_message_as_claims_digest(node: Node) -> None:
    plain = node.request("POST", "/app/log/private", {"id": 1, "msg": "m"})
    assert plain.claims_digest is None
    claimed = node.request(
        "POST", "/app/log/private", {"id": 2, "msg": "claimed", "record_claim": True}
    )
    assert claimed.commit is True
    assert claimed.claims_digest == hashlib.sha256(b"claimed").digest()


def test_delete_removes_a_record_and_count_follows(node: Node) -> None:
    for record_id in (1, 2, 3):
        node.request("POST", "/app/log/private", {"id": record_id, "msg": "m"})
    assert payload(node.request("GET", "/app/log/private/count")) == {"count": 3}
    deleted = node.request("DELETE", "/app/log/private", query="id=2")
    assert deleted.response.status == 204
    assert deleted.commit is True
    assert node.ledger[-1] == {PRIVATE_RECORDS: {(2).to_bytes(8, "little"): None}}
    assert node.request("DELETE", "/app/log/private", query="id=2").response.status == 404
    assert payload(node.request("GET", "/app/log/private/count")) == {"count": 2}


def test_logging_endpoints_require_a_user_certificate_except_one_per_other_policy() -> None:
    """The record endpoints need a user's certificate; the policy showcase endpoints (as in
    CCF's logging sample) each declare exactly their policy."""
    endpoints = [e for e in app.endpoints() if e.include_in_api]
    assert {(e.method, e.path) for e in endpoints} >= {
        ("POST", "/app/log/private"),
        ("GET", "/app/log/private"),
        ("POST", "/app/log/public"),
        ("GET", "/app/log/public"),
    }
    showcase = {
        ("POST", "/app/log/private/jwt"): ("jwt",),
        ("GET", "/app/log/private/jwt"): ("jwt",),
        ("POST", "/app/log/private/cose"): ("user_cose_sign1",),
        ("POST", "/app/log/private/anonymous"): ("none",),
        ("GET", "/app/all_of_auth"): (all_of("user_cert", "jwt"),),
        ("GET", "/app/multi_auth"): ("user_cert", "member_cert", "jwt", "any_cert", "none"),
        ("POST", "/app/multi_auth"): (
            "user_cose_sign1", "member_cose", "user_cert", "member_cert", "jwt", "any_cert", "none",
        ),
    }  # fmt: skip
    for e in endpoints:
        assert e.auth == showcase.get((e.method, e.path), ("user_cert",)), (e.method, e.path)
    assert {(e.method, e.path) for e in endpoints} >= set(showcase)
    assert all(e.summary for e in endpoints)


def test_logging_api_document_describes_the_record_body() -> None:
    document = app.openapi()
    schema = document["components"]["schemas"]["LogRecord"]
    assert set(schema["required"]) == {"id", "msg"}
    assert schema["properties"]["id"]["minimum"] == 0
    assert "/app/log/public" in document["paths"]
