"""Disaster recovery driven in-process (the way `enclave_app.main.Runtime` drives it): the
lifecycle of a recovering node, the public replay's rules (verify, cut at the last valid
signature), the private replay with the old ledger secrets, and the service endorsements
of receipts. The end-to-end procedure on real processes is `tests/e2e/test_e2e_recovery.py`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from ccf.receipt import check_endorsements, root, verify
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from charter.enclave_app import interface as itf
from charter.enclave_app import node_endpoints
from charter.enclave_app.node import Node
from charter.enclave_app.node.lifecycle import TRANSITIONS, IllegalTransition, NodeState
from charter.enclave_app.node.recovery import RecoveryError
from charter.enclave_app.platform import VirtualPlatform
from charter.enclave_app.startup import include_governance, initial_members, load_app
from charter.governance import actions
from charter.governance import tables as gt
from charter.governance.errors import GovernanceError
from charter.ledger import certs
from charter.ledger.entry import decode_entry

PRIVATE = "records"
PUBLIC = "public:records"


def _member_cert(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    cert = tmp / "member0_cert.pem"
    if not cert.exists():
        cert.write_text(certs.cert_pem(certs.identity_cert(certs.new_key(), "member0")))
    return cert


def _node(config: itf.NodeConfig, tmp: Path) -> Node:
    node = Node(config, VirtualPlatform(tmp), load_app(config.app))
    node.routes.include(node_endpoints.build(node))
    include_governance(node)
    return node


def _drain(node: Node, ledger: dict[int, bytes]) -> None:
    """Act as the host: keep written entries, report them durable, apply truncations."""
    node.settle()
    while node.outbox:
        frames, node.outbox = node.outbox, []
        for frame in frames:
            if isinstance(frame, itf.WriteEntries):
                for seqno, raw in frame.entries:
                    ledger[seqno] = raw
                node.durable(max(s for s, _ in frame.entries))
            elif isinstance(frame, itf.Truncate):
                for seqno in [s for s in ledger if s > frame.seqno]:
                    del ledger[seqno]


def _open(node: Node, ledger: dict[int, bytes]) -> None:
    tx = node.store.begin()
    args = actions.OpenServiceArgs()
    actions.check_open_service(tx, args)
    actions.apply_open_service(tx, args, None)  # type: ignore[arg-type]
    node.commit_tx(tx)
    node.emit_signature()
    _drain(node, ledger)


def _old_service(tmp: Path, writes: int = 6) -> tuple[Node, dict[int, bytes]]:
    """A one-node service, open, with private and public writes, all signed."""
    config = itf.NodeConfig.model_validate(
        {"workspace": str(tmp / "old"), "start": {"members": [{"cert": str(_member_cert(tmp))}]}}
    )
    node = _node(config, tmp / "old")
    node.start_new_network(initial_members(config), None)
    ledger: dict[int, bytes] = {}
    _drain(node, ledger)
    _open(node, ledger)
    for i in range(writes):
        tx = node.store.begin()
        tx.put(PRIVATE, b"k%d" % i, b"secret value %d" % i)
        tx.put(PUBLIC, b"k%d" % i, b"public value %d" % i)
        node.commit_tx(tx)
        if i % 2:
            node.emit_signature()
        _drain(node, ledger)
    node.emit_signature()
    _drain(node, ledger)
    return node, ledger


def _recovery_node(tmp: Path, previous_cert_pem: str, name: str = "new") -> Node:
    (tmp / name).mkdir(parents=True, exist_ok=True)
    previous = tmp / name / "previous_service_cert.pem"
    previous.write_text(previous_cert_pem)
    config = itf.NodeConfig.model_validate(
        {
            "workspace": str(tmp / name),
            "start": {"mode": "recover", "previous_service_identity": str(previous)},
        }
    )
    return _node(config, tmp / name)


def _recover(
    tmp: Path, previous_cert_pem: str, raws: list[bytes], name: str = "new"
) -> tuple[Node, dict[int, bytes]]:
    node = _recovery_node(tmp, previous_cert_pem, name)
    node.start_recovery(previous_cert_pem)
    assert node.state == "ReadingPublicLedger"
    for raw in raws:
        node.replay_public(raw)
    ledger = dict(enumerate(raws, start=1))
    node.public_ledger_replayed()
    _drain(node, ledger)
    return node, ledger


def _open_recovered(node: Node, previous_cert_pem: str, ledger: dict[int, bytes]) -> None:
    tx = node.store.begin()
    info = gt.service_info(tx)
    assert info is not None
    args = actions.OpenServiceArgs(
        previous_service_identity=previous_cert_pem, next_service_identity=info["cert"]
    )
    actions.check_open_service(tx, args)
    actions.apply_open_service(tx, args, None)  # type: ignore[arg-type]
    node.commit_tx(tx)
    node.emit_signature()
    _drain(node, ledger)


def _status(node: Node) -> str:
    info = gt.service_info(node.store.begin())
    assert info is not None
    return str(info["status"])


def _json(node: Node, path: str) -> Any:
    response = node.handle("GET", path, "", {}, b"", None)
    assert response.status == 200, response.body  # type: ignore[union-attr]
    return json.loads(response.body)  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------
def test_recovery_states_follow_ccfs_lifecycle_table() -> None:
    s = NodeState
    assert s.READING_PUBLIC_LEDGER.value == "ReadingPublicLedger"
    assert s.PART_OF_PUBLIC_NETWORK.value == "PartOfPublicNetwork"
    assert s.READING_PRIVATE_LEDGER.value == "ReadingPrivateLedger"
    assert TRANSITIONS[s.UNINITIALIZED] >= {s.READING_PUBLIC_LEDGER}
    assert TRANSITIONS[s.READING_PUBLIC_LEDGER] == {s.PART_OF_PUBLIC_NETWORK}
    assert TRANSITIONS[s.PART_OF_PUBLIC_NETWORK] == {s.READING_PRIVATE_LEDGER, s.RETIRED}
    assert TRANSITIONS[s.READING_PRIVATE_LEDGER] == {s.PART_OF_NETWORK}
    # No way back into a recovery from a running node.
    for state in (s.PART_OF_NETWORK, s.READING_OWN_LEDGER, s.PENDING):
        assert not TRANSITIONS[state] & {s.READING_PUBLIC_LEDGER, s.PART_OF_PUBLIC_NETWORK}


def test_private_replay_is_refused_before_the_members_open_the_recovering_service(
    tmp_path: Path,
) -> None:
    old, ledger = _old_service(tmp_path)
    node, _ = _recover(tmp_path, old.identity.service_cert_pem, list(ledger.values()))
    assert node.recovery is not None
    with pytest.raises(RecoveryError, match="not WaitingForRecoveryShares"):
        node.recovery.start_private_replay(old.identity.ledger_secrets)
    assert node.state == "PartOfPublicNetwork"


def test_recovered_service_has_a_new_identity_that_endorses_the_previous_one(
    tmp_path: Path,
) -> None:
    old, old_ledger = _old_service(tmp_path)
    previous = old.identity.service_cert_pem
    last_old = max(old_ledger)
    node, ledger = _recover(tmp_path, previous, list(old_ledger.values()))
    assert node.state == "PartOfPublicNetwork"
    assert _status(node) == "Recovering"
    state = _json(node, "/node/state")
    assert state["recovery_target_seqno"] == last_old
    network = _json(node, "/node/network")
    assert network["service_status"] == "Recovering" and network["recovery_count"] == 1
    new_cert = node.identity.service_cert_pem
    assert new_cert != previous and network["service_certificate"] == new_cert
    tx = node.store.begin()
    assert tx.get(gt.PREVIOUS_SERVICE_IDENTITY, gt.SINGLETON_KEY) == previous.encode()
    info = gt.service_info(tx)
    assert info is not None and info["previous_service_identity_version"] is not None
    # Public state is back, private state is not; applications are refused.
    assert tx.get(PUBLIC, b"k0") == b"public value 0"
    assert tx.get(PRIVATE, b"k0") is None
    refused = node.handle("POST", "/app/log/private", "", {}, b'{"id":1,"msg":"x"}', None)
    assert refused.status == 503  # type: ignore[union-attr]
    # The old node is retired; the new one is the only voter and signs.
    assert node.raft is not None and node.raft.configuration == {node.node_id}
    assert old.node_id != node.node_id
    old_info = gt.node_info(tx, old.node_id)
    assert old_info is not None and old_info["status"] == "Retired"
    assert max(ledger) > last_old


def test_members_open_a_recovering_service_naming_both_identities(tmp_path: Path) -> None:
    old, old_ledger = _old_service(tmp_path)
    previous = old.identity.service_cert_pem
    node, _ = _recover(tmp_path, previous, list(old_ledger.values()))
    tx = node.store.begin()
    new_cert = node.identity.service_cert_pem
    stranger = certs.cert_pem(certs.service_cert(certs.new_key()))
    for args in (
        actions.OpenServiceArgs(),
        actions.OpenServiceArgs(next_service_identity=new_cert),
        actions.OpenServiceArgs(previous_service_identity=stranger, next_service_identity=new_cert),
        actions.OpenServiceArgs(previous_service_identity=previous, next_service_identity=stranger),
    ):
        with pytest.raises(GovernanceError):
            actions.check_open_service(tx, args)
    actions.check_open_service(
        tx,
        actions.OpenServiceArgs(previous_service_identity=previous, next_service_identity=new_cert),
    )
    # A service that is not recovering is opened without a previous identity.
    fresh = old.store.begin()
    with pytest.raises(GovernanceError):
        actions.check_open_service(
            fresh, actions.OpenServiceArgs(previous_service_identity=previous)
        )


def test_private_replay_with_the_old_secrets_brings_back_every_private_value(
    tmp_path: Path,
) -> None:
    old, old_ledger = _old_service(tmp_path)
    previous = old.identity.service_cert_pem
    node, ledger = _recover(tmp_path, previous, list(old_ledger.values()))
    _open_recovered(node, previous, ledger)
    assert _status(node) == "WaitingForRecoveryShares"
    assert node.recovery is not None
    node.recovery.start_private_replay(old.identity.ledger_secrets)
    assert node.state == "ReadingPrivateLedger"
    _drain(node, ledger)
    assert node.state == "PartOfNetwork" and node.recovery is None
    assert _status(node) == "Open"
    tx = node.store.begin()
    for i in range(6):
        assert tx.get(PRIVATE, b"k%d" % i) == b"secret value %d" % i
    # New writes work, under the new service's secret.
    tx.put(PRIVATE, b"new", b"after recovery")
    view, seqno = node.commit_tx(tx)
    node.emit_signature()
    _drain(node, ledger)
    assert node.tx_status(view, seqno) == "Committed"
    # The sealed identity now holds the old secrets too (a restart can replay everything).
    assert node.identity.secret_for(1) == old.identity.secret_for(1)


def test_wrong_ledger_secrets_change_nothing(tmp_path: Path) -> None:
    old, old_ledger = _old_service(tmp_path)
    previous = old.identity.service_cert_pem
    node, ledger = _recover(tmp_path, previous, list(old_ledger.values()))
    _open_recovered(node, previous, ledger)
    assert node.recovery is not None
    with pytest.raises(RecoveryError, match="do not decrypt seqno 1"):
        node.recovery.start_private_replay([(1, bytes(32))])
    with pytest.raises(RecoveryError):
        node.recovery.start_private_replay([(1, b"short")])
    assert node.state == "PartOfPublicNetwork"
    assert _status(node) == "WaitingForRecoveryShares"


def _receipt(node: Node, seqno: int) -> dict[str, Any]:
    view = node.view_at(seqno)
    response = node.receipt(view or 0, seqno)
    assert response.status == 200, response.body
    doc: dict[str, Any] = json.loads(response.body)
    return doc


def _check_receipt(doc: dict[str, Any], service_cert_pem: str) -> None:
    node_cert = x509.load_pem_x509_certificate(doc["cert"].encode())
    endorsements = [x509.load_pem_x509_certificate(e.encode()) for e in doc["service_endorsements"]]
    check_endorsements(
        node_cert, x509.load_pem_x509_certificate(service_cert_pem.encode()), endorsements
    )
    # CCF's leaf: H(write_set_digest ‖ H(commit_evidence) ‖ claims_digest), as the CCF
    # docs' receipt verification computes it.
    leaf = doc["leaf_components"]
    digest = hashlib.sha256(
        bytes.fromhex(leaf["write_set_digest"])
        + hashlib.sha256(leaf["commit_evidence"].encode()).digest()
        + bytes.fromhex(leaf["claims_digest"])
    ).hexdigest()
    verify(root(digest, doc["proof"]), doc["signature"], node_cert)


def test_old_receipts_carry_endorsements_chaining_to_each_later_service(tmp_path: Path) -> None:
    old, old_ledger = _old_service(tmp_path)
    first = old.identity.service_cert_pem
    old_receipt = _receipt(old, 3)
    assert old_receipt["service_endorsements"] == []
    node, ledger = _recover(tmp_path, first, list(old_ledger.values()))
    _open_recovered(node, first, ledger)
    assert node.recovery is not None
    node.recovery.start_private_replay(old.identity.ledger_secrets)
    _drain(node, ledger)
    second = node.identity.service_cert_pem
    after = _receipt(node, 3)
    assert len(after["service_endorsements"]) == 1
    _check_receipt(after, second)
    with pytest.raises(InvalidSignature):
        _check_receipt({**after, "service_endorsements": []}, second)
    # A second recovery on top chains: the first service's transactions verify against
    # the third service's certificate through two endorsements.
    secrets = node.identity.ledger_secrets
    raws = [ledger[s] for s in sorted(ledger)]
    third_node, third_ledger = _recover(tmp_path, second, raws, name="third")
    assert _json(third_node, "/node/network")["recovery_count"] == 2
    _open_recovered(third_node, second, third_ledger)
    assert third_node.recovery is not None
    third_node.recovery.start_private_replay(secrets)
    _drain(third_node, third_ledger)
    third = third_node.identity.service_cert_pem
    chained = _receipt(third_node, 3)
    assert len(chained["service_endorsements"]) == 2
    _check_receipt(chained, third)
    assert third_node.store.begin().get(PRIVATE, b"k5") == b"secret value 5"


def test_an_unsigned_tail_is_cut_at_the_last_signature(tmp_path: Path) -> None:
    old, ledger = _old_service(tmp_path)
    last_signed = max(ledger)
    tx = old.store.begin()
    tx.put(PRIVATE, b"unsigned", b"never committed")
    old.commit_tx(tx)
    _drain(old, ledger)
    assert max(ledger) == last_signed + 1
    node, new_ledger = _recover(
        tmp_path, old.identity.service_cert_pem, [ledger[s] for s in sorted(ledger)]
    )
    assert node.recovery is not None
    assert node.recovery.recovery_target_seqno == last_signed
    assert node.recovery.stop is None
    # The host was told to drop it before the new service wrote its first entry.
    assert (
        decode_entry(new_ledger[last_signed + 1])[0].view
        > decode_entry(ledger[last_signed])[0].view
    )


def test_a_tampered_entry_stops_the_replay_at_the_last_valid_signature(tmp_path: Path) -> None:
    old, ledger = _old_service(tmp_path)
    raws = [ledger[s] for s in sorted(ledger)]
    signatures = [s for s in sorted(ledger) if old.history.is_signature(s)]
    # The last application write (private and public), and the signatures around it.
    target = max(s for s in ledger if b"public value" in ledger[s])
    before = max(s for s in signatures if s < target)
    after = min(s for s in signatures if s > target)
    raw = bytearray(raws[target - 1])
    raw[raw.find(b"public value")] ^= 1
    raws[target - 1] = bytes(raw)
    node, _ = _recover(tmp_path, old.identity.service_cert_pem, raws)
    assert node.recovery is not None
    assert node.recovery.recovery_target_seqno == before
    stop = _json(node, "/node/state")["recovery_replay_stopped"]
    # Found at the signature whose root no longer matches.
    assert stop["seqno"] == after
    assert "signature" in stop["reason"]
    assert node.store.begin().get(PUBLIC, b"k5") is None


def test_a_ledger_of_another_service_is_refused(tmp_path: Path) -> None:
    _, ledger = _old_service(tmp_path)
    stranger = certs.cert_pem(certs.service_cert(certs.new_key()))
    node = _recovery_node(tmp_path, stranger)
    node.start_recovery(stranger)
    for raw in ledger.values():
        node.replay_public(raw)
    with pytest.raises(RecoveryError, match="previous_service_identity"):
        node.public_ledger_replayed()


def test_recovery_steps_out_of_order_raise_a_typed_error(tmp_path: Path) -> None:
    old, ledger = _old_service(tmp_path)
    node = _recovery_node(tmp_path, old.identity.service_cert_pem)
    with pytest.raises(AssertionError):
        node.replay_public(ledger[1])
    node.start_recovery(old.identity.service_cert_pem)
    with pytest.raises(IllegalTransition):
        node.start_recovery(old.identity.service_cert_pem)


def test_cose_receipts_of_old_transactions_verify_with_the_previous_key_it_endorses(
    tmp_path: Path,
) -> None:
    """As the `ccf` package's `ccf.cose.verify_receipt` (one key, kid = its SPKI hash) reads
    them: a COSE receipt of a pre-recovery transaction is the old service's signature, so it
    verifies with the previous service key; the new key's COSE endorsement of that key is in
    `public:ccf.internal.previous_service_identity_endorsement`."""
    import base64

    from ccf.cose import verify_receipt

    from charter.ledger import cose
    from charter.ledger import service_state as ss

    old, old_ledger = _old_service(tmp_path)
    previous = old.identity.service_cert_pem
    node, ledger = _recover(tmp_path, previous, list(old_ledger.values()))
    _open_recovered(node, previous, ledger)
    assert node.recovery is not None
    node.recovery.start_private_replay(old.identity.ledger_secrets)
    _drain(node, ledger)
    response = node.receipt(node.view_at(3) or 0, 3, cose=True)
    assert response.status == 200  # type: ignore[union-attr]
    old_key = certs.load_cert(previous).public_key()
    verify_receipt(response.body, old_key, bytes(32))  # type: ignore[union-attr]
    with pytest.raises(AssertionError):  # kid of another key
        verify_receipt(
            response.body,  # type: ignore[union-attr]
            certs.load_cert(node.identity.service_cert_pem).public_key(),
            bytes(32),
        )
    raw = node.store.begin().get(ss.PREVIOUS_SERVICE_IDENTITY_ENDORSEMENT, ss.SINGLETON_KEY)
    assert raw is not None
    doc = json.loads(raw)
    endorsement = cose.decode_sign1(base64.b64decode(doc["endorsement"]))
    cose.verify_sign1(endorsement, certs.load_cert(node.identity.service_cert_pem))
    assert endorsement.payload == certs.spki_der(old_key)  # type: ignore[arg-type]
    assert doc["endorsement_epoch_end"].endswith(f".{max(old_ledger)}")


def test_a_copy_cut_inside_an_entry_recovers_up_to_the_signature_before_it(
    tmp_path: Path,
) -> None:
    old, ledger = _old_service(tmp_path)
    raws = [ledger[s] for s in sorted(ledger)]
    signatures = [s for s in sorted(ledger) if old.history.is_signature(s)]
    cut = signatures[-1]  # the last signature, torn in half
    raws = [*raws[: cut - 1], raws[cut - 1][: len(raws[cut - 1]) // 2]]
    node, _ = _recover(tmp_path, old.identity.service_cert_pem, raws)
    assert node.recovery is not None
    assert node.recovery.recovery_target_seqno == max(s for s in signatures if s < cut)
    assert node.recovery.stop is not None and node.recovery.stop.seqno == cut
    assert _json(node, "/node/state")["last_signed_seqno"] > cut - 1  # the new service's


def _serve_reads(node: Node, ledger: dict[int, bytes]) -> None:
    """Act as the host for historical reads: answer every ReadEntries from `ledger`."""
    node.settle()
    while node.outbox:
        frames, node.outbox = node.outbox, []
        for frame in frames:
            if isinstance(frame, itf.ReadEntries):
                seqnos = range(frame.from_seqno, frame.to_seqno + 1)
                entries = [ledger[s] for s in seqnos if s in ledger]
                node.on_entries_read(itf.EntriesRead(frame.request_id, entries, frame.from_seqno))
            elif isinstance(frame, itf.WriteEntries):
                ledger.update(frame.entries)
                node.durable(max(s for s, _ in frame.entries))


def test_pre_recovery_receipts_past_the_memory_window_are_read_back_and_endorsed(
    tmp_path: Path,
) -> None:
    # Old transactions the recovered service no longer holds in memory are read back from
    # the ledger and checked against the signatures of the service that made them (its key,
    # as endorsed by the recovery), not refused for not being signed by the current key.
    old, old_ledger = _old_service(tmp_path)
    first = old.identity.service_cert_pem
    (tmp_path / "small").mkdir()
    previous = tmp_path / "small" / "previous_service_cert.pem"
    previous.write_text(first)
    config = itf.NodeConfig.model_validate(
        {
            "workspace": str(tmp_path / "small"),
            "memory": {"receipt_transactions": 10},
            "start": {"mode": "recover", "previous_service_identity": str(previous)},
        }
    )
    node = _node(config, tmp_path / "small")
    node.start_recovery(first)
    raws = [old_ledger[s] for s in sorted(old_ledger)]
    for raw in raws:
        node.replay_public(raw)
    ledger = dict(enumerate(raws, start=1))
    node.public_ledger_replayed()
    _drain(node, ledger)
    _open_recovered(node, first, ledger)
    assert node.recovery is not None
    node.recovery.start_private_replay(old.identity.ledger_secrets)
    _drain(node, ledger)
    for i in range(60):
        tx = node.store.begin()
        tx.put(PRIVATE, b"new%d" % i, b"after the recovery")
        node.commit_tx(tx)
        node.emit_signature()
        _drain(node, ledger)
    assert node.replication is not None
    assert node.replication.log.history.tree.min_index > 3  # out of the memory window
    view = node.view_at(3) or 0
    response = node.receipt(view, 3)
    for _ in range(10):
        if response.status != 202:
            break
        _serve_reads(node, ledger)
        response = node.receipt(view, 3)
    assert response.status == 200, response.body
    doc = json.loads(response.body)
    assert len(doc["service_endorsements"]) == 1
    _check_receipt(doc, node.identity.service_cert_pem)
