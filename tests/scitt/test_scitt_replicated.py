"""On a two-node network: a receipt fetched from a backup is the primary's, receipts and
transparent statements survive a restart of the whole network, and the ledger holding the
registrations passes `charter ledger audit`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from scitt_testkit import (
    CONTENT_TYPE,
    Pyscitt,
    SigningIdentity,
    set_policy,
    sign,
    start_sandbox,
    url_of,
)

from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def network(
    tmp_path_factory: pytest.TempPathFactory, issuer_identity: SigningIdentity
) -> Iterator[Sandbox]:
    sandbox = start_sandbox(tmp_path_factory.mktemp("scitt2") / "sandbox", nodes=2)
    try:
        set_policy(
            sandbox, acceptedIssuers=[issuer_identity.issuer], acceptedContentTypes=[CONTENT_TYPE]
        )
        yield sandbox
    finally:
        sandbox.stop()


def fetch(pyscitt: Pyscitt, sandbox: Sandbox, node: int, txid: str, into: Path) -> bytes:
    """pyscitt's `Client.get_receipt` etc. against one node; returns the receipt."""
    pyscitt.driver("fetch", url_of(sandbox, node), str(sandbox.service_cert_path), txid, str(into))
    return (into / "receipt.cose").read_bytes()


def test_a_joined_node_holds_the_issuer_the_service_started_with(network: Sandbox) -> None:
    """start.cose_signatures is only in node 0's config; node 1 joined and learnt it from
    the replicated ledger, so it would sign (and does serve) the same issuer."""

    async def issuers() -> list[object]:
        found = []
        for node in network.nodes:
            async with network.client(node) as client:
                answer = await client.get("/.well-known/transparency-configuration")
                assert answer.status == 200
                found.append(cbor2.loads(answer.body)["issuer"])
        return found

    # A joiner serves before it has replayed all of the ledger: give it time to catch up to
    # the genesis transaction that holds the setting (it must never show another issuer).
    expected = network.nodes[0].rpc_address
    deadline = time.monotonic() + 20
    found = asyncio.run(issuers())
    while found != [expected] * 2 and time.monotonic() < deadline:
        assert all(issuer in (expected, "") for issuer in found), found
        time.sleep(0.2)
        found = asyncio.run(issuers())
    assert found == [expected] * 2


def test_receipts_from_a_backup_equal_the_primarys_and_survive_a_restart(
    pyscitt: Pyscitt, network: Sandbox, issuer_identity: SigningIdentity, tmp_path: Path
) -> None:
    primary_id = asyncio.run(network.wait_for_primary())
    primary = next(i for i, n in enumerate(network.nodes) if n.node_id == primary_id)
    backup = 1 - primary
    signed = sign(pyscitt, issuer_identity, b'{"replicated": true}', tmp_path / "r.cose")
    # Submitted to the backup: forwarded to the primary, polled and fetched on the backup.
    done = pyscitt.scitt(
        "submit", str(signed), "--url", url_of(network, backup),
        "--cacert", str(network.service_cert_path),
        "--transparent-statement", str(tmp_path / "submitted.cose"),
    )  # fmt: skip
    txid = done.stdout.rsplit("transaction ", 1)[1].split()[0]

    from_backup = fetch(pyscitt, network, backup, txid, tmp_path / "backup")
    from_primary = fetch(pyscitt, network, primary, txid, tmp_path / "primary")
    assert from_backup == from_primary
    for side in ("backup", "primary"):
        pyscitt.scitt(
            "validate", str(tmp_path / side / "transparent.cose"),
            "--service-trust-store", str(tmp_path / side / "trust"),
        )  # fmt: skip

    network.stop()
    asyncio.run(network.start())
    assert network.resumed
    asyncio.run(network.wait_for_primary())
    after = fetch(pyscitt, network, 0, txid, tmp_path / "after")
    assert after == from_primary
    assert (tmp_path / "after" / "transparent.cose").read_bytes() == (
        tmp_path / "primary" / "transparent.cose"
    ).read_bytes()
    # The trust store saved before the restart still validates what is served after it.
    pyscitt.scitt(
        "validate", str(tmp_path / "after" / "transparent.cose"),
        "--service-trust-store", str(tmp_path / "primary" / "trust"),
    )  # fmt: skip

    # The ledger with the registrations (public:scitt.entry) audits with the CLI; the
    # network is running, so its last chunk is still in progress.
    ledger = network.nodes[0].directory / "workspace" / "ledger"
    audit = subprocess.run(
        [str(Path(sys.executable).parent / "charter"), "ledger", "audit", str(ledger),
         "--service-cert", str(network.service_cert_path), "--include-uncommitted"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "is valid" in audit.stdout
    assert "service identity matches" in audit.stdout
