"""Roles are enforced on every endpoint, and every error reaches the SDK as its own type."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from acl_testkit import (
    POLL_S,
    SdkClient,
    acl_user_id,
    add_governance_user,
    anonymous_client,
    credential_pem,
    sdk_client,
)
from azure.confidentialledger import (
    ConfidentialLedgerCertificateCredential,
    ConfidentialLedgerClient,
)
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)

from charter.enclave_app.samples.acl_model import CONTENTS_BYTES_MAX
from charter.ledger import certs
from charter.sandbox import MEMBER_COUNT, Sandbox

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bob_paths(acl_sandbox: Sandbox) -> tuple[Path, Path]:
    return add_governance_user(acl_sandbox, "bob")


@pytest.fixture(scope="module")
def bob(acl_sandbox: Sandbox, bob_paths: tuple[Path, Path]) -> Iterator[SdkClient]:
    with sdk_client(acl_sandbox, identity=bob_paths) as client:
        yield client


@pytest.fixture(scope="module")
def bob_id(bob_paths: tuple[Path, Path]) -> str:
    return acl_user_id(bob_paths[0])


def set_role(admin: SdkClient, user_id: str, role: str) -> None:
    assert admin.create_or_update_user(user_id, {"assignedRole": role}) == {
        "assignedRole": role,
        "userId": user_id,
    }


def status_and_code(exc: HttpResponseError) -> tuple[int | None, str | None]:
    assert exc.response is not None
    return exc.response.status_code, json.loads(exc.response.text())["error"]["code"]


# ------------------------------------------------------------------------------ roles


def test_governance_user_without_a_role_record_is_an_administrator(
    acl_sandbox: Sandbox, admin: SdkClient
) -> None:
    # A fresh governance user, never given an ACL role, so this does not depend on order.
    cert, _ = add_governance_user(acl_sandbox, "carol")
    carol = acl_user_id(cert)
    assert admin.get_user(carol) == {"assignedRole": "Administrator", "userId": carol}


def test_reader_reads_but_can_neither_write_nor_manage_users(
    admin: SdkClient, bob: SdkClient, bob_id: str
) -> None:
    txid = admin.begin_create_ledger_entry(
        {"contents": "for readers"}, collection_id="roles", polling_interval=POLL_S
    ).result()["transactionId"]
    set_role(admin, bob_id, "Reader")
    assert bob.get_ledger_entry(txid)["entry"]["contents"] == "for readers"
    assert bob.get_transaction_status(txid)["state"] == "Committed"
    assert bob.get_receipt(txid)["state"] == "Ready"
    assert [c["collectionId"] for c in bob.list_collections()]
    with pytest.raises(HttpResponseError) as write:
        bob.create_ledger_entry({"contents": "not allowed"}, collection_id="roles")
    assert status_and_code(write.value) == (403, "Forbidden")
    with pytest.raises(HttpResponseError) as manage:
        bob.get_user(bob_id)
    assert status_and_code(manage.value) == (403, "Forbidden")


def test_contributor_writes_entries_but_cannot_manage_users(
    acl_sandbox: Sandbox,
    admin: SdkClient,
    bob: SdkClient,
    bob_id: str,
) -> None:
    set_role(admin, bob_id, "Contributor")
    result = bob.begin_create_ledger_entry(
        {"contents": "by a contributor"}, collection_id="roles", polling_interval=POLL_S
    ).result()
    assert bob.get_ledger_entry(result["transactionId"])["entry"]["contents"] == "by a contributor"
    with pytest.raises(HttpResponseError) as manage:
        bob.create_or_update_user(bob_id, {"assignedRole": "Administrator"})
    assert status_and_code(manage.value) == (403, "Forbidden")
    with pytest.raises(HttpResponseError) as delete:
        bob.delete_user(acl_user_id(acl_sandbox.user_paths(0)[0]))
    assert status_and_code(delete.value) == (403, "Forbidden")


def test_removed_user_loses_access_until_given_a_role_again(
    admin: SdkClient, bob: SdkClient, bob_id: str
) -> None:
    set_role(admin, bob_id, "Reader")
    admin.delete_user(bob_id)
    with pytest.raises(ResourceNotFoundError):
        admin.get_user(bob_id)
    with pytest.raises(HttpResponseError) as read:
        bob.list_collections().next()
    assert status_and_code(read.value) == (403, "Forbidden")
    set_role(admin, bob_id, "Reader")
    assert admin.get_user(bob_id)["assignedRole"] == "Reader"
    assert isinstance(list(bob.list_collections()), list)


def test_user_ids_are_fingerprints_in_either_spelling(admin: SdkClient, bob_id: str) -> None:
    lower_hex = bob_id.replace(":", "").lower()
    assert admin.create_or_update_user(lower_hex, {"assignedRole": "Reader"})["userId"] == bob_id
    assert admin.get_user(bob_id)["assignedRole"] == "Reader"


# ------------------------------------------------------------------------------ errors


def test_caller_without_a_client_certificate_is_unauthenticated(acl_sandbox: Sandbox) -> None:
    with (
        anonymous_client(acl_sandbox) as anonymous,
        pytest.raises(ClientAuthenticationError) as info,
    ):
        anonymous.get_current_ledger_entry()
    assert status_and_code(info.value)[0] == 401


def test_unknown_transaction_is_not_found_and_wait_for_commit_gives_up(
    admin: SdkClient,
) -> None:
    far = "1.999999999"
    with pytest.raises(ResourceNotFoundError) as status:
        admin.get_transaction_status(far)
    assert status_and_code(status.value) == (404, "TransactionNotFound")
    with pytest.raises(ResourceNotFoundError):
        admin.get_ledger_entry(far)
    with pytest.raises(ResourceNotFoundError):
        admin.get_receipt(far)
    with pytest.raises(ResourceNotFoundError):
        admin.begin_wait_for_commit(far, polling_interval=POLL_S).result()


def test_transaction_without_a_ledger_entry_is_not_found(admin: SdkClient, bob_id: str) -> None:
    # A role change is a transaction, but it wrote no ledger entry.
    set_role(admin, bob_id, "Reader")
    # The SDK drops the PATCH answer's transaction id, so look just before the next entry:
    # that transaction (the role change, or a signature) wrote no ledger entry.
    after = admin.begin_create_ledger_entry(
        {"contents": "after"}, collection_id="errors", polling_interval=POLL_S
    ).result()["transactionId"]
    view, seqno = after.split(".")
    # An older transaction is read back from the ledger first (Loading): the SDK's poller.
    with pytest.raises(ResourceNotFoundError) as info:
        admin.begin_get_ledger_entry(f"{view}.{int(seqno) - 1}", polling_interval=POLL_S).result()
    assert status_and_code(info.value) == (404, "EntryNotFound")
    with pytest.raises(ResourceNotFoundError):
        admin.get_ledger_entry(after, collection_id="another collection")
    with pytest.raises(ResourceNotFoundError):
        admin.get_current_ledger_entry(collection_id="never written")


def test_malformed_input_is_a_400_with_acls_error_shape(admin: SdkClient, bob_id: str) -> None:
    with pytest.raises(HttpResponseError) as txid:
        admin.get_transaction_status("not-a-txid")
    assert status_and_code(txid.value) == (400, "InvalidInput")
    with pytest.raises(HttpResponseError) as role:
        admin.create_or_update_user(bob_id, {"assignedRole": "Emperor"})
    assert status_and_code(role.value) == (400, "InvalidRole")
    with pytest.raises(HttpResponseError) as big:
        admin.create_ledger_entry({"contents": "x" * (CONTENTS_BYTES_MAX + 1)})
    assert status_and_code(big.value) == (400, "InvalidInput")
    with pytest.raises(HttpResponseError) as user:
        admin.get_user("not a fingerprint!")
    assert status_and_code(user.value) == (400, "InvalidUserId")


def test_api_versions_other_than_2022_05_13_are_refused(acl_sandbox: Sandbox) -> None:
    cert, key = acl_sandbox.user_paths(0)
    client = ConfidentialLedgerClient(
        acl_sandbox.nodes[0].url,
        credential=ConfidentialLedgerCertificateCredential(
            str(credential_pem(acl_sandbox, cert, key))
        ),
        ledger_certificate_path=str(acl_sandbox.service_cert_path),
        api_version="2099-01-01",
    )
    with client, pytest.raises(HttpResponseError) as info:
        client.get_current_ledger_entry()
    assert status_and_code(info.value) == (400, "UnsupportedApiVersion")


def test_administrator_cannot_demote_or_remove_themselves(
    acl_sandbox: Sandbox, admin: SdkClient
) -> None:
    me = acl_user_id(acl_sandbox.user_paths(0)[0])
    with pytest.raises(ResourceExistsError) as demote:
        admin.create_or_update_user(me, {"assignedRole": "Reader"})
    assert status_and_code(demote.value) == (409, "UserConflict")
    with pytest.raises(ResourceExistsError):
        admin.delete_user(me)
    assert admin.get_user(me)["assignedRole"] == "Administrator"


# ------------------------------------------------------------------------------ governance


def test_governance_and_quotes_come_from_charters_own_state(
    acl_sandbox: Sandbox, admin: SdkClient
) -> None:
    constitution = admin.get_constitution()
    assert constitution["digest"] == hashlib.sha256(constitution["script"].encode()).hexdigest()
    members = list(admin.list_consortium_members())
    assert len(members) == MEMBER_COUNT
    for member in members:
        assert member["certificate"].startswith("-----BEGIN CERTIFICATE-----")
        assert member["id"] == certs.cert_id(member["certificate"])
    quotes = admin.get_enclave_quotes()
    node_id = acl_sandbox.nodes[0].node_id
    assert quotes["currentNodeId"] == node_id
    assert quotes["enclaveQuotes"][node_id]["nodeId"] == node_id
    assert quotes["enclaveQuotes"][node_id]["raw"]
