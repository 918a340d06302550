"""On a three-node network, a backup serves the SDK: writes are forwarded to the primary, and
a receipt fetched from a backup is the primary's receipt and verifies the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from acl_testkit import POLL_S, ccf_verify, sdk_client, snake_receipt, start_sandbox
from azure.confidentialledger.receipt import compute_claims_digest, verify_receipt

from charter.ledger.receipt import verify_json_receipt
from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sandbox = start_sandbox(tmp_path_factory.mktemp("acl3") / "sandbox", nodes=3)
    try:
        yield sandbox
    finally:
        sandbox.stop()


def test_receipt_from_a_backup_verifies_the_same_as_from_the_primary(network: Sandbox) -> None:
    primary_id = asyncio.run(network.wait_for_primary())
    primary = next(i for i, n in enumerate(network.nodes) if n.node_id == primary_id)
    backup = next(i for i, n in enumerate(network.nodes) if n.node_id != primary_id)
    service_pem = network.service_cert_path.read_text()
    with (
        sdk_client(network, node=backup) as on_backup,
        sdk_client(network, node=primary) as on_primary,
    ):
        # Written through the backup: forwarded to the primary, answered once applied here.
        written = on_backup.begin_create_ledger_entry(
            {"contents": "via a backup"}, collection_id="replicated", polling_interval=POLL_S
        ).result()
        txid = written["transactionId"]
        assert on_backup.get_ledger_entry(txid)["entry"]["contents"] == "via a backup"
        from_backup = on_backup.begin_get_receipt(txid, polling_interval=POLL_S).result()
        from_primary = on_primary.begin_get_receipt(txid, polling_interval=POLL_S).result()
    assert from_backup == from_primary
    claims = from_backup["applicationClaims"]
    roots = []
    for answer in (from_backup, from_primary):
        verify_receipt(answer["receipt"], service_pem, application_claims=claims)
        roots.append(
            verify_json_receipt(
                snake_receipt(answer["receipt"]),
                service_pem,
                claims_digest=bytes.fromhex(compute_claims_digest(claims)),
            )
        )
        ccf_verify(answer["receipt"], service_pem)
    assert roots[0] == roots[1]
