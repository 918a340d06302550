"""Rekeys and recovery shares on a real 3-node network (real processes, TLS, files).

Private and public writes around two rekeys; every node's ledger then validates with
`ccf.ledger`, and every private value reads back, through the service and from the ledger
files. Each member fetches its share and decrypts it with its own key; any k of the shares
give back ledger secrets that open every entry of every node's ledger (so they are exactly
the node's secrets), and k-1 do not. A node restarted from its sealed state after the rekeys
keeps serving private reads. The member CLI shows who holds a share and refuses to submit
while the service is not waiting for shares."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import (
    ccf_validate,
    log_tails,
    make_sandbox,
    primary_index,
    read,
    start_sandbox,
    wait_committed_on,
    wait_ready,
    write,
)

from charter.enclave_app.kv import Store
from charter.enclave_app.node.shares import RecoveryShareError, recover_ledger_secrets
from charter.identity import Network
from charter.ledger.chunks import LedgerReader
from charter.ledger.entry import decode_entry, decrypt_private
from charter.ledger.history import History
from charter.member import Member, decrypt_share, load_encryption_key
from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e

THRESHOLD = 2  # the sandbox's recovery_threshold
REKEY = [{"name": "trigger_ledger_rekey", "args": {}}]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = start_sandbox(make_sandbox(tmp_path_factory.mktemp("e2e-shares") / "sb", nodes=3))
    try:
        yield sb
    finally:
        sb.stop()


def _ledger_entries(ledger_dir: Path) -> list[bytes]:
    reader = LedgerReader(str(ledger_dir))
    return [bytes(raw) for _, raw in reader.entries(1, None)]


def _public_state(entries: list[bytes]) -> Store:
    """The public KV state the ledger holds: what a recovering node replays first."""
    store = Store()
    for raw in entries:
        entry, _ = decode_entry(raw)
        store.apply(dict(entry.public), entry.seqno)
    return store


def _open_every_entry(entries: list[bytes], secrets: list[tuple[int, bytes]]) -> set[str]:
    """Check every entry (GCM tag, commit evidence) with the secret for its seqno and
    return the private log messages found."""
    history = History()
    records: set[str] = set()
    for raw in entries:
        entry, _ = decode_entry(raw)
        secret = [s for start, s in secrets if start <= entry.seqno][-1]
        history.append_raw(raw, secret=secret)
        if entry.private_ciphertext:
            for value in decrypt_private(entry, secret).get("records", {}).values():
                if value is not None:
                    records.add(value.decode())
    return records


async def _write_round(sb: Sandbox, base: int, count: int) -> dict[int, str]:
    written = {}
    primary = sb.nodes[await primary_index(sb)]
    last = None
    for i in range(base, base + count):
        last = await write(sb, primary, i, f"private-{i}")
        written[i] = f"private-{i}"
        await write(sb, primary, i, f"public-{i}", public=True)
    assert last is not None
    for node in sb.nodes:
        await wait_committed_on(sb, node, last.seqno)
    return written


def test_private_writes_survive_two_rekeys_and_any_k_shares_recover_the_secrets(
    net: Sandbox,
) -> None:
    async def go() -> dict[int, str]:
        written = await _write_round(net, 100, 6)
        async with net.client() as c:
            await net.pass_proposal(c, REKEY)
        written |= await _write_round(net, 200, 6)
        async with net.client() as c:
            await net.pass_proposal(c, REKEY)
        written |= await _write_round(net, 300, 6)
        for node in net.nodes:
            for key, msg in written.items():
                assert await read(net, node, key) == msg, f"node{node.index} key {key}"
        return written

    written = asyncio.run(go())
    ledger_dirs = [n.directory / "workspace" / "ledger" for n in net.nodes]
    for ledger_dir in ledger_dirs:
        report = ccf_validate(ledger_dir)
        assert report["transactions"] > 0, report

    network = Network.load(net.network_path)

    async def fetch() -> dict[str, bytes]:
        shares = {}
        async with net.client() as c:
            for i, (cert, key) in enumerate(net.member_identities()):
                member = Member(c, cert, key)
                encrypted = await c.encrypted_share(member.id)
                private_key = load_encryption_key(network.member_encryption_key(i))
                shares[member.id] = decrypt_share(private_key, encrypted)
        return shares

    shares = asyncio.run(fetch())
    # Shares in the wire form of ledger/shamir.py: version 1, a distinct x, a 32-byte y.
    assert len(shares) == 3 and all(s[0] == 1 and len(s) == 34 for s in shares.values())
    assert len({s[1] for s in shares.values()}) == 3
    entries = _ledger_entries(ledger_dirs[0])
    state = _public_state(entries)
    recovered = []
    for chosen in itertools.combinations(sorted(shares), THRESHOLD):
        secrets = recover_ledger_secrets(state.begin(), {m: shares[m] for m in chosen})
        recovered.append(secrets)
    assert all(r == recovered[0] for r in recovered)
    secrets = recovered[0]
    assert len(secrets) == 3 and secrets[0][0] == 1, [s for s, _ in secrets]
    for ledger_dir in ledger_dirs:
        records = _open_every_entry(_ledger_entries(ledger_dir), secrets)
        assert set(written.values()) <= records
    for member_id in shares:
        with pytest.raises(RecoveryShareError) as err:
            recover_ledger_secrets(state.begin(), {member_id: shares[member_id]})
        assert err.value.code == "NotEnoughRecoveryShares"


def test_a_node_restarted_after_the_rekeys_keeps_reading_private_values(net: Sandbox) -> None:
    async def go() -> None:
        written = await _write_round(net, 400, 3)
        async with net.client() as c:
            await net.pass_proposal(c, REKEY)
        primary = await primary_index(net)
        backup = net.nodes[(primary + 1) % len(net.nodes)]
        backup.stop()
        written |= await _write_round_on_primary(net, 500, 3)
        backup.start()
        await asyncio.to_thread(backup.wait_started)
        await wait_ready(net, backup)
        written |= await _write_round(net, 600, 3)
        for key, msg in written.items():
            assert await read(net, backup, key) == msg, log_tails(net)

    asyncio.run(go())


async def _write_round_on_primary(sb: Sandbox, base: int, count: int) -> dict[int, str]:
    """Writes committed on the primary alone (a backup is down)."""
    written = {}
    primary = sb.nodes[await primary_index(sb)]
    last = None
    for i in range(base, base + count):
        last = await write(sb, primary, i, f"private-{i}")
        written[i] = f"private-{i}"
    assert last is not None
    await wait_committed_on(sb, primary, last.seqno)
    return written


def _charter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "charter"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_member_cli_shows_share_holders_and_refuses_while_not_recovering(
    net: Sandbox,
) -> None:
    status = _charter("recovery", "status", "--network", str(net.network_path), "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["serviceStatus"] == "Open"
    assert len(doc["recoveryMembers"]) == 3
    assert (doc["submittedCount"], doc["stillNeeded"], doc["recoveryThreshold"]) == (0, 2, 2)
    share = _charter("recovery", "share", "--network", str(net.network_path), "--member", "1")
    assert share.returncode != 0
    assert "not waiting for recovery shares" in share.stderr, share.stderr
