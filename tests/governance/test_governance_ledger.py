"""Governance history in the ledger: CCF's validator accepts a ledger written from a
genesis-to-open governance flow, and CCF's read_ledger.py shows the governance tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from gov_testkit import NOW_S, Member, member

from charter.enclave_app.kv import Store, Tx
from charter.governance import handlers
from charter.governance import tables as t
from charter.governance.genesis import InitialMember, bootstrap
from charter.ledger import certs
from charter.ledger.chunks import LedgerWriter
from charter.ledger.entry import FLAG_FORCE_CHUNK_AFTER
from charter.ledger.history import History

VIEW = 2
SECRET = bytes(range(32))

_VALIDATE = """
import json, sys
import ccf.ledger
validator = ccf.ledger.LedgerValidator(accept_deprecated_entry_types=False)
states = []
for chunk in ccf.ledger.Ledger([sys.argv[1]]):
    for tx in chunk:
        validator.add_transaction(tx)
        tables = tx.get_public_domain().get_tables()
        for value in tables.get("public:ccf.gov.proposals_info", {}).values():
            states.append(json.loads(value)["state"])
print(json.dumps({"txid": str(validator.last_verified_txid()),
                  "status": validator.service_status, "proposal_states": states}))
"""


class LedgeredService:
    """Store + History + LedgerWriter: each committed governance transaction is a ledger
    entry, followed by a signature transaction, as a primary would write them."""

    def __init__(self, directory: Path) -> None:
        self.store = Store()
        self.history = History()
        self.writer = LedgerWriter(str(directory))
        self.service_key = certs.new_key()
        self.service_cert = certs.service_cert(self.service_key)
        self.node_key = certs.new_key()
        self.node_id = certs.node_id(self.node_key.public_key())
        node_cert = certs.endorse(
            self.node_key.public_key(), self.service_key, self.service_cert, san_ips=["127.0.0.1"]
        )
        self.node_cert_pem = certs.cert_pem(node_cert)
        self.iat_s = NOW_S

    @property
    def root(self) -> bytes:
        return self.history.tree.root()

    def commit(self, tx: Tx) -> None:
        seqno = self.store.version + 1
        write_set = self.store.commit(tx, seqno)
        assert all(name.startswith("public:") for name in write_set)
        record = self.history.add_transaction(
            seqno=seqno, view=VIEW, public=write_set, private={}, secret=SECRET
        )
        self.writer.append(seqno, record.raw)
        self.sign()

    def sign(self, *, last: bool = False) -> None:
        seqno = self.history.last_seqno + 1
        self.iat_s += 1
        record = self.history.add_signature(
            seqno=seqno,
            view=VIEW,
            node_id=self.node_id,
            node_key=self.node_key,
            node_cert_pem=self.node_cert_pem,
            service_key=self.service_key,
            secret=SECRET,
            iat=self.iat_s,
            flags=FLAG_FORCE_CHUNK_AFTER if last else 0,
        )
        self.writer.append(seqno, record.raw)
        # Signature tables are not part of the KV the governance code reads; keep the store's
        # version in step with the ledger's seqnos.
        self.store.apply({}, seqno)

    def request(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        tx = self.store.begin()
        result = fn(tx, *args, **kwargs)
        self.commit(tx)
        return result


def test_ccf_validator_accepts_and_shows_a_governance_flow(tmp_path: Path) -> None:
    ledger_dir = tmp_path / "ledger"
    svc = LedgeredService(ledger_dir)
    members: list[Member] = [member(n) for n in ("l0", "l1", "l2")]
    tx = svc.store.begin()
    bootstrap(
        tx,
        members=[InitialMember(cert=m.cert_pem) for m in members],
        service_cert_pem=certs.cert_pem(svc.service_cert),
        node_id=svc.node_id,
        node_info={
            "status": "Trusted",
            "node_data": None,
            "quote_info": {"format": "Insecure_Virtual"},
        },
        node_endorsed_cert_pem=svc.node_cert_pem,
        create_txid=f"{VIEW}.1",
    )
    svc.commit(tx)
    for m in members:
        update = m.sign("state_digest", b"")
        digest = svc.request(
            handlers.update_state_digest, update, member_id=m.id, now_s=NOW_S, merkle_root=svc.root
        ).json["stateDigest"]
        ack = m.sign("ack", {"stateDigest": digest})
        svc.request(handlers.ack_state_digest, ack, member_id=m.id, now_s=NOW_S)
    proposal = {"actions": [{"name": "transition_service_to_open", "args": {}}]}
    created = svc.request(
        handlers.create_proposal,
        members[0].sign("proposal", proposal),
        now_s=NOW_S,
        merkle_root=svc.root,
    )
    pid = created.json["proposalId"]
    for voter in members[1:]:
        result = svc.request(
            handlers.submit_ballot,
            voter.sign("ballot", {"ballot": "approve"}, proposal_id=pid),
            proposal_id=pid,
            member_id=voter.id,
            now_s=NOW_S,
            merkle_root=svc.root,
        )
    assert result.json["proposalState"] == "Accepted"
    svc.sign(last=True)
    svc.writer.commit(svc.history.last_seqno)
    svc.writer.close()

    out = subprocess.run(
        [sys.executable, "-c", _VALIDATE, str(ledger_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["status"] == "Open"
    assert report["txid"] == f"{VIEW}.{svc.history.last_seqno}"
    assert report["proposal_states"] == ["Open", "Open", "Accepted"]

    shown = subprocess.run(
        [sys.executable, str(Path(sys.executable).parent / "read_ledger.py"), str(ledger_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    text = shown.stdout + shown.stderr
    for table in (t.PROPOSALS, t.PROPOSALS_INFO, t.MEMBERS_INFO, t.SERVICE_INFO):
        assert table in text
