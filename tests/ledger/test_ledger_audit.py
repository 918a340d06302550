"""Promises of charter.ledger.audit: real and generated ledgers validate; any tampering is caught."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from shared_data import CCF_LEDGERS as SHARED_CCF_LEDGERS

from charter.ledger import certs
from charter.ledger.audit import MerkleFrontier, audit, check_consistency
from charter.ledger.audit_scan import aligned_subtrees
from charter.ledger.chunks import LedgerReader
from charter.ledger.entry import PUBLIC_DOMAIN_OFFSET, decode_entry
from charter.ledger.errors import AuditError, VerificationError
from charter.ledger.generate import GeneratedLedger, generate_ledger
from charter.ledger.merkle import MerkleTree
from charter.ledger.signatures import SIGNATURES_TABLE

CCF_LEDGERS = SHARED_CCF_LEDGERS
Copy = Callable[[str | Path], Path]


def _locate(directory: Path, seqno: int) -> tuple[Path, int, bytes]:
    """(chunk path, file offset, raw bytes) of entry `seqno`."""
    reader = LedgerReader(str(directory))
    for chunk, data, positions in reader.chunk_data():
        if chunk.first <= seqno <= chunk.first + len(positions) - 1:
            pos = positions[seqno - chunk.first]
            size = 8 + int.from_bytes(data[pos + 2 : pos + 8], "little")
            return directory / chunk.filename, pos, data[pos : pos + size]
    raise KeyError(seqno)


def _flip(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def test_real_current_ccf_ledger_validates_strictly() -> None:
    report = audit(str(CCF_LEDGERS / "current"))
    assert (report.transactions, report.signatures, report.last_signed_txid) == (14, 6, "2.14")
    assert report.service_status == "Open" and report.cose_signatures == 6


def test_real_deprecated_ledger_validates_only_when_deprecated_types_accepted() -> None:
    with pytest.raises(AuditError) as info:
        audit(str(CCF_LEDGERS / "deprecated-entry-types"))
    assert info.value.seqno == 1
    report = audit(str(CCF_LEDGERS / "deprecated-entry-types"), accept_deprecated_entry_types=True)
    assert (report.transactions, report.signatures, report.last_signed_txid) == (26, 7, "2.26")
    assert report.service_status == "Open" and report.chunks == 3


def test_tampered_real_ccf_ledger_names_the_changed_entry_its_file_and_offset(
    copy_ledger: Copy,
) -> None:
    directory = copy_ledger(CCF_LEDGERS / "current")
    path, pos, _raw = _locate(directory, 3)
    _flip(path, pos + PUBLIC_DOMAIN_OFFSET + 100)  # inside members.acks of seqno 3
    with pytest.raises(AuditError) as info:
        audit(str(directory))
    # Found at the next signature (5), whose tree table shows which leaf changed.
    assert info.value.seqno == 3
    assert f"(in {path.name} at offset {pos})" in str(info.value)
    assert "signature 5" in str(info.value)


def test_tampered_real_deprecated_ledger_is_rejected(copy_ledger: Copy) -> None:
    directory = copy_ledger(CCF_LEDGERS / "deprecated-entry-types")
    path, pos, raw = _locate(directory, 20)  # an entry with an encrypted private domain
    _flip(path, pos + len(raw) - 1)
    with pytest.raises(AuditError) as info:
        audit(str(directory), accept_deprecated_entry_types=True)
    assert info.value.seqno == 20  # the damaged entry itself, not the signature at 26
    assert f"(in {path.name} at offset {pos})" in str(info.value)


def test_generated_ledger_validates_with_its_service_certificate(
    small_ledger: GeneratedLedger,
) -> None:
    progress: list[tuple[int, int]] = []
    report = audit(
        small_ledger.directory,
        service_cert_pem=small_ledger.service_cert_pem,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert report.transactions == 400 and report.unsigned_transactions == 0
    assert report.signatures == len(small_ledger.signature_seqnos)
    assert report.last_signed_txid == "2.400" and report.service_status == "Open"
    assert report.nodes == {small_ledger.node_id: "Trusted"}
    assert report.root == small_ledger.history.tree.root()
    assert progress[-1] == (400, 400) and len(progress) == report.chunks > 1


def test_other_service_certificate_is_rejected(small_ledger: GeneratedLedger) -> None:
    other = certs.cert_pem(certs.service_cert(certs.new_key()))
    with pytest.raises(AuditError):
        audit(small_ledger.directory, service_cert_pem=other)


@pytest.mark.parametrize(
    ("what", "seqno", "where"),
    [
        ("entry header flags", 30, lambda raw: 1),
        ("GCM tag", 30, lambda raw: 10),
        ("IV view", 30, lambda raw: 33),
        ("public domain table", 35, lambda raw: len(raw) - 20),
        ("claims digest", 30, lambda raw: PUBLIC_DOMAIN_OFFSET + 12),
        ("signature root", -1, lambda raw: raw.index(b'"root":"') + 10),
        ("cose signature", -1, lambda raw: raw.index(b'"0oR') + 40),
        ("tree table", -1, lambda raw: raw.index(b"public:ccf.internal.tree") + 60),
    ],
)
def test_single_byte_change_in_an_entry_is_rejected(
    small_ledger: GeneratedLedger, copy_ledger: Copy, what: str, seqno: int, where: object
) -> None:
    if seqno == -1:  # a signature transaction followed by another signature
        seqno = small_ledger.signature_seqnos[3]
    directory = copy_ledger(small_ledger.directory)
    path, pos, raw = _locate(directory, seqno)
    offset = where(raw)  # type: ignore[operator]
    _flip(path, pos + offset)
    with pytest.raises(AuditError) as info:
        audit(str(directory))
    # The damaged entry itself, with its file and offset (not the signature that found it).
    assert info.value.seqno == seqno, what
    assert f"(in {path.name} at offset {pos})" in str(info.value), what


def test_private_domain_is_covered_by_the_merkle_tree(
    small_ledger: GeneratedLedger, copy_ledger: Copy
) -> None:
    directory = copy_ledger(small_ledger.directory)
    path, pos, raw = _locate(directory, 40)
    entry, _ = decode_entry(raw)
    assert entry.private_ciphertext
    _flip(path, pos + len(raw) - 1)  # last ciphertext byte
    with pytest.raises(AuditError):
        audit(str(directory))


def test_missing_chunk_is_rejected(small_ledger: GeneratedLedger, copy_ledger: Copy) -> None:
    directory = copy_ledger(small_ledger.directory)
    chunks = sorted(os.listdir(directory), key=lambda n: int(n.split("_")[1].split("-")[0]))
    os.unlink(directory / chunks[1])
    with pytest.raises(AuditError):
        audit(str(directory))


def test_truncated_chunk_file_is_rejected(small_ledger: GeneratedLedger, copy_ledger: Copy) -> None:
    directory = copy_ledger(small_ledger.directory)
    first = sorted(directory.iterdir())[0]
    first.write_bytes(first.read_bytes()[:-50])
    with pytest.raises(AuditError):
        audit(str(directory))


def _custom_ledger(tmp_path: Path, mutate: str) -> GeneratedLedger:
    """A tiny ledger with one governance change that breaks a validator rule."""
    ledger = generate_ledger(str(tmp_path / "base"), transactions=12, signature_interval=3)
    directory = tmp_path / "custom"
    os.makedirs(directory)
    from charter.ledger.chunks import LedgerWriter
    from charter.ledger.history import History

    history = History()
    writer = LedgerWriter(str(directory))
    reader = LedgerReader(ledger.directory)
    for seqno, raw in reader.entries():
        entry, _ = decode_entry(raw)
        if entry.public.get(SIGNATURES_TABLE):
            record = history.add_signature(
                seqno=seqno,
                view=2,
                node_id=ledger.node_id,
                node_key=ledger.node_key,
                node_cert_pem=ledger.node_cert_pem,
                service_key=ledger.service_key,
                secret=ledger.secret,
                iat=1,
                flags=entry.flags,
            )
        else:
            public = dict(entry.public)
            if mutate == "pending" and "public:ccf.gov.nodes.info" in public:
                node = json.loads(public["public:ccf.gov.nodes.info"][ledger.node_id.encode()])
                node["status"] = "Pending"
                public["public:ccf.gov.nodes.info"] = {
                    ledger.node_id.encode(): json.dumps(node).encode()
                }
            if mutate == "status" and seqno == 4:
                info = json.loads(public["public:ccf.gov.service.info"][bytes(8)])
                info["status"] = "Recovering"
                public["public:ccf.gov.service.info"] = {bytes(8): json.dumps(info).encode()}
            record = history.add_transaction(
                seqno=seqno, view=2, public=public, private={}, secret=ledger.secret
            )
        writer.append(seqno, record.raw)
    writer.commit(writer.last_seqno)
    writer.close()
    ledger.directory = str(directory)
    return ledger


def test_signature_by_pending_node_is_rejected(tmp_path: Path) -> None:
    ledger = _custom_ledger(tmp_path, "pending")
    with pytest.raises(AuditError, match="Pending") as info:
        audit(ledger.directory)
    assert info.value.seqno == 2


def test_illegal_service_status_transition_is_rejected(tmp_path: Path) -> None:
    ledger = _custom_ledger(tmp_path, "status")
    with pytest.raises(AuditError, match="transition") as info:
        audit(ledger.directory)
    assert info.value.seqno == 4


def test_frontier_root_matches_full_tree_at_every_size() -> None:
    frontier, tree = MerkleFrontier(), MerkleTree()
    for i in range(1, 300):
        leaf = i.to_bytes(32, "big")
        frontier.append(leaf)
        tree.append(leaf)
        assert frontier.root() == tree.root()


def test_consistency_proofs_are_checked() -> None:
    tree = MerkleTree()
    for i in range(1, 50):
        tree.append(i.to_bytes(32, "big"))
    proof = tree.consistency_proof(17, 50)
    check_consistency(tree.root_at(17), 17, tree.root_at(50), 50, proof)
    with pytest.raises(VerificationError):
        check_consistency(tree.root_at(18), 17, tree.root_at(50), 50, proof)


def test_forked_workers_report_exactly_what_a_serial_audit_reports(
    small_ledger: GeneratedLedger,
) -> None:
    assert audit(small_ledger.directory, workers=2) == audit(small_ledger.directory)


def test_forked_workers_report_the_first_failure(
    small_ledger: GeneratedLedger, copy_ledger: Copy
) -> None:
    directory = copy_ledger(small_ledger.directory)
    for seqno in (150, 300):
        path, pos, raw = _locate(directory, seqno)
        _flip(path, pos + len(raw) - 1)
    with pytest.raises(AuditError) as serial:
        audit(str(directory))
    with pytest.raises(AuditError) as parallel:
        audit(str(directory), workers=2)
    assert serial.value.seqno == parallel.value.seqno
    assert serial.value.seqno is not None and 150 <= serial.value.seqno < 300


def test_command_line_audit_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    from charter.ledger.__main__ import main

    assert main(["audit", str(CCF_LEDGERS / "current")]) == 0
    assert "last signed txid: 2.14" in capsys.readouterr().out
    assert main(["audit", str(CCF_LEDGERS / "deprecated-entry-types")]) == 1
    assert "deprecated entry type" in capsys.readouterr().err
    assert main(["audit", "--accept-deprecated", str(CCF_LEDGERS / "deprecated-entry-types")]) == 0


def test_forked_workers_report_a_bad_root_signature_before_later_damage(
    small_ledger: GeneratedLedger, copy_ledger: Copy
) -> None:
    directory = copy_ledger(small_ledger.directory)
    signed = small_ledger.signature_seqnos[4]
    path, pos, raw = _locate(directory, signed)
    at = raw.index(b'"sig":"') + 20
    data = bytearray(path.read_bytes())
    data[pos + at] = ord("A") if data[pos + at] != ord("A") else ord("B")  # still base64
    path.write_bytes(bytes(data))
    later_path, later_pos, _ = _locate(directory, 390)
    _flip(later_path, later_pos + 30)  # IV seqno of a much later entry
    with pytest.raises(AuditError, match="root signature") as serial:
        audit(str(directory), workers=0)
    with pytest.raises(AuditError, match="root signature") as parallel:
        audit(str(directory), workers=2)
    assert serial.value.seqno == parallel.value.seqno == signed


def test_entry_forcing_a_new_chunk_in_the_middle_of_one_is_rejected(
    small_ledger: GeneratedLedger, copy_ledger: Copy
) -> None:
    directory = copy_ledger(small_ledger.directory)
    path, pos, _raw = _locate(directory, 7)
    _flip(path, pos + 1, mask=0x02)  # FORCE_LEDGER_CHUNK_BEFORE on an entry mid-chunk
    with pytest.raises(AuditError, match="new chunk") as info:
        audit(str(directory))
    assert info.value.seqno == 7


def test_leaves_folded_into_aligned_subtrees_give_the_same_frontier_as_the_leaves() -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(1, 300)]
    for start in (1, 2, 3, 7, 64, 100):
        for cut in (0, 1, 5, 64, 129, 298 - start):
            reference = MerkleFrontier()
            reference.extend(leaves[: start - 1])
            folded = MerkleFrontier()
            folded.extend(leaves[: start - 1])
            segment = leaves[start - 1 : start - 1 + cut]
            reference.extend(segment)
            for level, node in aligned_subtrees(segment, start):
                folded.append_subtree(level, node)
            assert (folded.size, folded.root()) == (reference.size, reference.root())
