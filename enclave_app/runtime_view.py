"""What an application handler may know about the node it runs on (`ctx.runtime`).

Read-only facts and lookups, so that apps such as the ACL-compatible sample can answer
"what is the status of transaction V.S", "give me its receipt" or "which transaction id will
this write get" without reaching into the node's internals.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol, cast

from charter.consensus import Raft
from charter.enclave_app.app import HttpResponse
from charter.enclave_app.errors import HttpError
from charter.enclave_app.identity import Identity
from charter.enclave_app.indexing import IndexStrategy, LiveIndex
from charter.enclave_app.indexing.strategy import L
from charter.enclave_app.platform import Platform

if TYPE_CHECKING:
    # Only for types: the node package imports this module.
    from charter.enclave_app.node.historical import HistoricalCache, HistoricalState


class NodeFacts(Protocol):
    """What the view reads of the node (`enclave_app.node.Node` is one)."""

    @property
    def node_id(self) -> str: ...

    @property
    def commit_seqno(self) -> int: ...

    @property
    def raft(self) -> Raft | None: ...

    @property
    def is_primary(self) -> bool: ...

    @property
    def identity(self) -> Identity | None: ...

    @property
    def platform(self) -> Platform: ...

    def view_at(self, seqno: int) -> int | None: ...

    def tx_status(self, view: int, seqno: int) -> str: ...

    def receipt(self, view: int, seqno: int, *, cose: bool = False) -> HttpResponse: ...

    def service_endorsements(self, seqno: int) -> list[str]: ...

    @property
    def historical(self) -> HistoricalCache: ...

    def index(self, name: str) -> LiveIndex: ...


class RuntimeView:
    """A handler's window on the node (`ctx.runtime`)."""

    def __init__(self, node: NodeFacts) -> None:
        self._node = node

    @property
    def node_id(self) -> str:
        return self._node.node_id

    @property
    def commit_txid(self) -> tuple[int, int]:
        """(view, seqno) of the last committed transaction."""
        seqno = self._node.commit_seqno
        return self._node.view_at(seqno) or 0, seqno

    @property
    def pending_txid(self) -> tuple[int, int] | None:
        """(view, seqno) the transaction being executed will have if it commits (a write on
        the primary); None on a backup or in a read-only endpoint."""
        raft = self._node.raft
        if raft is None or not self._node.is_primary:
            return None
        return raft.view, raft.last_index + 1

    def tx_status(self, view: int, seqno: int) -> str:
        """Unknown, Pending, Committed or Invalid."""
        return self._node.tx_status(view, seqno)

    def receipt(self, view: int, seqno: int) -> tuple[int, dict[str, Any] | None]:
        """(200, CCF JSON receipt) once available; (202, None) while pending; (404, None)."""
        response = self._node.receipt(view, seqno)
        if response.status != 200:
            return response.status, None
        doc: dict[str, Any] = json.loads(response.body)
        return 200, doc

    def receipt_response(self, view: int, seqno: int, *, cose: bool = False) -> HttpResponse:
        """The node's own answer for a receipt (status, CCF's body or error, Retry-After)."""
        return self._node.receipt(view, seqno, cose=cose)

    def cose_receipt(self, view: int, seqno: int) -> tuple[int, bytes | None]:
        """(200, CCF COSE receipt) once available; (202, None) while pending; (404, None)."""
        response = self._node.receipt(view, seqno, cose=True)
        if response.status != 200:
            return response.status, None
        return 200, response.body

    # ------------------------------------------------------------------ history
    def historical_state(self, view: int, seqno: int) -> HistoricalState | None:
        """The state at committed transaction `view.seqno` (its writes, private ones
        decrypted), read back from the ledger and checked; None while it is being fetched
        (answer 202 + Retry-After). Raises HttpError when the transaction is not committed
        (`TransactionPendingOrUnknown`, `TransactionInvalid`) or cannot be had."""
        status = self._node.tx_status(view, seqno)
        if status == "Invalid":
            raise HttpError(f"Transaction {view}.{seqno} is invalid", code="TransactionInvalid")
        if status != "Committed":
            raise HttpError(
                f"Only committed transactions can be queried. Transaction {view}.{seqno} "
                f"is {status}",
                code="TransactionPendingOrUnknown",
            )
        states = self._historical(seqno, seqno)
        return None if states is None else states[0]

    def historical_range(self, from_seqno: int, to_seqno: int) -> list[HistoricalState] | None:
        """The states of committed seqnos from_seqno..to_seqno (at most
        `historical.RANGE_SEQNOS_MAX`), in order; None while they are being fetched."""
        commit = self._node.commit_seqno
        if to_seqno > commit:
            raise HttpError(
                f"Only committed transactions can be queried: seqno {to_seqno} is past the "
                f"commit seqno {commit}",
                code="TransactionPendingOrUnknown",
            )
        return self._historical(from_seqno, to_seqno)

    def _historical(self, lo: int, hi: int) -> list[HistoricalState] | None:
        from charter.enclave_app.node.historical import HistoricalError

        try:
            return self._node.historical.states_in(lo, hi)
        except HistoricalError as error:
            raise HttpError(error.message, code=error.code) from None

    def historical_receipt(self, state: HistoricalState) -> dict[str, Any]:
        """CCF's JSON receipt of a historical state's transaction."""
        from charter.enclave_app.node.receipts import historical_receipt

        response = historical_receipt(
            state, endorsements=self._node.service_endorsements(state.seqno)
        )
        if response.status != 200:
            raise HttpError("the receipt is not available yet", code="ReceiptNotAvailable")
        doc: dict[str, Any] = json.loads(response.body)
        return doc

    def historical_cose_receipt(self, state: HistoricalState) -> bytes:
        """CCF's COSE receipt of a historical state's transaction."""
        from charter.enclave_app.node.receipts import historical_receipt

        response = historical_receipt(state, cose=True)
        if response.status != 200:
            raise HttpError("the receipt is not available yet", code="ReceiptNotAvailable")
        return response.body

    def index(self, strategy: IndexStrategy[L]) -> L:
        """This node's live index of `strategy` (installed with `app.install_index`), e.g. a
        `SeqnosByKeyIndex` to call `get_write_txs_in_range` on."""
        return cast(L, self._node.index(strategy.name))

    @property
    def service_certificate(self) -> str:
        identity = self._node.identity
        return identity.service_cert_pem if identity is not None else ""

    def attestation(self) -> dict[str, Any]:
        """This node's attestation evidence (format, measurement, raw report in base64)."""
        identity = self._node.identity
        assert identity is not None
        info = self._node.platform.evidence(identity.public_key_der).quote_info()
        return {
            "node_id": self._node.node_id,
            "format": info["format"],
            "measurement": self._node.platform.measurement,
            "raw": info["quote"],
            "endorsements": info["endorsements"],
        }
