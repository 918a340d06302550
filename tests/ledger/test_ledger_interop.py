"""Interoperability: CCF's own validator (ccf.ledger 6.0.28) accepts Charter's ledgers and
rejects the same single-byte tamperings our auditor rejects.

`LedgerValidator` keeps node tables as class attributes, so each run is a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import ccf.ledger
import pytest

from charter.ledger.audit import audit
from charter.ledger.chunks import LedgerReader
from charter.ledger.entry import PUBLIC_DOMAIN_OFFSET, decode_entry, entry_leaf
from charter.ledger.errors import AuditError
from charter.ledger.generate import GeneratedLedger

Copy = Callable[[str | Path], Path]

_VALIDATE = """
import json, sys
import ccf.ledger
validator = ccf.ledger.LedgerValidator(accept_deprecated_entry_types=False)
count = 0
try:
    for chunk in ccf.ledger.Ledger([sys.argv[1]]):
        for tx in chunk:
            validator.add_transaction(tx)
            count += 1
except Exception as exc:
    print(json.dumps({"ok": False, "count": count, "error": type(exc).__name__ + ": " + str(exc)[:200]}))
    sys.exit(0)
print(json.dumps({"ok": True, "count": count, "txid": str(validator.last_verified_txid()),
                  "status": validator.service_status}))
"""


def _ccf_validate(directory: str | Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", _VALIDATE, str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcome: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome


def _locate(directory: Path, seqno: int) -> tuple[Path, int, bytes]:
    for chunk, data, positions in LedgerReader(str(directory)).chunk_data():
        if chunk.first <= seqno < chunk.first + len(positions):
            pos = positions[seqno - chunk.first]
            size = 8 + int.from_bytes(data[pos + 2 : pos + 8], "little")
            return directory / chunk.filename, pos, data[pos : pos + size]
    raise KeyError(seqno)


def test_generated_ledger_has_node_service_and_signature_entries_over_several_chunks(
    big_ledger: GeneratedLedger,
) -> None:
    reader = LedgerReader(big_ledger.directory)
    assert len(reader.chunks) >= 5 and all(c.committed for c in reader.chunks)
    assert reader.last_seqno == 10_000
    genesis, _ = decode_entry(reader.get(1))
    for table in (
        "public:ccf.gov.nodes.info",
        "public:ccf.gov.nodes.endorsed_certificates",
        "public:ccf.gov.service.info",
        "public:ccf.gov.members.certs",
        "public:ccf.gov.constitution",
    ):
        assert table in genesis.public
    assert len(big_ledger.signature_seqnos) > 90


def test_ccf_ledger_reads_every_generated_entry_as_we_do(big_ledger: GeneratedLedger) -> None:
    ours = LedgerReader(big_ledger.directory).entries()
    for tx, (seqno, raw) in zip(
        ccf.ledger.Ledger([big_ledger.directory]).transactions(), ours, strict=True
    ):
        assert tx.get_raw_tx() == raw
        if seqno % 97 == 0 or seqno in big_ledger.signature_seqnos[:3]:
            entry, _ = decode_entry(raw)
            assert tx.get_public_domain().get_tables() == entry.public
            assert tx.get_tx_digest() == entry_leaf(raw)


def test_ccf_validator_accepts_generated_ledger(big_ledger: GeneratedLedger) -> None:
    outcome = _ccf_validate(big_ledger.directory)
    assert outcome == {"ok": True, "count": 10_000, "txid": "2.10000", "status": "Open"}
    report = audit(big_ledger.directory, service_cert_pem=big_ledger.service_cert_pem)
    assert report.last_signed_txid == "2.10000" and report.transactions == 10_000


@pytest.mark.parametrize(
    ("what", "seqno", "offset_in"),
    [
        ("entry header", 150, lambda raw: 1),
        (
            "public domain",
            161,
            lambda raw: PUBLIC_DOMAIN_OFFSET + decode_entry(raw)[0].public_size - 5,
        ),
        ("ciphertext", 150, lambda raw: len(raw) - 1),
        ("signature table", -1, lambda raw: raw.index(b'"sig":"') + 12),
    ],
)
def test_single_byte_change_is_rejected_by_ccf_and_by_our_auditor(
    big_ledger: GeneratedLedger,
    copy_ledger: Copy,
    what: str,
    seqno: int,
    offset_in: Callable[[bytes], int],
) -> None:
    if seqno == -1:
        seqno = big_ledger.signature_seqnos[2]
    directory = copy_ledger(big_ledger.directory)
    path, pos, raw = _locate(directory, seqno)
    if what == "public domain":
        entry, _ = decode_entry(raw)
        assert entry.public, "chosen entry must have public writes"
    if what == "ciphertext":
        assert decode_entry(raw)[0].private_ciphertext
    data = bytearray(path.read_bytes())
    data[pos + offset_in(raw)] ^= 0x04
    path.write_bytes(bytes(data))
    outcome = _ccf_validate(directory)
    assert outcome["ok"] is False, what
    with pytest.raises(AuditError) as info:
        audit(str(directory))
    next_signature = min(s for s in big_ledger.signature_seqnos if s >= seqno)
    assert info.value.seqno is not None and seqno <= info.value.seqno <= next_signature


@pytest.mark.soak
def test_a_100k_transaction_ledger_is_valid_to_our_auditor_and_to_ccfs(tmp_path: Path) -> None:
    """At the size of a long-running service's ledger (100,000 transactions, signed every
    1,000), both validators accept every transaction. How fast each does it is measured by
    scripts/bench_ledger.py (`audit_tx_per_s`, `audit_vs_ccf_ratio`), not asserted here."""
    from charter.ledger.generate import generate_ledger

    directory = str(tmp_path / "ledger")
    generate_ledger(directory, transactions=100_000, signature_interval=1000)
    report = audit(directory, workers=0)
    theirs = _ccf_validate(directory)
    assert theirs["ok"] is True, theirs
    assert theirs["count"] == report.transactions >= 100_000
