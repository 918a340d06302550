"""The enclave's node: `Node` (the facade the runtime drives) and the parts behind it.

`lifecycle` (states and their transitions), `core` (what the parts share), `replication`
(commit, signatures, apply, rollback, on-commit), `snapshots`, `joins` (both sides),
`peers` (peer table, channels), `messages` (the typed node-to-node messages and their codec),
`receipts` (tx status, receipts), `retirement` (when this node retires; `retired_committed`
records) and `restart` (Raft restarted on the own ledger read back).
The request pipeline is `charter.enclave_app.frontend`.

May import: `charter.consensus`, `charter.ledger`, `charter.governance` and the rest of
`charter.enclave_app` (never `charter.host`: the host is outside the trust boundary). The
parts reach one another's state only through `core.NodeCore`; only the facade wires them.
"""

from charter.enclave_app.frontend import TXID_HEADER, AuthError, Forwarded
from charter.enclave_app.node.facade import Node
from charter.enclave_app.node.joins import MAX_PENDING_NODES
from charter.enclave_app.node.lifecycle import IllegalTransition, NodeState
from charter.enclave_app.node.restart import RollbackError

__all__ = [
    "MAX_PENDING_NODES",
    "TXID_HEADER",
    "AuthError",
    "Forwarded",
    "IllegalTransition",
    "Node",
    "NodeState",
    "RollbackError",
]
