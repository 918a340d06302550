"""Promises of audits that start from a snapshot (charter.ledger.audit with snapshot=): a
ledger that begins after a snapshot audits, and the snapshot must be the one its evidence
transaction records, with a signed root that its node and the service signed."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charter.cli import app
from charter.ledger.audit import audit
from charter.ledger.chunks import LedgerReader, LedgerWriter
from charter.ledger.entry import FLAG_FORCE_CHUNK_AFTER, decode_entry
from charter.ledger.errors import AuditError
from charter.ledger.generate import GeneratedLedger
from charter.ledger.history import History
from charter.ledger.snapshot import encode_snapshot, snapshot_digest

EVIDENCE = "public:ccf.internal.snapshot_evidence"
SINGLETON = bytes(8)


def _snapshot_tables(tables: dict[str, dict[bytes, bytes]]) -> bytes:
    """Tables in CCF's snapshot format (FORMATS §7), names and keys sorted."""
    out = []
    for name in sorted(tables):
        body = []
        for key in sorted(tables[name]):
            value = tables[name][key]
            body += [struct.pack("<Q", len(key)), key, bytes(-len(key) % 8)]
            body += [struct.pack("<QQ", len(value) + 8, 1), value, bytes(-len(value) % 8)]
        blob = b"".join(body)
        out += [struct.pack("<Q", len(name)), name.encode(), struct.pack("<QQ", 1, len(blob)), blob]
    return b"".join(out)


def _snapshot_started(
    ledger: GeneratedLedger, at: int, directory: Path, *, evidence_hash: str | None = None
) -> bytes:
    """A snapshot of `ledger` at signature `at`, and in `directory` the ledger a node that
    joined from it keeps: seqnos at+1.. (an evidence transaction first), a new chunk."""
    history = History()
    state: dict[str, dict[bytes, bytes]] = {}
    for _seqno, raw in LedgerReader(ledger.directory).entries(1, at):
        history.append_raw(raw, secret=ledger.secret)
        entry, _ = decode_entry(raw)
        for name, writes in entry.public.items():
            table = state.setdefault(name, {})
            for key, value in writes.items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
    snapshot = encode_snapshot(
        seqno=at,
        view=2,
        hash_at_snapshot=history.tree.leaf(at),
        view_history=[0, 0, 1],
        public_tables=_snapshot_tables(state),
        private_tables=b"",
        secret=ledger.secret,
    )
    evidence = {"hash": evidence_hash or snapshot_digest(snapshot), "version": at}
    writer = LedgerWriter(str(directory))
    last = at + 25
    for seqno in range(at + 1, last + 1):
        if seqno == at + 1:
            record = history.add_transaction(
                seqno=seqno,
                view=2,
                public={EVIDENCE: {SINGLETON: json.dumps(evidence).encode()}},
                private={},
                secret=ledger.secret,
            )
        elif seqno % 10 == 0 or seqno == last:
            record = history.add_signature(
                seqno=seqno,
                view=2,
                node_id=ledger.node_id,
                node_key=ledger.node_key,
                node_cert_pem=ledger.node_cert_pem,
                service_key=ledger.service_key,
                secret=ledger.secret,
                iat=3,
                flags=FLAG_FORCE_CHUNK_AFTER if seqno == last else 0,
            )
        else:
            record = history.add_transaction(
                seqno=seqno,
                view=2,
                public={"public:records": {b"k": f"after-snapshot-{seqno}".encode()}},
                private={},
                secret=ledger.secret,
            )
        writer.append(seqno, record.raw)
    writer.flush()
    writer.commit(last)
    writer.close()
    return snapshot


def test_a_ledger_that_starts_after_a_snapshot_audits(
    small_ledger: GeneratedLedger, tmp_path: Path
) -> None:
    at = small_ledger.signature_seqnos[5]
    snapshot = _snapshot_started(small_ledger, at, tmp_path / "ledger")
    assert LedgerReader(str(tmp_path / "ledger")).chunks[0].first == at + 1
    with pytest.raises(AuditError, match="does not start at seqno 1"):
        audit(str(tmp_path / "ledger"))
    report = audit(
        str(tmp_path / "ledger"),
        snapshot=snapshot,
        service_cert_pem=small_ledger.service_cert_pem,
        checkpoint=True,
    )
    assert report.resumed_from == at and report.last_seqno == at + 25
    assert report.service_status == "Open" and report.last_signed_txid == f"2.{at + 25}"
    # The proof ties the snapshot's signed root to the last one in the ledger.
    assert report.extension is not None and report.extension.old_size == at
    # And the audit leaves a checkpoint to go on from.
    assert report.checkpoint is not None and report.checkpoint.seqno == at + 25
    again = audit(str(tmp_path / "ledger"), since=report.checkpoint)
    assert again.root == report.root


def test_a_snapshot_its_evidence_does_not_record_is_refused(
    small_ledger: GeneratedLedger, tmp_path: Path
) -> None:
    at = small_ledger.signature_seqnos[5]
    snapshot = _snapshot_started(small_ledger, at, tmp_path / "ledger", evidence_hash="00" * 32)
    with pytest.raises(AuditError, match="snapshot refused: no transaction"):
        audit(str(tmp_path / "ledger"), snapshot=snapshot)


def test_a_changed_snapshot_is_refused(small_ledger: GeneratedLedger, tmp_path: Path) -> None:
    at = small_ledger.signature_seqnos[5]
    snapshot = bytearray(_snapshot_started(small_ledger, at, tmp_path / "ledger"))
    # A byte of the encrypted private domain (at the end): the tables still parse.
    snapshot[-1] ^= 1
    with pytest.raises(AuditError, match="snapshot refused"):
        audit(str(tmp_path / "ledger"), snapshot=bytes(snapshot))
    with pytest.raises(AuditError, match="snapshot refused"):
        audit(str(tmp_path / "ledger"), snapshot=b"\x01" * 64)


def test_a_snapshot_from_another_ledger_is_refused(
    small_ledger: GeneratedLedger, big_ledger: GeneratedLedger, tmp_path: Path
) -> None:
    at = small_ledger.signature_seqnos[5]
    _snapshot_started(small_ledger, at, tmp_path / "ledger")
    other = _snapshot_started(big_ledger, big_ledger.signature_seqnos[2], tmp_path / "other")
    with pytest.raises(AuditError):
        audit(str(tmp_path / "ledger"), snapshot=other)


def test_charter_ledger_audit_with_snapshot_audits_a_snapshot_started_ledger(
    small_ledger: GeneratedLedger, tmp_path: Path
) -> None:
    at = small_ledger.signature_seqnos[5]
    snapshot = tmp_path / f"snapshot_{at}_{at + 1}.committed"
    snapshot.write_bytes(_snapshot_started(small_ledger, at, tmp_path / "ledger"))
    result = CliRunner().invoke(
        app, ["ledger", "audit", str(tmp_path / "ledger"), "--snapshot", str(snapshot), "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["valid"] and doc["resumed_from"] == at and doc["transactions"] == at + 25
