"""The status of a transaction id as one node can state it (`/node/tx`, CCF's rules).

Committed and Invalid are final: a client that is told either may act on it for good, so a
node says Invalid only when it can prove that the transaction id can never be committed.
"""

from __future__ import annotations


class TxStatus:
    """The statuses `/node/tx` reports (CCF's names)."""

    UNKNOWN = "Unknown"
    PENDING = "Pending"
    COMMITTED = "Committed"
    INVALID = "Invalid"


def evaluate_tx_status(
    *,
    view: int,
    seqno: int,
    local_view: int | None,
    committed_view: int | None,
    committed_seqno: int,
) -> str:
    """Status of transaction id `view.seqno` on a node whose log holds an entry of
    `local_view` at `seqno` (None: no entry there) and has committed up to `committed_seqno`,
    an entry of `committed_view`.

    An uncommitted entry of a later view at `seqno` proves nothing: a primary of that later
    view may lose its election race before its entry commits, and a primary of a still later
    view that holds the older entry commits that one instead (Raft lets a node with an older
    but longer log win). Only a commit in a later view rules `view.seqno` out: every future
    primary holds that committed entry, and views never decrease along a log, so nothing of
    an earlier view can follow it.
    """
    assert seqno >= 0 and committed_seqno >= 0
    if seqno <= committed_seqno:
        return TxStatus.COMMITTED if local_view == view else TxStatus.INVALID
    if local_view == view:
        return TxStatus.PENDING
    if committed_view is not None and committed_view > view:
        return TxStatus.INVALID
    return TxStatus.UNKNOWN
