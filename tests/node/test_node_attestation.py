"""Joins are judged by the evidence's own format against the policy governance set for it.

A joiner's evidence on the virtual platform is checked against the virtual measurements; SEV-SNP
evidence (here the real Milan report of shared/snp-attestation) against the `nodes.snp.*`
tables, through AMD's pinned roots, and it must bind the joining node's own key.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from shared_data import SHARED
from test_node_inprocess import _drain, _start

from charter.enclave_app.node import Node
from charter.governance import tables as gt
from charter.ledger import certs

SNP = SHARED / "snp-attestation"
MILAN_REPORT = bytes.fromhex((SNP / "milan" / "report.hex").read_text().strip())
MILAN_VCEK_PEM = (
    b"-----BEGIN CERTIFICATE-----\n"
    + base64.encodebytes((SNP / "milan" / "vcek.der").read_bytes())
    + b"-----END CERTIFICATE-----\n"
)


def _join(node: Node, body: dict[str, Any]) -> Any:
    raw = json.dumps(body).encode()
    return node.handle(
        "POST", "/node/join", "", {"content-type": "application/json"}, raw, None, source="10.0.0.9"
    )


def _body(quote: bytes, quote_format: str, endorsements: bytes = b"") -> dict[str, Any]:
    key = certs.new_key()
    return {
        "public_key": certs.public_key_pem(key.public_key()),
        "quote": base64.b64encode(quote).decode(),
        "quote_format": quote_format,
        "endorsements": base64.b64encode(endorsements).decode(),
        "rpc_address": "127.0.0.1:1",
        "node_to_node_address": "127.0.0.1:2",
    }


def _error(response: Any) -> tuple[int, str, str]:
    error = json.loads(response.body)["error"]
    return response.status, error["code"], error["message"]


def _govern_snp(node: Node) -> None:
    tx = node.store.begin()
    gt.put_json(
        tx, gt.NODES_SNP_MEASUREMENTS, MILAN_REPORT[0x90:0xC0].hex().encode(), gt.ALLOWED_TO_JOIN
    )
    gt.put_json(tx, gt.NODES_SNP_HOST_DATA, MILAN_REPORT[0xC0:0xE0].hex().encode(), "")
    node.commit_tx(tx)
    _drain(node)


def test_snp_evidence_that_does_not_bind_the_joiners_key_is_refused_as_such(
    tmp_path: Path,
) -> None:
    node, _ = _start(tmp_path)
    _drain(node)
    _govern_snp(node)
    status, code, message = _error(
        _join(node, _body(MILAN_REPORT, "AMD_SEV_SNP_v1", MILAN_VCEK_PEM))
    )
    # Everything about the report checks out (AMD's chain, signature, TCB, governed code)
    # except that it was made for another key: the join is refused, and says why.
    assert (status, code) == (403, "InvalidQuote")
    assert message.startswith("report_data:"), message


def test_snp_evidence_of_ungoverned_code_or_a_forged_chain_is_refused(tmp_path: Path) -> None:
    node, _ = _start(tmp_path)
    _drain(node)
    body = _body(MILAN_REPORT, "AMD_SEV_SNP_v1", MILAN_VCEK_PEM)
    assert _error(_join(node, body))[:2] == (403, "InvalidQuote")
    flipped = bytearray(MILAN_REPORT)
    flipped[0x100] ^= 1
    _govern_snp(node)
    status, code, message = _error(
        _join(node, _body(bytes(flipped), "AMD_SEV_SNP_v1", MILAN_VCEK_PEM))
    )
    assert (status, code) == (403, "InvalidQuote") and message.startswith("report_signature:")
    status, code, message = _error(_join(node, _body(MILAN_REPORT, "AMD_SEV_SNP_v1")))
    assert (status, code) == (403, "InvalidQuote") and "endorsements" in message


def test_evidence_of_an_unknown_format_is_refused_and_records_nothing(tmp_path: Path) -> None:
    node, _ = _start(tmp_path)
    _drain(node)
    before = list(node.store.begin().items(gt.NODES_INFO))
    status, code, message = _error(_join(node, _body(b"{}", "OE_SGX_v1")))
    assert (status, code) == (403, "InvalidQuote") and "OE_SGX_v1" in message
    assert list(node.store.begin().items(gt.NODES_INFO)) == before


def test_the_first_node_admits_its_own_code_and_records_its_evidence(tmp_path: Path) -> None:
    node, _ = _start(tmp_path)
    _drain(node)
    tx = node.store.begin()
    measurements = [k.decode() for k, _ in tx.items(gt.NODES_VIRTUAL_MEASUREMENTS)]
    assert measurements == [node.platform.measurement]
    info = gt.node_info(tx, node.node_id)
    assert info is not None
    assert info["quote_info"]["format"] == "Insecure_Virtual"
    report = json.loads(base64.b64decode(info["quote_info"]["quote"]))
    assert report["measurement"] == node.platform.measurement
