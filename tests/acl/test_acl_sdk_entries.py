"""The unmodified Azure SDK writes, reads, lists and proves ledger entries on Charter."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from acl_testkit import POLL_S, SdkClient, ccf_verify, sdk_client, snake_receipt
from azure.confidentialledger.receipt import compute_claims_digest, verify_receipt
from cryptography.exceptions import InvalidSignature

from charter.enclave_app.samples.acl_model import DEFAULT_COLLECTION, PAGE_ENTRIES_MAX
from charter.ledger.errors import LedgerError
from charter.ledger.receipt import verify_json_receipt
from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e


def write(client: SdkClient, contents: str, collection: str | None) -> str:
    poller = client.begin_create_ledger_entry(
        {"contents": contents}, collection_id=collection, polling_interval=POLL_S
    )
    result = poller.result()
    assert result["collectionId"] == (collection or DEFAULT_COLLECTION)
    txid: str = result["transactionId"]
    return txid


@pytest.fixture(scope="module")
def written(admin: SdkClient) -> dict[str, list[tuple[str, str]]]:
    """Entries in two collections and the default one: collection -> [(txid, contents)]."""
    out: dict[str, list[tuple[str, str]]] = {"alpha": [], "beta": [], DEFAULT_COLLECTION: []}
    for i in range(3):
        for collection in ("alpha", "beta"):
            contents = f"{collection} entry {i}"
            out[collection].append((write(admin, contents, collection), contents))
    out[DEFAULT_COLLECTION].append(
        (write(admin, "no collection named", None), "no collection named")
    )
    return out


def test_entries_written_to_two_collections_are_committed_and_read_back(
    admin: SdkClient, written: dict[str, list[tuple[str, str]]]
) -> None:
    for collection, entries in written.items():
        for txid, contents in entries:
            assert admin.get_transaction_status(txid) == {
                "state": "Committed",
                "transactionId": txid,
            }
            found = admin.begin_get_ledger_entry(
                txid, collection_id=collection, polling_interval=POLL_S
            ).result()
            assert found["state"] == "Ready"
            assert found["entry"] == {
                "collectionId": collection,
                "contents": contents,
                "transactionId": txid,
            }


def test_current_entry_is_the_latest_of_its_collection(
    admin: SdkClient, written: dict[str, list[tuple[str, str]]]
) -> None:
    for collection in ("alpha", "beta"):
        txid, contents = written[collection][-1]
        current = admin.get_current_ledger_entry(collection_id=collection)
        assert current == {"collectionId": collection, "contents": contents, "transactionId": txid}
    assert admin.get_current_ledger_entry()["contents"] == "no collection named"


def test_collections_list_every_collection_written_to(
    admin: SdkClient, written: dict[str, list[tuple[str, str]]]
) -> None:
    names = {c["collectionId"] for c in admin.list_collections()}
    assert set(written) <= names


def test_listing_returns_a_collections_entries_in_order_and_honours_the_range(
    admin: SdkClient, written: dict[str, list[tuple[str, str]]]
) -> None:
    for collection in ("alpha", "beta"):
        listed = list(admin.list_ledger_entries(collection_id=collection))
        assert [(e["transactionId"], e["contents"]) for e in listed] == written[collection]
    (first, _), (second, contents), (third, _) = written["alpha"]
    ranged = list(
        admin.list_ledger_entries(
            collection_id="alpha", from_transaction_id=second, to_transaction_id=second
        )
    )
    assert [(e["transactionId"], e["contents"]) for e in ranged] == [(second, contents)]
    assert len(list(admin.list_ledger_entries(collection_id="alpha", to_transaction_id=first))) == 1
    assert (
        len(list(admin.list_ledger_entries(collection_id="alpha", from_transaction_id=third))) == 1
    )


def test_listing_more_than_a_page_follows_next_link_to_every_entry(
    admin: SdkClient,
) -> None:
    count = PAGE_ENTRIES_MAX + 7
    txids = []
    for i in range(count):
        # Only the last write waits for commit: listing shows committed entries.
        result = admin.create_ledger_entry({"contents": f"page {i}"}, collection_id="paged")
        txids.append(result["transactionId"])
    admin.begin_wait_for_commit(txids[-1], polling_interval=POLL_S).result()
    # Pages still being read back from the ledger come empty, linking to themselves.
    pages = [list(page) for page in admin.list_ledger_entries(collection_id="paged").by_page()]
    assert len([page for page in pages if page]) == 2
    listed = [entry for page in pages for entry in page]
    assert [e["transactionId"] for e in listed] == txids
    assert [e["contents"] for e in listed] == [f"page {i}" for i in range(count)]


def test_receipt_verifies_with_the_sdk_charter_and_ccf_with_its_application_claims(
    acl_sandbox: Sandbox,
    admin: SdkClient,
    written: dict[str, list[tuple[str, str]]],
) -> None:
    service_pem = acl_sandbox.service_cert_path.read_text()
    for collection in ("alpha", "beta"):
        txid, contents = written[collection][0]
        answer = admin.begin_get_receipt(txid, polling_interval=POLL_S).result()
        assert answer["state"] == "Ready" and answer["transactionId"] == txid
        claims = answer["applicationClaims"]
        assert claims[0]["ledgerEntry"]["contents"] == contents
        assert claims[0]["ledgerEntry"]["collectionId"] == collection
        receipt = answer["receipt"]
        verify_receipt(receipt, service_pem, application_claims=claims)
        claims_digest = bytes.fromhex(compute_claims_digest(claims))
        assert receipt["leafComponents"]["claimsDigest"] == claims_digest.hex()
        root = verify_json_receipt(snake_receipt(receipt), service_pem, claims_digest=claims_digest)
        assert len(root) == 32
        ccf_verify(receipt, service_pem)


def _tamper_write_set(receipt: dict[str, Any]) -> None:
    digest = receipt["leafComponents"]["writeSetDigest"]
    receipt["leafComponents"]["writeSetDigest"] = ("1" if digest[0] != "1" else "2") + digest[1:]


def _tamper_proof(receipt: dict[str, Any]) -> None:
    step = receipt["proof"][0]
    side = "left" if "left" in step else "right"
    step[side] = ("1" if step[side][0] != "1" else "2") + step[side][1:]


@pytest.mark.parametrize("tamper", [_tamper_write_set, _tamper_proof])
def test_tampered_receipt_fails_the_sdk_charter_and_ccf(
    acl_sandbox: Sandbox,
    admin: SdkClient,
    written: dict[str, list[tuple[str, str]]],
    tamper: Any,
) -> None:
    service_pem = acl_sandbox.service_cert_path.read_text()
    txid, _ = written["beta"][1]
    answer = admin.begin_get_receipt(txid, polling_interval=POLL_S).result()
    receipt = copy.deepcopy(answer["receipt"])
    tamper(receipt)
    with pytest.raises(ValueError):
        verify_receipt(receipt, service_pem, application_claims=answer["applicationClaims"])
    with pytest.raises(LedgerError):
        verify_json_receipt(snake_receipt(receipt), service_pem)
    with pytest.raises(InvalidSignature):
        ccf_verify(receipt, service_pem)


def test_receipt_with_altered_claims_fails_the_sdk_and_charter(
    acl_sandbox: Sandbox,
    admin: SdkClient,
    written: dict[str, list[tuple[str, str]]],
) -> None:
    service_pem = acl_sandbox.service_cert_path.read_text()
    txid, _ = written["alpha"][2]
    answer = admin.begin_get_receipt(txid, polling_interval=POLL_S).result()
    forged = copy.deepcopy(answer["applicationClaims"])
    forged[0]["ledgerEntry"]["contents"] = "something else"
    with pytest.raises(ValueError):
        verify_receipt(answer["receipt"], service_pem, application_claims=forged)
    with pytest.raises(LedgerError):
        verify_json_receipt(
            snake_receipt(answer["receipt"]),
            service_pem,
            claims_digest=bytes.fromhex(compute_claims_digest(forged)),
        )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_sdk_connects_by_ip_and_by_name_with_only_the_service_certificate(
    acl_sandbox: Sandbox, host: str
) -> None:
    with sdk_client(acl_sandbox, host=host) as client:
        assert (
            client.get_transaction_status(write(client, f"via {host}", "hosts"))["state"]
            == "Committed"
        )
