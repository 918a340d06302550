"""Retirement: when this node retires, and the primary's record of retired nodes it told.

A voter retires when a configuration without it commits (Raft reports `became_retired`). A
node governance removed while still a learner is in no configuration, so no configuration
change retires it: it retires once the entry that marked it Retired commits.

A primary keeps telling a removed node until the node has learnt that its removal committed
(Raft's `track_removed`); once done, Raft releases it and the primary records that, as CCF's
`retired_committed`, so that no later primary needs to tell it again.
"""

from __future__ import annotations

import logging

from charter.consensus import Role
from charter.enclave_app.node.core import NodeCore
from charter.enclave_app.node.lifecycle import NodeState
from charter.enclave_app.node.peers import Peers
from charter.enclave_app.node.replication import Replication
from charter.governance import tables as gt

LOG = logging.getLogger(__name__)


class Retirement:
    """Whether this node has retired, and the `retired_committed` records it owes as primary."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.retired = False

    def after_commit(self, committed: int, replication: Replication, peers: Peers) -> None:
        """Retire a node removed while a learner once its removal has committed."""
        retired_at = peers.retired_at
        if (
            retired_at is not None
            and committed >= retired_at
            and self.core.identity.node_id not in replication.raft.configuration
            and not self.retired
        ):
            # Removed while still a learner: no configuration change will retire it. (Raft
            # waits if a configuration without it is still in flight: it was a voter.)
            replication.raft.retire()
            if replication.raft.role is Role.RETIRED:
                self.become_retired()

    def become_retired(self) -> None:
        if not self.retired:
            self.retired = True
            self.core.lifecycle.advance(NodeState.RETIRED)
            LOG.info("event=retired node_id=%s", self.core.identity.node_id)

    def untold_released(self, peers: Peers) -> list[str]:
        """Released nodes whose record does not yet say `retired_committed`."""
        if not peers.released:
            return []
        tx = self.core.store.begin()
        untold = []
        for node_id in sorted(peers.released):
            raw = tx.get(gt.NODES_INFO, gt.id_key(node_id))
            info = gt.load_json(raw, what=gt.NODES_INFO) if raw is not None else None
            if not isinstance(info, dict):
                continue
            if info.get("status") == "Retired" and info.get("retired_committed") is not True:
                untold.append(node_id)
        if not untold:
            peers.released.clear()
        return untold

    def record_retired_committed(
        self, replication: Replication, peers: Peers, untold: list[str]
    ) -> None:
        """Record, as CCF's `retired_committed`, that the retired nodes this primary finished
        telling need no primary to tell them again."""
        tx = self.core.store.begin()
        for node_id in untold:
            key = gt.id_key(node_id)
            info = gt.load_json(tx.get(gt.NODES_INFO, key) or b"{}", what=gt.NODES_INFO)
            gt.put_json(tx, gt.NODES_INFO, key, {**info, "retired_committed": True})
        replication.commit_tx(tx)
        peers.released.clear()
