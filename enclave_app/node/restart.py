"""Restart under the same identity: Raft restarted on the node's own ledger, read back.

The host is untrusted, so what it hands back is checked before Raft runs on it: a ledger
shorter than what this node had committed (sealed) is refused; an unsigned tail is dropped
(Raft commits only at signatures, so it cannot have committed), everywhere; and the code
must still be one governance accepts, as for a join.
"""

from __future__ import annotations

from charter.consensus import LogEntry, Raft, StartState
from charter.enclave_app import interface as itf
from charter.enclave_app.attestation import check_own_code
from charter.enclave_app.node.core import NodeCore
from charter.enclave_app.node.replication import LocalLog


class RollbackError(Exception):
    """The host handed back less ledger than this node had committed."""


def restart_raft(
    core: NodeCore,
    log: LocalLog,
    replay_base: tuple[int, int],
    base_voters: frozenset[str],
    entries: list[LogEntry],
) -> Raft:
    """A Raft on the replayed `entries`, from the snapshot (seqno, view) `replay_base` that
    the replay started after ((0, 0) for a whole ledger), whose configuration was
    `base_voters`; truncates what it must drop."""
    identity = core.identity
    if log.applied_seqno < identity.committed_seqno:
        raise RollbackError(
            f"the host's ledger ends at seqno {log.applied_seqno} but this node had "
            f"committed seqno {identity.committed_seqno}: ledger files are missing or "
            "were rolled back; refusing to start"
        )
    # Only what was signed survives: an unsigned tail cannot have been committed
    # (Raft commits only at signatures), so drop it everywhere.
    last_sig = core.history.last_signature
    base_seqno, base_view = replay_base
    # Never below a snapshot this node started from: that point is committed.
    keep = max(last_sig.seqno if last_sig is not None else 0, base_seqno)
    if keep < log.applied_seqno:
        log.rollback(keep)
        core.outbox.append(itf.Truncate(keep))
        entries = [e for e in entries if e.index <= keep]
    # What this node had committed (sealed) is committed still: Raft starts knowing it.
    # A far-behind peer's answer carries it, so the primary never needs to send entries
    # at or below it, which a primary that started from a later snapshot may not hold.
    committed = max(base_seqno, min(identity.committed_seqno, keep))
    # Governance may have removed this code's measurement while the node ran (it ran on,
    # as in CCF); coming back with it is a new admission, refused as a join would be.
    check_own_code(core.store.begin(), core.platform.evidence(identity.public_key_der))
    # The configuration at the base, not the store's latest: Raft rebuilds the later ones
    # from the entries, and a node whose uncommitted removal is among them must still know
    # it was a voter before it (it may be the only node whose log can win an election).
    raft = core.new_raft(
        StartState(
            configuration=base_voters,
            last_index=base_seqno,
            last_term=base_view,
            commit_index=committed,
            term=max(identity.term, base_view),
            voted_for=identity.voted_for,
        ),
        entries,
    )
    if raft.configuration == frozenset({identity.node_id}):
        raft.campaign()
    return raft
