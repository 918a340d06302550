"""The ACL app's handlers through App.invoke over a real Store, as the node runs them.

The node's `ctx.runtime` is replaced by `LedgerClock`, a few lines that answer transaction
status from a commit point the test moves, and historical states from the write sets the
store committed (the node reads them back from its ledger; the e2e and SDK tests do that), so
that handler decisions (Loading until commit or until read back, paging bounds, writes only
on the primary) can be checked without a network.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.confidentialledger.receipt import compute_claims_digest
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.enclave_app.app import Caller, Outcome
from charter.enclave_app.errors import HttpError
from charter.enclave_app.kv import Store
from charter.enclave_app.node.historical import HistoricalState
from charter.enclave_app.samples.acl import ENTRIES, USERS, app
from charter.enclave_app.samples.acl_model import (
    CLAIM_SECRET_KEY_BYTES,
    PAGE_ENTRIES_MAX,
    camel_case_receipt,
    display_user_id,
    ledger_entry_claim,
    ledger_entry_claims_digest,
    normalise_user_id,
    parse_txid,
)
from charter.governance import tables as gt
from charter.ledger.entry import WriteSet

ADMIN = Caller("user", "ab" * 32, None, {})
OTHER = Caller("user", "cd" * 32, None, {})
VIEW = 2


class LedgerClock:
    """Just enough of `RuntimeView`: txids at view 2, committed up to `commit_seqno`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.commit_seqno = 0
        self.primary = True
        self.node_id = "ee" * 32
        self.write_sets: dict[int, WriteSet] = {}
        self.fetched: set[tuple[int, int]] = set()
        self.fetches = 0

    @property
    def pending_txid(self) -> tuple[int, int] | None:
        return (VIEW, self.store.version + 1) if self.primary else None

    @property
    def commit_txid(self) -> tuple[int, int]:
        return VIEW, self.commit_seqno

    def tx_status(self, view: int, seqno: int) -> str:
        if seqno > self.store.version:
            return "Unknown"
        if view != VIEW:
            return "Invalid"
        return "Committed" if seqno <= self.commit_seqno else "Pending"

    def receipt(self, view: int, seqno: int) -> tuple[int, dict[str, Any] | None]:
        return (202, None) if seqno > self.commit_seqno else (404, None)

    # Historical states: what each committed transaction wrote. `fetches` counts the
    # requests that were not yet "read back": those answer None once, as the node's cache
    # does while the host reads the ledger.
    def state(self, seqno: int) -> HistoricalState:
        writes = self.write_sets[seqno]
        public = {m: r for m, r in writes.items() if m.startswith("public:")}
        private = {m: r for m, r in writes.items() if not m.startswith("public:")}
        zero = bytes(32)
        return HistoricalState(seqno, VIEW, public, private, zero, "", zero, None, 0, None, None)

    def _ready(self, key: tuple[int, int]) -> bool:
        if key in self.fetched:
            return True
        self.fetched.add(key)
        self.fetches += 1
        return False

    def historical_state(self, view: int, seqno: int) -> HistoricalState | None:
        assert self.tx_status(view, seqno) == "Committed"
        return self.state(seqno) if self._ready((seqno, seqno)) else None

    def historical_range(self, lo: int, hi: int) -> list[HistoricalState] | None:
        assert hi <= self.commit_seqno
        if not self._ready((lo, hi)):
            return None
        return [self.state(seqno) for seqno in range(lo, hi + 1)]


class Node:
    def __init__(self) -> None:
        self.store = Store()
        self.runtime = LedgerClock(self.store)
        tx = self.store.begin()
        for caller in (ADMIN, OTHER):
            tx.put(gt.USERS_CERTS, gt.id_key(caller.id), b"-----BEGIN CERTIFICATE-----")
        self.runtime.write_sets[1] = self.store.commit(tx, 1)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: str = "",
        caller: Caller = ADMIN,
    ) -> Outcome:
        match = app.match(method, path)
        assert match is not None, path
        raw = (
            b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        )
        tx = self.store.begin()
        outcome = app.invoke(
            match, tx=tx, caller=caller, body=raw, query=query, headers={}, runtime=self.runtime
        )
        if outcome.commit:
            seqno = self.store.version + 1
            self.runtime.write_sets[seqno] = self.store.commit(tx, seqno)
        return outcome

    def get(self, path: str, query: str = "") -> Outcome:
        """A read as a client makes it: asked again while it answers Loading."""
        outcome = self.request("GET", path, query=query)
        if json.loads(outcome.response.body).get("state") == "Loading":
            outcome = self.request("GET", path, query=query)
        return outcome

    def write(self, contents: str, collection: str = "c") -> str:
        outcome = self.request(
            "POST", "/app/transactions", {"contents": contents}, f"collectionId={collection}"
        )
        assert outcome.response.status == 200 and outcome.commit
        return f"{VIEW}.{self.store.version}"


def body(outcome: Outcome) -> Any:
    return json.loads(outcome.response.body)


def error_code(outcome: Outcome) -> tuple[int, str]:
    return outcome.response.status, body(outcome)["error"]["code"]


@pytest.fixture
def node() -> Node:
    return Node()


# ------------------------------------------------------------------------------ claims


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    collection=st.text(min_size=1, max_size=40),
    contents=st.text(max_size=200),
    key=st.binary(min_size=CLAIM_SECRET_KEY_BYTES, max_size=CLAIM_SECRET_KEY_BYTES),
)
def test_claims_digest_is_the_one_the_sdk_recomputes(
    collection: str, contents: str, key: bytes
) -> None:
    # hypothesis' text() holds no lone surrogates; those are refused at the door (below).
    claim = ledger_entry_claim(collection, contents, key)
    assert ledger_entry_claims_digest(collection, contents, key).hex() == compute_claims_digest(
        [claim]
    )


def test_written_entry_binds_its_claims_digest_and_keeps_the_key_private(node: Node) -> None:
    outcome = node.request("POST", "/app/transactions", {"contents": "hello"}, "collectionId=c")
    assert outcome.claims_digest is not None
    record = json.loads(node.store.begin().get(ENTRIES, b"c") or b"")
    assert record["seqno"] == node.store.version
    key = bytes.fromhex(record["secretKey"])
    assert outcome.claims_digest == ledger_entry_claims_digest("c", "hello", key)
    assert not ENTRIES.startswith("public:"), "contents and claim keys are encrypted in the ledger"


def test_contents_that_are_not_unicode_are_refused_and_write_nothing(node: Node) -> None:
    outcome = node.request("POST", "/app/transactions", b'{"contents": "\\ud800"}')
    assert error_code(outcome) == (400, "InvalidInput")
    assert outcome.commit is False


# ------------------------------------------------------------------------------ entries


def test_entry_is_loading_until_its_transaction_commits(node: Node) -> None:
    txid = node.write("soon")
    assert body(node.request("GET", f"/app/transactions/{txid}")) == {"state": "Loading"}
    assert body(node.request("GET", f"/app/transactions/{txid}/status"))["state"] == "Pending"
    node.runtime.commit_seqno = node.store.version
    found = body(node.request("GET", f"/app/transactions/{txid}"))
    assert found == {
        "state": "Ready",
        "entry": {"collectionId": "c", "contents": "soon", "transactionId": txid},
    }


def test_only_the_latest_entry_of_each_collection_stays_in_the_store(node: Node) -> None:
    txids = [node.write(f"e{i}", collection=f"c{i % 3}") for i in range(30)]
    node.runtime.commit_seqno = node.store.version
    held = list(node.store.begin().items(ENTRIES))
    assert len(held) == 3
    # Older entries come back from history: Loading while the node reads them back.
    assert body(node.request("GET", f"/app/transactions/{txids[4]}")) == {"state": "Loading"}
    found = body(node.request("GET", f"/app/transactions/{txids[4]}"))
    assert found["entry"] == {"collectionId": "c1", "contents": "e4", "transactionId": txids[4]}


def test_listing_pages_are_loading_until_read_back_and_link_to_themselves(node: Node) -> None:
    node.write("x")
    node.runtime.commit_seqno = node.store.version
    loading = body(node.request("GET", "/app/transactions", query="collectionId=c"))
    assert loading["state"] == "Loading" and loading["entries"] == []
    again = body(
        node.request("GET", "/app/transactions", query=loading["nextLink"].partition("?")[2])
    )
    assert again["state"] == "Ready" and [e["contents"] for e in again["entries"]] == ["x"]


def test_entry_of_another_view_is_invalid_not_found(node: Node) -> None:
    txid = node.write("x")
    node.runtime.commit_seqno = node.store.version
    seqno = txid.split(".")[1]
    outcome = node.request("GET", f"/app/transactions/1.{seqno}")
    assert error_code(outcome) == (404, "InvalidTransactionId")


def test_write_on_a_backup_is_refused_and_writes_nothing(node: Node) -> None:
    node.runtime.primary = False
    outcome = node.request("POST", "/app/transactions", {"contents": "x"})
    assert error_code(outcome) == (503, "NotPrimary")
    assert outcome.commit is False


def test_listing_shows_only_committed_entries_and_pages_at_the_limit(node: Node) -> None:
    txids = [node.write(f"e{i}") for i in range(PAGE_ENTRIES_MAX + 3)]
    node.runtime.commit_seqno = node.store.version - 1  # the last write is still pending
    first = body(node.get("/app/transactions", query="collectionId=c"))
    assert [e["transactionId"] for e in first["entries"]] == txids[:PAGE_ENTRIES_MAX]
    link = first["nextLink"]
    assert link.startswith("/app/transactions?")
    second = body(node.get("/app/transactions", query=link.partition("?")[2]))
    assert [e["transactionId"] for e in second["entries"]] == txids[PAGE_ENTRIES_MAX:-1]
    assert "nextLink" not in second


def test_listing_a_collection_skips_other_collections(node: Node) -> None:
    mine = node.write("mine", "a")
    node.write("theirs", "b")
    node.runtime.commit_seqno = node.store.version
    listed = body(node.get("/app/transactions", query="collectionId=a"))["entries"]
    assert [e["transactionId"] for e in listed] == [mine]


def test_receipt_is_loading_while_not_yet_signed(node: Node) -> None:
    txid = node.write("x")
    answer = body(node.request("GET", f"/app/transactions/{txid}/receipt"))
    assert answer == {"state": "Loading", "transactionId": txid, "receipt": None}


def test_malformed_body_is_400_not_422(node: Node) -> None:
    assert error_code(node.request("POST", "/app/transactions", b"{not json")) == (
        400,
        "InvalidInput",
    )
    assert error_code(node.request("POST", "/app/transactions", [1, 2])) == (400, "InvalidInput")
    outcome = node.request("POST", "/app/transactions", {"contents": "x"}, "collectionId=%00")
    assert error_code(outcome) == (400, "InvalidCollectionId")


# ------------------------------------------------------------------------------ users


def test_role_record_overrides_the_governance_default(node: Node) -> None:
    patched = node.request("PATCH", f"/app/users/{OTHER.id}", {"assignedRole": "Reader"})
    assert body(patched) == {"assignedRole": "Reader", "userId": display_user_id(OTHER.id)}
    refused = node.request("POST", "/app/transactions", {"contents": "x"}, caller=OTHER)
    assert error_code(refused) == (403, "Forbidden")
    stored = json.loads(node.store.begin().get(USERS, OTHER.id.encode()) or b"")
    assert stored == {"assignedRole": "Reader"}


def test_removed_governance_user_has_no_role(node: Node) -> None:
    assert node.request("DELETE", f"/app/users/{OTHER.id}").response.status == 204
    outcome = node.request("GET", "/app/collections", caller=OTHER)
    assert error_code(outcome) == (403, "Forbidden")
    assert error_code(node.request("GET", f"/app/users/{OTHER.id}")) == (404, "UserNotFound")


def test_new_user_needs_a_role(node: Node) -> None:
    outcome = node.request("PATCH", "/app/users/" + "12" * 32, {})
    assert error_code(outcome) == (400, "InvalidRole")


def test_opaque_user_ids_are_kept_as_given(node: Node) -> None:
    aad = "7f0b5e2c-1b1e-4f7e-9a55-3c8a1d2b4e6f"
    outcome = node.request("PATCH", f"/app/users/{aad}", {"assignedRole": "Contributor"})
    assert body(outcome) == {"assignedRole": "Contributor", "userId": aad}


# ------------------------------------------------------------------------------ model


def test_fingerprint_spellings_name_the_same_user() -> None:
    hex_id = "5f233d26e228889c06e08821fac7b29af881306bf91541f2340505444cad5ab5"
    colons = display_user_id(hex_id)
    assert colons.startswith("5F:23:3D")
    assert normalise_user_id(colons) == normalise_user_id(hex_id.upper()) == hex_id


@pytest.mark.parametrize(
    "text", ["", "1", "1.", ".1", "0.1", "1.0", "a.b", "1.2.3", "9" * 20 + ".1"]
)
def test_malformed_transaction_ids_are_refused(text: str) -> None:
    with pytest.raises(HttpError) as info:
        parse_txid(text)
    assert info.value.status == 400


def test_receipt_keys_become_camel_case_and_values_stay() -> None:
    ccf = {
        "leaf_components": {"claims_digest": "00", "write_set_digest": "11"},
        "node_id": "n",
        "proof": [{"left": "aa"}],
        "service_endorsements": [],
    }
    assert camel_case_receipt(ccf) == {
        "leafComponents": {"claimsDigest": "00", "writeSetDigest": "11"},
        "nodeId": "n",
        "proof": [{"left": "aa"}],
        "serviceEndorsements": [],
    }
