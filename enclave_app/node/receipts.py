"""Transaction status and receipts, as this node can state them (CCF's rules and shapes)."""

from __future__ import annotations

import json
import struct

from charter.enclave_app.app import HttpResponse, error_response
from charter.enclave_app.kv import Tx
from charter.enclave_app.node.core import RETRY_AFTER_S, NodeCore
from charter.enclave_app.node.historical import HistoricalCache, HistoricalError, HistoricalState
from charter.enclave_app.node.replication import LocalLog
from charter.enclave_app.tx_status import TxStatus, evaluate_tx_status
from charter.governance import tables as gt
from charter.ledger import receipt
from charter.ledger import service_state as ss
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
            return historical_receipt(state, cose=cose, endorsements=self._endorsements(seqno))
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
                service_endorsements=self._endorsements(own.seqno),
            )
            return HttpResponse(200, json.dumps(doc).encode(), {}, "application/json")
        material = history.receipt_material(seqno) if status == TxStatus.COMMITTED else None
        if material is None or material[1].seqno > self.log.commit_seqno:
            return _pending()
        proof, signature = material
        wsd, evidence, claims = history.leaf_components(seqno)
        if evidence is None:
            # A recovering service holds the old ledger's public domains only, until the
            # recovery shares reveal its secrets.
            return error_response(
                f"{view}.{seqno} precedes a recovery that is not complete",
                code="ServiceNotReady",
            )
        return _render(
            proof,
            signature,
            wsd,
            evidence,
            claims,
            cose=cose,
            endorsements=self._endorsements(signature.seqno),
        )

    def endorsements_for(self, seqno: int) -> list[str]:
        """What a receipt of `seqno` (or of its signature) carries as service_endorsements."""
        return self._endorsements(seqno)

    def _endorsements(self, signature_seqno: int) -> list[str]:
        """After recoveries, what chains a signature of an earlier service to this one."""
        return service_endorsements(self.core.store.begin(), signature_seqno)


def service_endorsements(tx: Tx, signature_seqno: int) -> list[str]:
    """The certificates chaining a node certificate of the service that signed at
    `signature_seqno` to the current service certificate, oldest first: the endorsement of
    the previous key by every later recovery (table written by `node/recovery.py`, keyed by
    the first seqno of the service that issued it)."""
    found = []
    for key, value in tx.items(ss.SERVICE_ENDORSEMENTS):
        (first_seqno,) = struct.unpack("<Q", key)
        if first_seqno > signature_seqno:
            doc = gt.load_json(value, what=ss.SERVICE_ENDORSEMENTS)
            found.append((first_seqno, str(doc["endorsement"])))
    return [pem for _, pem in sorted(found)]


def _pending() -> HttpResponse:
    return HttpResponse(
        202, b'{"status":"Pending"}', {"Retry-After": RETRY_AFTER_S}, "application/json"
    )


def historical_receipt(
    state: HistoricalState, *, cose: bool = False, endorsements: list[str] | None = None
) -> HttpResponse:
    """The receipt of a transaction read back by the historical cache (checked there);
    `endorsements` chain its signer to the current service after recoveries."""
    own = state.own_signature
    if not cose and own is not None:
        doc = receipt.build_signature_receipt(
            node_cert_pem=own.node_cert_pem or "",
            node_id=own.node_id,
            signature=own.signature,
            root=own.root,
            service_endorsements=endorsements or [],
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
        endorsements=endorsements or [],
    )


def _render(
    proof: InclusionProof,
    signature: SignatureRecord,
    wsd: bytes,
    evidence: str,
    claims: bytes,
    *,
    cose: bool,
    endorsements: list[str],
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
        service_endorsements=endorsements,
    )
    return HttpResponse(200, json.dumps(doc).encode(), {}, "application/json")
