#!/usr/bin/env python3
"""Disaster recovery benchmark: how long a recovery node takes over an old ledger.

    .venv/bin/python scripts/bench_recovery.py [--transactions 100000] [--signature-interval 100]

Builds an old service in this process (one node, open; every transaction writes one private
and one public record of ~100 bytes; a signature every --signature-interval transactions),
then recovers it with a second node as `start.mode: recover` does, driven in-process the way
the enclave runtime drives it (no host process, no disk: the entries are handed over from
memory, so this measures the enclave's work, not I/O):

- public replay: `start_recovery`, `replay_public` per entry (Merkle tree, signature checks,
  public tables), `public_ledger_replayed` (cut, new identity, recovery transaction);
- private replay: the members' `transition_service_to_open`, then the member's recovery
  share, fetched (`GET /gov/recovery/encrypted-shares/{memberId}`), decrypted with its RSA
  key and submitted (`POST /gov/recovery/members/{memberId}:recover`, COSE-signed): the
  node recovers the old secrets from it (`recover_ledger_secrets`), decrypts and checks
  every private domain, and the `settle` after it puts the private state back and opens
  the service. The old service has one recovery member (threshold 1) and is rekeyed once
  half-way, so the share unlocks a chain of two secrets.

Prints progress on stderr and ends with one JSON line: `transactions`,
`public_replay_tx_per_s`, `private_replay_tx_per_s`, `public_replay_s`, `private_replay_s`,
`recovery_total_s`.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from charter.enclave_app import interface as itf
from charter.enclave_app import node_endpoints
from charter.enclave_app.app import HttpResponse
from charter.enclave_app.node import Node
from charter.enclave_app.node.shares import OAEP
from charter.enclave_app.platform import VirtualPlatform
from charter.enclave_app.startup import include_governance, initial_members, load_app
from charter.governance import actions
from charter.governance import tables as gt
from charter.ledger import certs, cose

API = "api-version=2024-07-01"


def _node(config: itf.NodeConfig, workspace: Path) -> Node:
    node = Node(config, VirtualPlatform(workspace), load_app(config.app))
    node.routes.include(node_endpoints.build(node))
    include_governance(node)
    return node


def _drain(node: Node, ledger: dict[int, bytes]) -> None:
    """The host's part: keep what is written, report it durable at once."""
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


class Member:
    """The one recovery member: a signing key and an RSA encryption key."""

    def __init__(self, work: Path) -> None:
        self.key: ec.EllipticCurvePrivateKey = certs.new_key()
        self.cert_pem = certs.cert_pem(certs.identity_cert(self.key, "member0"))
        self.enc_key: rsa.RSAPrivateKey = certs.new_rsa_encryption_key()
        self.id = certs.cert_id(self.cert_pem)
        self.cert_path = work / "member0_cert.pem"
        self.cert_path.write_text(self.cert_pem)
        self.enc_path = work / "member0_enc_pubk.pem"
        self.enc_path.write_text(certs.public_key_pem(self.enc_key.public_key()))

    def sign(self, node: Node, msg_type: str, payload: bytes, proposal_id: str = "") -> bytes:
        protected: dict[Any, Any] = {cose.HEADER_KID: self.id.encode(), cose.GOV_MSG_TYPE: msg_type}
        if proposal_id:
            protected[cose.GOV_MSG_PROPOSAL_ID] = proposal_id
        protected[cose.GOV_MSG_CREATED_AT] = node.now_s()
        return cose.sign1(self.key, protected, payload)

    def post(
        self, node: Node, ledger: dict[int, bytes], path: str, msg_type: str, payload: Any
    ) -> Any:
        body = self.sign(node, msg_type, json.dumps(payload).encode() if payload != b"" else b"")
        return _answer(node, ledger, "POST", path, body)

    def ack(self, node: Node, ledger: dict[int, bytes]) -> None:
        base = f"/gov/members/state-digests/{self.id}"
        digest = self.post(node, ledger, f"{base}:update", "state_digest", b"")["stateDigest"]
        self.post(node, ledger, f"{base}:ack", "ack", {"stateDigest": digest})

    def pass_proposal(self, node: Node, ledger: dict[int, bytes], actions_: list[Any]) -> None:
        created = self.post(
            node, ledger, "/gov/members/proposals:create", "proposal", {"actions": actions_}
        )
        proposal_id = created["proposalId"]
        path = f"/gov/members/proposals/{proposal_id}/ballots/{self.id}:submit"
        ballot = self.sign(node, "ballot", json.dumps({"ballot": "approve"}).encode(), proposal_id)
        voted = _answer(node, ledger, "POST", path, ballot)
        assert voted["proposalState"] == "Accepted", voted

    def submit_share(self, node: Node, ledger: dict[int, bytes]) -> Any:
        """Fetch the encrypted share, decrypt it here, submit it."""
        got = _answer(node, ledger, "GET", f"/gov/recovery/encrypted-shares/{self.id}", b"")
        share = self.enc_key.decrypt(base64.b64decode(got["encryptedShare"]), OAEP)
        path = f"/gov/recovery/members/{self.id}:recover"
        return self.post(
            node, ledger, path, "recovery_share", {"share": base64.b64encode(share).decode()}
        )


def _answer(node: Node, ledger: dict[int, bytes], method: str, path: str, body: bytes) -> Any:
    headers = {"content-type": "application/cose"} if body else {}
    response = node.handle(method, path, API, headers, body, None)
    assert isinstance(response, HttpResponse) and response.status in (200, 204), response
    _drain(node, ledger)
    return json.loads(response.body) if response.body else {}


def _open(node: Node, args: actions.OpenServiceArgs, ledger: dict[int, bytes]) -> None:
    tx = node.store.begin()
    actions.check_open_service(tx, args)
    actions.apply_open_service(tx, args, None)  # type: ignore[arg-type]
    node.commit_tx(tx)
    node.emit_signature()
    _drain(node, ledger)


def old_service(
    work: Path, member: Member, transactions: int, interval: int
) -> tuple[Node, dict[int, bytes]]:
    config = itf.NodeConfig.model_validate(
        {
            "workspace": str(work / "old"),
            "signatures": {"tx_count": 1_000_000_000, "delay_ms": 1_000_000},
            "start": {
                "members": [
                    {"cert": str(member.cert_path), "encryption_key": str(member.enc_path)}
                ],
                "service_config": {"recovery_threshold": 1},
            },
        }
    )
    node = _node(config, work / "old")
    node.start_new_network(initial_members(config), None)
    ledger: dict[int, bytes] = {}
    _drain(node, ledger)
    member.ack(node, ledger)  # an active recovery member: shares are issued
    _open(node, actions.OpenServiceArgs(), ledger)
    value = b"v" * 100
    rekeyed = False
    while max(ledger) < transactions:
        if not rekeyed and max(ledger) >= transactions // 2:
            member.pass_proposal(node, ledger, [{"name": "trigger_ledger_rekey", "args": {}}])
            rekeyed = True
        for _ in range(interval - 1):
            tx = node.store.begin()
            key = b"%d" % node.applied_seqno
            tx.put("records", key, value)
            tx.put("public:records", key, value)
            node.commit_tx(tx)
        node.emit_signature()
        _drain(node, ledger)
        print(f"old ledger: {max(ledger)} transactions", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    return node, ledger


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--signature-interval", type=int, default=100)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="charter-bench-recovery-") as tmp:
        work = Path(tmp)
        member = Member(work)
        old, ledger = old_service(work, member, opts.transactions, opts.signature_interval)
        previous = old.identity.service_cert_pem
        secrets = list(old.identity.ledger_secrets)
        assert len(secrets) == 2, "the secret from genesis and the rekey's"
        raws = [ledger[s] for s in sorted(ledger)]
        del old, ledger
        (work / "new").mkdir()
        (work / "previous.pem").write_text(previous)
        config = itf.NodeConfig.model_validate(
            {
                "workspace": str(work / "new"),
                "start": {
                    "mode": "recover",
                    "previous_service_identity": str(work / "previous.pem"),
                },
            }
        )
        node = _node(config, work / "new")
        new_ledger = dict(enumerate(raws, start=1))

        started = time.perf_counter()
        node.start_recovery(previous)
        for raw in raws:
            node.replay_public(raw)
        node.public_ledger_replayed()
        _drain(node, new_ledger)
        public_s = time.perf_counter() - started
        recovery = node.recovery
        assert recovery is not None and recovery.stop is None
        recovered = recovery.recovery_target_seqno or 0
        print(f"public replay: {recovered} transactions in {public_s:.1f} s", file=sys.stderr)

        info = gt.service_info(node.store.begin())
        assert info is not None
        _open(
            node,
            actions.OpenServiceArgs(
                previous_service_identity=previous, next_service_identity=info["cert"]
            ),
            new_ledger,
        )
        private_started = time.perf_counter()
        answer = member.submit_share(node, new_ledger)
        private_s = time.perf_counter() - private_started
        assert answer["message"].endswith("End of recovery procedure initiated"), answer
        assert node.state == "PartOfNetwork"
        assert node.identity is not None and node.identity.ledger_secrets[:-1] == secrets
        print(f"private replay: {recovered} transactions in {private_s:.1f} s", file=sys.stderr)
    print(
        json.dumps(
            {
                "transactions": recovered,
                "public_replay_s": round(public_s, 3),
                "private_replay_s": round(private_s, 3),
                "public_replay_tx_per_s": round(recovered / public_s),
                "private_replay_tx_per_s": round(recovered / private_s),
                "recovery_total_s": round(public_s + private_s, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
