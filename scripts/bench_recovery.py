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
- private replay: the members' `transition_service_to_open`, then
  `Recovery.start_private_replay` with the old secrets (decrypt and check every private
  domain) and the `settle` that puts the private state back and opens the service.

Prints progress on stderr and ends with one JSON line: `transactions`,
`public_replay_tx_per_s`, `private_replay_tx_per_s`, `public_replay_s`, `private_replay_s`,
`recovery_total_s`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from charter.enclave_app import interface as itf
from charter.enclave_app import node_endpoints
from charter.enclave_app.node import Node
from charter.enclave_app.platform import VirtualPlatform
from charter.enclave_app.startup import include_governance, initial_members, load_app
from charter.governance import actions
from charter.governance import tables as gt
from charter.ledger import certs


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


def _open(node: Node, args: actions.OpenServiceArgs, ledger: dict[int, bytes]) -> None:
    tx = node.store.begin()
    actions.check_open_service(tx, args)
    actions.apply_open_service(tx, args, None)  # type: ignore[arg-type]
    node.commit_tx(tx)
    node.emit_signature()
    _drain(node, ledger)


def old_service(work: Path, transactions: int, interval: int) -> tuple[Node, dict[int, bytes]]:
    member = work / "member0_cert.pem"
    member.write_text(certs.cert_pem(certs.identity_cert(certs.new_key(), "member0")))
    config = itf.NodeConfig.model_validate(
        {
            "workspace": str(work / "old"),
            "signatures": {"tx_count": 1_000_000_000, "delay_ms": 1_000_000},
            "start": {"members": [{"cert": str(member)}]},
        }
    )
    node = _node(config, work / "old")
    node.start_new_network(initial_members(config), None)
    ledger: dict[int, bytes] = {}
    _drain(node, ledger)
    _open(node, actions.OpenServiceArgs(), ledger)
    value = b"v" * 100
    while max(ledger) < transactions:
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
        old, ledger = old_service(work, opts.transactions, opts.signature_interval)
        previous = old.identity.service_cert_pem
        secrets = list(old.identity.ledger_secrets)
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
        recovery.start_private_replay(secrets)
        _drain(node, new_ledger)
        private_s = time.perf_counter() - private_started
        assert node.state == "PartOfNetwork"
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
