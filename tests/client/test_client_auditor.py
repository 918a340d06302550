"""Auditor API: receipts and ledgers verified offline, tampering caught and located."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from client_helpers import app_seqno, receipts_for
from shared_data import CCF_LEDGERS as SHARED_CCF_LEDGERS

from charter.auditor import audit_ledger, verify_receipt_bytes, verify_receipt_file
from charter.errors import IdentityError, LedgerAuditFailed, ReceiptInvalid
from charter.ledger import certs
from charter.ledger.chunks import LedgerReader
from charter.ledger.generate import GeneratedLedger, generate_ledger

CCF_LEDGER = SHARED_CCF_LEDGERS / "current"
CCF_DEPRECATED_LEDGER = SHARED_CCF_LEDGERS / "deprecated-entry-types"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[GeneratedLedger, Path]:
    d = tmp_path_factory.mktemp("gen")
    ledger_dir = d / "ledger"
    ledger_dir.mkdir()
    g = generate_ledger(
        str(ledger_dir), transactions=60, signature_interval=10, chunk_size_bytes=4000, seed=7
    )
    (d / "service_cert.pem").write_text(g.service_cert_pem)
    return g, d


def test_generated_ledger_audits_clean_against_its_service_cert(
    generated: tuple[GeneratedLedger, Path],
) -> None:
    g, d = generated
    seen: list[tuple[int, int]] = []
    report = audit_ledger(
        d / "ledger",
        service_cert=d / "service_cert.pem",
        progress=lambda s, t: seen.append((s, t)),
    )
    assert report.last_seqno == g.last_seqno == 60
    assert report.service_status == "Open"
    assert seen and seen[-1] == (60, 60)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)


def test_ledger_of_another_service_is_rejected(
    generated: tuple[GeneratedLedger, Path], tmp_path: Path
) -> None:
    _, d = generated
    other = tmp_path / "other_service.pem"
    other.write_text(certs.cert_pem(certs.service_cert(certs.new_key())))
    with pytest.raises(LedgerAuditFailed, match="service"):
        audit_ledger(d / "ledger", service_cert=other)


def test_tampered_ledger_names_the_first_bad_seqno(
    generated: tuple[GeneratedLedger, Path], tmp_path: Path
) -> None:
    g, d = generated
    copy = tmp_path / "ledger"
    shutil.copytree(d / "ledger", copy)
    # Flip the last byte of the entry at `target` (inside its encrypted private domain).
    target = app_seqno(g)
    entry = LedgerReader(str(d / "ledger")).get(target)
    for chunk in sorted(copy.iterdir()):
        data = bytearray(chunk.read_bytes())
        at = data.find(entry)
        if at > 0:
            data[at + len(entry) - 1] ^= 0x01
            chunk.write_bytes(bytes(data))
            break
    else:
        raise AssertionError(f"entry {target} not found in any chunk")
    with pytest.raises(LedgerAuditFailed) as info:
        audit_ledger(copy)
    assert info.value.seqno is not None
    # The change is only detectable at the signature covering it, never before the tx itself.
    assert target <= info.value.seqno <= g.history.signature_after(target).seqno  # type: ignore[union-attr]


def test_real_ccf_ledger_audits_clean() -> None:
    report = audit_ledger(CCF_LEDGER)
    assert (report.last_seqno, report.signatures, report.service_status) == (14, 6, "Open")


def test_deprecated_ccf_ledger_needs_explicit_acceptance() -> None:
    with pytest.raises(LedgerAuditFailed) as info:
        audit_ledger(CCF_DEPRECATED_LEDGER)
    assert info.value.seqno == 1
    assert audit_ledger(CCF_DEPRECATED_LEDGER, accept_deprecated_entry_types=True).last_seqno == 26


def test_missing_ledger_directory_is_an_identity_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="not found"):
        audit_ledger(tmp_path / "nope")


def test_json_and_cose_receipts_verify_offline_and_name_their_transaction(
    generated: tuple[GeneratedLedger, Path], tmp_path: Path
) -> None:
    g, d = generated
    seqno = app_seqno(g)
    json_receipt, cose_receipt = receipts_for(g, seqno)
    (tmp_path / "r.json").write_text(json.dumps(json_receipt))
    (tmp_path / "r.cose").write_bytes(cose_receipt)
    for name, kind in (("r.json", "json"), ("r.cose", "cose")):
        check = verify_receipt_file(tmp_path / name, d / "service_cert.pem")
        assert (check.kind, check.txid) == (kind, f"{g.view}.{seqno}")


def test_tampered_receipts_are_rejected(
    generated: tuple[GeneratedLedger, Path],
) -> None:
    g, d = generated
    service = (d / "service_cert.pem").read_text()
    json_receipt, cose_receipt = receipts_for(g, app_seqno(g))
    components = dict(json_receipt["leaf_components"])  # type: ignore[call-overload]
    components["write_set_digest"] = "00" * 32
    bad_json = {**json_receipt, "leaf_components": components}
    with pytest.raises(ReceiptInvalid, match="does not verify"):
        verify_receipt_bytes(json.dumps(bad_json).encode(), service)
    bad_cose = bytearray(cose_receipt)
    bad_cose[-1] ^= 0x01  # last byte of the service's signature
    with pytest.raises(ReceiptInvalid):
        verify_receipt_bytes(bytes(bad_cose), service)
    with pytest.raises(ReceiptInvalid, match="claims"):
        verify_receipt_bytes(cose_receipt, service, claims_digest=b"\x01" * 32)


def test_receipt_checked_against_another_service_is_rejected(
    generated: tuple[GeneratedLedger, Path],
) -> None:
    g, _ = generated
    json_receipt, cose_receipt = receipts_for(g, app_seqno(g))
    other = certs.cert_pem(certs.service_cert(certs.new_key()))
    for data in (json.dumps(json_receipt).encode(), cose_receipt):
        with pytest.raises(ReceiptInvalid):
            verify_receipt_bytes(data, other)


def test_garbage_receipt_files_give_one_typed_error(
    generated: tuple[GeneratedLedger, Path], tmp_path: Path
) -> None:
    _, d = generated
    cases = {"empty": b"", "text": b"hello", "list": b"[1,2]", "cbor": b"\xd2\x84\x01"}
    cases["obj"] = b'{"cert": 5}'
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ReceiptInvalid):
            verify_receipt_file(tmp_path / name, d / "service_cert.pem")
