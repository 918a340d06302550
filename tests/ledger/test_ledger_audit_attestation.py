"""`audit(check_attestation=True)` replays governance's admissions from the ledger alone."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from shared_data import SHARED

from charter.ledger.audit import audit
from charter.ledger.audit_attestation import (
    NODES_INFO,
    SNP_MEASUREMENTS,
    VIRTUAL_MEASUREMENTS,
    AdmissionCheck,
)
from charter.ledger.errors import AuditError
from charter.ledger.generate import generate_ledger

NODE_ID = "ab" * 32


def _virtual_quote_info(node_id: str, measurement: str) -> dict[str, str]:
    report = {
        "format": "Insecure_Virtual",
        "measurement": measurement,
        "report_data": node_id,  # a node id is the SHA-256 its report binds
        "warning": "virtual platform: this report is not backed by hardware",
    }
    raw = json.dumps(report).encode()
    return {
        "format": "Insecure_Virtual",
        "quote": base64.b64encode(raw).decode(),
        "endorsements": "",
    }


def _info(node_id: str, measurement: str, status: str = "Pending") -> bytes:
    return json.dumps(
        {"status": status, "quote_info": _virtual_quote_info(node_id, measurement)}
    ).encode()


def test_a_ledger_whose_nodes_joined_without_evidence_is_refused_naming_node_and_seqno(
    tmp_path: Path,
) -> None:
    ledger = generate_ledger(str(tmp_path), transactions=20, signature_interval=5)
    assert audit(str(tmp_path)).transactions == 20  # valid as a ledger
    with pytest.raises(AuditError) as caught:
        audit(str(tmp_path), check_attestation=True)
    assert caught.value.seqno == 1
    assert f"node {ledger.node_id} joined with evidence that fails" in str(caught.value)


def test_the_attestation_check_needs_the_whole_ledger(tmp_path: Path) -> None:
    generate_ledger(str(tmp_path), transactions=12, signature_interval=3)
    with pytest.raises(ValueError, match="seqno 1"):
        audit(str(tmp_path), check_attestation=True, snapshot=b"x")


def test_admission_follows_the_join_policy_of_its_own_transaction() -> None:
    check = AdmissionCheck()
    measurement = "11" * 32
    # The genesis transaction admits its own code and its node in one write set.
    check.absorb(
        {
            VIRTUAL_MEASUREMENTS: {measurement.encode(): b'"AllowedToJoin"'},
            NODES_INFO: {NODE_ID.encode(): _info(NODE_ID, measurement, "Trusted")},
        },
        seqno=1,
    )
    check.require_admitted(NODE_ID, seqno=2)
    # A later node with other code is refused while that code is not admitted ...
    other, newer = "cd" * 32, "22" * 32
    with pytest.raises(AuditError) as caught:
        check.absorb({NODES_INFO: {other.encode(): _info(other, newer)}}, seqno=5)
    assert caught.value.seqno == 5 and "measurement" in str(caught.value)
    # ... and admitted once members added it; removing it later does not undo the admission.
    third = "ef" * 32
    check.absorb({VIRTUAL_MEASUREMENTS: {newer.encode(): b'"AllowedToJoin"'}}, seqno=6)
    check.absorb({NODES_INFO: {third.encode(): _info(third, newer)}}, seqno=7)
    check.absorb({VIRTUAL_MEASUREMENTS: {newer.encode(): None}}, seqno=8)
    check.require_admitted(third, seqno=9)
    with pytest.raises(AuditError, match="never admitted"):
        check.require_admitted("01" * 32, seqno=9)


def test_evidence_bound_to_another_key_or_of_an_unknown_format_is_refused() -> None:
    check = AdmissionCheck()
    measurement = "11" * 32
    check.absorb({VIRTUAL_MEASUREMENTS: {measurement.encode(): b'"AllowedToJoin"'}}, seqno=1)
    stolen = _info("cd" * 32, measurement)  # a report made for another node's key
    with pytest.raises(AuditError, match="report_data"):
        check.absorb({NODES_INFO: {NODE_ID.encode(): stolen}}, seqno=2)
    sgx = json.dumps(
        {
            "status": "Pending",
            "quote_info": {"format": "OE_SGX_v1", "quote": "", "endorsements": ""},
        }
    ).encode()
    with pytest.raises(AuditError, match="OE_SGX_v1"):
        check.absorb({NODES_INFO: {("ef" * 32).encode(): sgx}}, seqno=3)


def test_snp_evidence_goes_through_the_full_snp_verification() -> None:
    snp_dir = SHARED / "snp-attestation" / "milan"
    report = bytes.fromhex((snp_dir / "report.hex").read_text().strip())
    vcek_pem = (
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes((snp_dir / "vcek.der").read_bytes())
        + b"-----END CERTIFICATE-----\n"
    )
    # The real report binds these 32 bytes (a node id is the SHA-256 its report binds).
    node_id = report[0x50:0x70].hex()
    assert report[0x70:0x90] != bytes(32)  # the Milan report fills all 64 bytes: not a node's
    info = json.dumps(
        {
            "status": "Pending",
            "quote_info": {
                "format": "AMD_SEV_SNP_v1",
                "quote": base64.b64encode(report).decode(),
                "endorsements": base64.b64encode(vcek_pem).decode(),
            },
        }
    ).encode()
    check = AdmissionCheck()
    check.absorb(
        {SNP_MEASUREMENTS: {report[0x90:0xC0].hex().encode(): b'"AllowedToJoin"'}}, seqno=1
    )
    with pytest.raises(AuditError, match="report_data"):
        check.absorb({NODES_INFO: {node_id.encode(): info}}, seqno=2)
