"""`/node/tx` statuses stated from a real Raft log: Committed and Invalid are final.

The statuses come from `charter.enclave_app.tx_status.evaluate_tx_status` over what the node's
Raft object holds, as `Node.tx_status` does. The scenario is one a 3-node network reaches under
faults: a node holds an uncommitted entry of a later view at the very seqno where an entry of
an earlier view is committed afterwards.
"""

from __future__ import annotations

import dataclasses

from consensus_cluster import FAST, Cluster

from charter.consensus import Raft
from charter.enclave_app.tx_status import TxStatus, evaluate_tx_status

NO_PRE_VOTE = dataclasses.replace(FAST, pre_vote=False)


def _status(raft: Raft, view: int, seqno: int) -> str:
    return evaluate_tx_status(
        view=view,
        seqno=seqno,
        local_view=raft.term_at(seqno),
        committed_view=raft.term_at(raft.commit_index),
        committed_seqno=raft.commit_index,
    )


def test_tx_replaced_only_by_an_uncommitted_later_view_is_not_reported_invalid() -> None:
    c = Cluster(["a", "b", "c"], config=NO_PRE_VOTE)
    c.elect("a")
    # a, cut off, appends seqno n in its view; no one else has it.
    c.isolate("a")
    view_a, n = c.propose("a", b"kept in the end", signature=True)
    # b and c elect one of them (p) in a later view; p appends its own seqno n, which reaches
    # no one.
    c.run_for(500)
    p = c.primary()
    assert p in ("b", "c")
    q = "c" if p == "b" else "b"
    c.isolate(p)
    view_p, n_p = c.propose(p, b"lost in the end", signature=True)
    assert n_p == n and view_p > view_a
    seen_on_p = [_status(c.nodes[p], view_a, n)]
    # a comes back while p is away: a's log is longer than q's, so once q stops hearing from p
    # it votes for a in a still later view, and a commits its seqno n with a signature.
    c.cut.discard("a")
    c.run_for(1000)  # q cannot win: a refuses it, holding the longer log
    assert c.primary() == "a" and c.nodes["a"].view > view_p
    c.propose("a", b"sig", signature=True)
    assert _status(c.nodes["a"], view_a, n) == TxStatus.COMMITTED
    assert _status(c.nodes[q], view_a, n) == TxStatus.COMMITTED
    seen_on_p.append(_status(c.nodes[p], view_a, n))
    # p rejoins: its entry at n is replaced by a's, and it learns the commit.
    c.heal()
    c.run_for(500)
    seen_on_p.append(_status(c.nodes[p], view_a, n))
    assert seen_on_p[-1] == TxStatus.COMMITTED, seen_on_p
    assert TxStatus.INVALID not in seen_on_p, (
        f"{p} called {view_a}.{n} Invalid before it was committed: {seen_on_p}"
    )
    # And p's own entry of the later view is the one that is now impossible, everywhere.
    for raft in c.nodes.values():
        assert _status(raft, view_p, n) == TxStatus.INVALID


def test_tx_after_a_commit_in_a_later_view_is_invalid_before_its_seqno_commits() -> None:
    # A commit of a later view at a lower seqno already rules an earlier view out.
    assert (
        evaluate_tx_status(view=3, seqno=12, local_view=3, committed_view=4, committed_seqno=10)
        == TxStatus.PENDING
    )
    assert (
        evaluate_tx_status(view=3, seqno=12, local_view=4, committed_view=4, committed_seqno=10)
        == TxStatus.INVALID
    )
    assert (
        evaluate_tx_status(view=3, seqno=12, local_view=None, committed_view=4, committed_seqno=10)
        == TxStatus.INVALID
    )


def test_tx_status_follows_ccf_for_unknown_pending_and_committed_ids() -> None:
    assert (
        evaluate_tx_status(view=2, seqno=5, local_view=None, committed_view=2, committed_seqno=3)
        == TxStatus.UNKNOWN
    )
    assert (
        evaluate_tx_status(view=2, seqno=5, local_view=2, committed_view=2, committed_seqno=3)
        == TxStatus.PENDING
    )
    assert (
        evaluate_tx_status(view=2, seqno=5, local_view=2, committed_view=2, committed_seqno=5)
        == TxStatus.COMMITTED
    )
    assert (
        evaluate_tx_status(view=2, seqno=5, local_view=3, committed_view=3, committed_seqno=5)
        == TxStatus.INVALID
    )
    # A later view than any this node knows: nothing can be said yet.
    assert (
        evaluate_tx_status(view=9, seqno=5, local_view=3, committed_view=3, committed_seqno=4)
        == TxStatus.UNKNOWN
    )
