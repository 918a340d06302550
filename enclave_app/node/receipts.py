"""Transaction status and receipts, as this node can state them (CCF's rules and shapes)."""

from __future__ import annotations

import json

from charter.enclave_app.app import HttpResponse, error_response
from charter.enclave_app.node.core import RETRY_AFTER_S, NodeCore
from charter.enclave_app.node.historical import HistoricalCache, HistoricalError, HistoricalState
from charter.enclave_app.node.replication import LocalLog
from charter.enclave_app.tx_status import TxStatus, evaluate_tx_status
from charter.ledger import receipt
from charter.ledger.history import SignatureRecord
from charter.ledger.merkle import InclusionProof


class Receipts:
    """`/node/tx` and `/node/receipt` over the node's log and Merkle history."""

    def __init__(self, core: NodeCore, log: LocalLog, historical: HistoricalCache) -> None:
        self.core = core
        self.log = log
        self.historical = historical

    def tx_status(self, view: int, seqno: int) -> str:
        """CCF's status of a transaction id, as this node knows it."""
        log = self.log
        return evaluate_tx_status(
            view=view,
            seqno=seqno,
            local_view=log.view_at(seqno),
            committed_view=log.view_at(log.commit_seqno),
            committed_seqno=log.commit_seqno,
        )

    def receipt(self, view: int, seqno: int, *, cose: bool = False) -> HttpResponse:
        history = self.log.history
        status = self.tx_status(view, seqno)
        if status == TxStatus.INVALID:
            return error_response(f"{view}.{seqno} is invalid", code="TransactionInvalid")
        if status == TxStatus.UNKNOWN:
            return error_response(f"{view}.{seqno} is unknown", code="TransactionNotFound")
        if seqno < history.tree.min_index and status == TxStatus.COMMITTED:
            # Older than the in-memory window (a cache, not a limit): read back and checked.
            try:
                state = self.historical.state_at(seqno)
            except HistoricalError as error:
                code = error.code
                if code == "HistoricalStateNotAvailable":
                    code = "ReceiptNotAvailable"
                return error_response(f"receipt of {view}.{seqno}: {error.message}", code=code)
            if state is None:
                return _pending()
            return historical_receipt(state, cose=cose)
        if not cose and status == TxStatus.COMMITTED and history.is_signature(seqno):
            # As CCF: a signature transaction's receipt is its own signature over the root it
            # records (`is_signature_transaction: true`, `leaf` = that root, no proof).
            own = history.signature_after(seqno - 1)
            assert own is not None and own.seqno == seqno, "a signature holds its own record"
            doc = receipt.build_signature_receipt(
                node_cert_pem=own.node_cert_pem or "",
                node_id=own.node_id,
                signature=own.signature,
                root=own.root,
            )
            return HttpResponse(200, json.dumps(doc).encode(), {}, "application/json")
        material = history.receipt_material(seqno) if status == TxStatus.COMMITTED else None
        if material is None or material[1].seqno > self.log.commit_seqno:
            return _pending()
        proof, signature = material
        wsd, evidence, claims = history.leaf_components(seqno)
        assert evidence is not None, "the enclave holds the ledger secret"
        return _render(proof, signature, wsd, evidence, claims, cose=cose)


def _pending() -> HttpResponse:
    return HttpResponse(
        202, b'{"status":"Pending"}', {"Retry-After": RETRY_AFTER_S}, "application/json"
    )


def historical_receipt(state: HistoricalState, *, cose: bool = False) -> HttpResponse:
    """The receipt of a transaction read back by the historical cache (checked there)."""
    own = state.own_signature
    if not cose and own is not None:
        doc = receipt.build_signature_receipt(
            node_cert_pem=own.node_cert_pem or "",
            node_id=own.node_id,
            signature=own.signature,
            root=own.root,
        )
        return HttpResponse(200, json.dumps(doc).encode(), {}, "application/json")
    material = state.receipt_material()
    if material is None:
        return _pending()
    proof, signature = material
    return _render(
        proof,
        signature,
        state.write_set_digest,
        state.commit_evidence,
        state.claims_digest,
        cose=cose,
    )


def _render(
    proof: InclusionProof,
    signature: SignatureRecord,
    wsd: bytes,
    evidence: str,
    claims: bytes,
    *,
    cose: bool,
) -> HttpResponse:
    if cose:
        body = receipt.build_cose_receipt(
            signature.cose_sign1,
            write_set_digest=wsd,
            commit_evidence=evidence,
            claims_digest=claims,
            proof=proof,
        )
        return HttpResponse(200, body, {}, "application/cose")
    doc = receipt.build_json_receipt(
        node_cert_pem=signature.node_cert_pem or "",
        node_id=signature.node_id,
        signature=signature.signature,
        proof=proof,
        write_set_digest=wsd,
        commit_evidence=evidence,
        claims_digest=claims,
    )
    return HttpResponse(200, json.dumps(doc).encode(), {}, "application/json")
