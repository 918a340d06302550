"""Membership, starting points and log maintenance: joins, retirement, snapshots, restarts."""

from __future__ import annotations

import dataclasses

import pytest
from consensus_cluster import FAST, Cluster

from charter.consensus import (
    AppendEntries,
    AppendEntriesResponse,
    ConfigurationError,
    ConsensusError,
    LogEntry,
    NotPrimaryError,
    Raft,
    RaftConfig,
    Ready,
    RequestVoteResponse,
    Role,
    StartState,
)
from charter.consensus.raft import BEHIND_START_RETRY_MS

ABC = ["a", "b", "c"]


def _grow(c: Cluster, primary: str, n: int) -> None:
    for k in range(n):
        c.propose(primary, f"tx{k}".encode(), signature=k % 5 == 4)


def test_single_node_network_bootstraps_and_commits_on_its_own() -> None:
    c = Cluster(["a"])
    a = c.elect("a")
    assert a.role is Role.PRIMARY and a.commit_index == 1
    _, seqno = c.propose("a", b"x", signature=True)
    assert a.commit_index == seqno == 2


def test_single_node_becomes_primary_on_its_first_election_timeout() -> None:
    c = Cluster(["a"])
    c.run_for(300)
    assert c.nodes["a"].role is Role.PRIMARY


def test_joining_node_catches_up_as_learner_before_it_counts() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    _grow(c, "a", 20)
    c.add("d", StartState(configuration=frozenset()))
    for r in c.nodes.values():
        r.add_learner("d")
    assert not a.is_caught_up("d")
    with pytest.raises(ConfigurationError) as info:
        a.propose(b"add d", signature=True, configuration=a.configuration | {"d"})
    assert info.value.code == "NotCaughtUp"
    c.run_for(60)
    assert c.nodes["d"].last_index == a.last_index
    assert a.is_caught_up("d")
    assert c.nodes["d"].role is Role.BACKUP and "d" not in a.configuration
    c.propose("a", b"add d", signature=True)  # nothing counts d yet
    a.propose(b"add d", signature=True, configuration=a.configuration | {"d"})
    assert "d" in a.configuration  # in force as soon as appended, before commit
    c.process("a")
    c.deliver()
    assert a.commit_index == a.last_index
    assert c.nodes["d"].configuration == frozenset("abcd")


def test_configuration_changes_one_node_at_a_time() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    with pytest.raises(ConfigurationError):
        a.propose(b"x", signature=True, configuration=frozenset({"a"}))
    with pytest.raises(ConfigurationError):
        a.propose(b"x", signature=True, configuration=frozenset())


def test_a_second_configuration_change_waits_for_the_first_to_commit() -> None:
    c = Cluster(["a", "b", "c", "d"])
    a = c.elect("a")
    a.propose(b"rm d", signature=True, configuration=frozenset(ABC))
    with pytest.raises(ConfigurationError) as info:
        a.propose(b"rm c", signature=True, configuration=frozenset({"a", "b"}))
    assert info.value.code == "ConfigurationChangeInProgress"
    c.process("a")
    c.deliver()
    a.propose(b"rm c", signature=True, configuration=frozenset({"a", "b"}))


def test_removed_backup_retires_once_its_removal_commits() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    a.propose(b"rm c", signature=True, configuration=frozenset({"a", "b"}))
    c.process("a")
    c.deliver()
    c.run_for(40)
    assert c.nodes["c"].role is Role.RETIRED
    _grow(c, "a", 5)
    assert a.commit_index == a.last_index  # a and b are the majority now


def test_removed_backup_is_told_its_removal_committed_even_if_it_missed_the_signature() -> None:
    """It acknowledged its removal entry, then was cut off while the signature after it
    committed: the primary must keep replicating to it until it says it committed its
    removal, so it retires once it is reachable again (a last heartbeat is not enough)."""
    c = Cluster(ABC)
    a = c.elect("a")
    a.propose(b"rm c", signature=False, configuration=frozenset({"a", "b"}))
    c.process("a")
    c.deliver()
    removal = a.last_index
    c.isolate("c")
    c.propose("a", b"sig", signature=True)
    assert a.commit_index > removal  # committed by a and b, the new majority
    assert c.nodes["c"].role is Role.BACKUP
    c.heal()
    c.run_for(200)
    assert c.nodes["c"].role is Role.RETIRED
    assert "c" not in a.details().acks, a.details()


def test_primary_stops_replicating_to_a_removed_peer_that_stays_silent() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    c.isolate("c")
    a.propose(b"rm c", signature=True, configuration=frozenset({"a", "b"}))
    c.process("a")
    c.deliver()
    assert "c" in a.details().acks
    c.run_for(11 * FAST.election_timeout_max_ms)
    assert "c" not in a.details().acks, a.details()
    assert a.role is Role.PRIMARY


def test_retiring_primary_hands_over_once_its_removal_commits() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    _grow(c, "a", 5)
    a.propose(b"rm a", signature=True, configuration=frozenset({"b", "c"}))
    c.process("a")
    c.deliver()
    c.run_for(40)
    assert a.role is Role.RETIRED
    new = c.primary()
    assert new in ("b", "c")
    assert c.nodes[new].view == a.view + 1  # TimeoutNow: no election timeout was needed
    c.propose(new, b"after", signature=True)
    assert c.nodes[new].commit_index == c.nodes[new].last_index
    # A retired node no longer campaigns or answers: its view stays where it retired.
    retired_view = a.view
    c.run_for(1000)
    assert a.role is Role.RETIRED and a.view == retired_view
    assert not a.has_ready()


def test_retiring_primary_loses_no_entry_it_accepted_after_proposing_its_removal() -> None:
    # Writes a primary accepted (and answered) after its removal was proposed and before it
    # committed must reach a voter before the primary retires: handing over at once to a
    # successor without them would roll back answered writes.
    # Small batches and one message in flight: the tail takes several round trips to send.
    narrow = dataclasses.replace(FAST, max_batch_entries=2, max_inflight_messages=1)
    c = Cluster(ABC, config=narrow)
    a = c.elect("a")
    _grow(c, "a", 5)
    a.propose(b"rm a", signature=True, configuration=frozenset({"b", "c"}))
    c.process("a")
    late = [a.propose(f"late{k}".encode(), signature=False)[1] for k in range(6)]
    c.deliver(limit=6)  # the removal commits while the late writes are unsent
    assert a.handing_over and a.role is Role.PRIMARY
    with pytest.raises(NotPrimaryError):
        a.propose(b"refused while handing over", signature=False)
    c.deliver()
    c.run_for(100)
    assert a.role is Role.RETIRED
    new = c.primary()
    assert new in ("b", "c")
    c.propose(new, b"after", signature=True)
    successor_log = {seqno: data for seqno, _, data in c.log_of(new)}
    assert all(seqno in successor_log for seqno in late)
    assert [successor_log[s] for s in late] == [f"late{k}".encode() for k in range(6)]
    assert c.nodes[new].commit_index >= max(late)


def test_retiring_primary_hands_over_after_a_timeout_when_no_voter_catches_up() -> None:
    narrow = dataclasses.replace(FAST, max_batch_entries=2, max_inflight_messages=1)
    c = Cluster(ABC, config=narrow)
    a = c.elect("a")
    _grow(c, "a", 5)
    a.propose(b"rm a", signature=True, configuration=frozenset({"b", "c"}))
    c.process("a")
    for k in range(6):
        a.propose(f"never sent {k}".encode(), signature=False)
    c.deliver(limit=6)
    assert a.handing_over
    c.isolate("a")  # nothing more reaches b or c
    c.run_for(FAST.election_timeout_min_ms + 50)
    assert a.role is Role.RETIRED and not a.handing_over


def test_node_started_from_a_snapshot_replicates_from_the_snapshot_point() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    _grow(c, "a", 10)
    snap = a.commit_index
    view = a.term_at(snap)
    assert view is not None
    start = StartState(
        configuration=a.configuration, last_index=snap, last_term=view, commit_index=snap
    )
    c.add("d", start)
    for r in c.nodes.values():
        r.add_learner("d")
    _grow(c, "a", 3)
    c.run_for(60)
    d = c.nodes["d"]
    assert d.last_index == a.last_index
    assert [e.index for e in c.disks["d"].entries] == list(range(snap + 1, a.last_index + 1))


def test_restart_resumes_from_durable_log_and_hard_state() -> None:
    c = Cluster(ABC)
    c.elect("a")
    _grow(c, "a", 6)
    c.crash("b")
    b = c.restart("b")
    assert b.last_index == c.nodes["a"].last_index
    assert b.view == c.nodes["a"].view
    assert b.role is Role.BACKUP
    c.run_for(60)
    assert b.leader_id == "a" and b.commit_index == c.nodes["a"].commit_index


def test_restore_refuses_entries_that_do_not_follow_on() -> None:
    start = StartState(configuration=frozenset(ABC))
    with pytest.raises(ConsensusError):
        Raft.restore("a", start=start, entries=[LogEntry(2, 1, b"gap")])


def test_truncation_is_reported_before_the_entries_that_replace_it() -> None:
    c = Cluster(ABC)
    c.elect("a")
    c.isolate("a")
    c.nodes["a"].propose(b"doomed", signature=True)
    c.process("a")
    c.run_for(400)
    new = c.primary()
    assert new is not None and new != "a"
    c.propose(new, b"winner", signature=True)
    c.heal()
    a = c.nodes["a"]
    outputs = []
    for _ in range(40):
        c.tick_all(10)
        while c.queue:
            src, to, msg = c.queue.popleft()
            if to in c.cut or src in c.cut:
                continue
            c.nodes[to].step(msg)
            if to == "a":
                r = a.ready()
                if r.truncate_to is not None or r.entries:
                    outputs.append((r.truncate_to, [e.index for e in r.entries]))
                c.disks["a"].entries[
                    (r.truncate_to if r.truncate_to is not None else len(c.disks["a"].entries)) :
                ] = []
                c.disks["a"].entries.extend(r.entries)
                for dst, m in r.messages:
                    c.queue.append(("a", dst, m))
                if r.entries:
                    a.durable(r.entries[-1].index, r.entries[-1].term)
            else:
                c.process(to)
    assert outputs and outputs[0][0] == 1  # the doomed entry 2 goes, entry 1 stays
    assert outputs[0][1][0] == 2
    assert c.log_of("a") == c.log_of(new)


def test_compacted_entries_are_requested_from_the_runtime_for_a_lagging_peer() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    c.isolate("c")
    _grow(c, "a", 20)
    a.compact(a.commit_index)
    assert a.log.first_index == a.commit_index + 1
    c.heal()
    c.run_for(100)
    assert c.served_requests and c.served_requests[0].peer == "c"
    assert c.served_requests[0].from_index <= c.nodes["c"].commit_index + 1
    assert c.nodes["c"].last_index == a.last_index
    assert c.log_of("c") == c.log_of("a")


def test_durability_report_for_a_replaced_entry_is_ignored() -> None:
    # b wrote entry 1 of view 1; a new primary replaced it with view 2's entry 1 before the
    # host's flush of the old write completed: that late report must not count.
    b = Raft("b", start=StartState(configuration=frozenset(ABC)))
    b.step(AppendEntries(1, "a", 0, 0, (LogEntry(1, 1, b"old"),), 0))
    b.step(AppendEntries(2, "c", 0, 0, (LogEntry(1, 2, b"new"),), 0))
    r = b.ready()
    assert r.truncate_to == 0 and [e.data for e in r.entries] == [b"new"]
    b.durable(1, view=1)
    assert b.durable_index == 0
    b.durable(1, view=2)
    assert b.durable_index == 1
    (to, ack), *_ = b.ready().messages
    assert to == "c" and isinstance(ack, AppendEntriesResponse) and ack.durable_index == 1


def test_learner_removed_before_it_counts_is_told_until_it_commits_its_removal() -> None:
    """Governance removed a joining node while it still caught up as a learner: no
    configuration change will ever retire it, so the primary keeps replicating to it until
    it says it committed the removing entry, and then lets it go; the runtime retires it."""
    c = Cluster(ABC)
    a = c.elect("a")
    _grow(c, "a", 10)
    c.add("d", StartState(configuration=frozenset()))
    for r in c.nodes.values():
        r.add_learner("d")
    c.run_for(60)
    c.isolate("d")
    _, removal = c.propose("a", b"d removed", signature=False)
    a.remove_learner("d", removed_at=removal)
    c.propose("a", b"sig", signature=True)
    assert a.commit_index > removal
    assert "d" in a.details().acks  # still owed the news
    c.heal()
    c.run_for(200)
    d = c.nodes["d"]
    assert d.commit_index >= removal
    assert "d" not in a.details().acks, a.details()
    d.retire()
    assert d.role is Role.RETIRED
    c.run_for(200)
    assert d.role is Role.RETIRED and a.role is Role.PRIMARY
    with pytest.raises(ConsensusError):
        a.retire()  # a voter retires only by configuration


def test_learner_promoted_to_voter_is_not_treated_as_removed() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    c.add("d", StartState(configuration=frozenset()))
    for r in c.nodes.values():
        r.add_learner("d")
    c.run_for(60)
    a.propose(b"add d", signature=True, configuration=a.configuration | {"d"})
    a.remove_learner("d", removed_at=a.last_index)
    c.process("a")
    c.deliver()
    c.run_for(200)
    assert c.nodes["d"].role is Role.BACKUP and "d" in a.details().acks


def test_a_peer_whose_log_ends_below_the_primarys_start_gets_the_anchor_entry_too() -> None:
    """A primary restarted from a snapshot at 10 does not know the term of entry 5; a peer
    whose log ends at 5 needs entries from 6 on, anchored on 5. The runtime must read 5
    back too: anchored on 6 itself, the peer (its log ending at 5) rejects every batch
    (seed 568 of the node simulator spun like this)."""
    cfg = RaftConfig(pre_vote=False)
    a = Raft.restore(
        "a",
        config=cfg,
        start=StartState(
            configuration=frozenset({"a", "b"}), last_index=10, last_term=1, commit_index=10
        ),
        entries=[LogEntry(11, 1, b"x", signature=True)],
    )
    assert a.log.term_at(5) is None
    a.campaign()
    a.step(RequestVoteResponse(a.term, "b", True))
    assert a.role is Role.PRIMARY
    a.ready()
    a.step(AppendEntriesResponse(a.term, "b", False, 0, 0, 11, 6, 0, 5))
    (request,) = a.ready().entry_requests
    assert request.peer == "b" and request.from_index == 5
    stored = [LogEntry(i, 1, f"e{i}".encode()) for i in range(5, 11)]
    a.provide_entries("b", stored[: request.to_index - 4])
    (to, message), *_ = a.ready().messages
    assert to == "b" and isinstance(message, AppendEntries)
    assert (message.prev_index, message.prev_term) == (5, 1)
    assert message.entries[0].index == 6


def _primary_started_from_a_snapshot_at_50() -> Raft:
    """A primary of {a, b} restarted from a snapshot at 50 (view 2) with entries 51..55: it
    holds nothing of view 1 in memory."""
    a = Raft.restore(
        "a",
        config=RaftConfig(pre_vote=False),
        start=StartState(
            configuration=frozenset({"a", "b"}), last_index=50, last_term=2, commit_index=50
        ),
        entries=[LogEntry(i, 2, f"e{i}".encode(), signature=True) for i in range(51, 56)],
    )
    a.campaign()
    a.step(RequestVoteResponse(a.term, "b", True))
    assert a.role is Role.PRIMARY
    a.ready()
    return a


def test_a_primary_probes_a_rejecting_peer_no_lower_than_the_peers_commit_index() -> None:
    """Seed 104 of the node simulator: a primary restarted from a snapshot at 50 (view 2)
    holds no term-1 entries in memory, and its ledger starts at 22. A voter whose whole log
    is of view 1 rejects its probe with the hint (view 1, from index 1); the primary took
    the hint's index, asked its host for entries from 0, which no ledger here holds, and
    waited forever. The voter's committed prefix (up to 42) is in every primary's log, so
    the probe goes back no further than 43."""
    a = _primary_started_from_a_snapshot_at_50()
    a.step(AppendEntriesResponse(a.term, "b", False, 0, 0, 55, 1, 1, 42))
    (request,) = a.ready().entry_requests
    assert (request.peer, request.from_index) == ("b", 42)  # 43, anchored on 42
    stored = {i: LogEntry(i, 1 if i <= 45 else 2, f"e{i}".encode()) for i in range(22, 51)}
    a.provide_entries("b", [stored[i] for i in range(request.from_index, request.to_index + 1)])
    (to, message), *_ = a.ready().messages
    assert to == "b" and isinstance(message, AppendEntries)
    assert (message.prev_index, message.prev_term) == (42, 1)
    assert message.entries[0].index == 43


def test_a_peer_whose_commit_precedes_every_ledger_of_the_primary_is_reported_needing_a_snapshot() -> (
    None
):
    """The same primary (started from a snapshot at 50, its ledger from 22), and a peer that
    committed only up to 10: the entries it needs are in no ledger here. The primary waits,
    says so once in its log, and reports the peer in `details()` (`needs_snapshot`), so that
    an operator sees that node must be replaced."""
    a = _primary_started_from_a_snapshot_at_50()
    assert not a.details().acks["b"].needs_snapshot
    a.step(AppendEntriesResponse(a.term, "b", False, 0, 0, 55, 1, 1, 10))
    (request,) = a.ready().entry_requests
    assert request.from_index == 10
    a.provide_entries("b", [])  # the host's ledger begins at 22
    assert a.details().acks["b"].needs_snapshot
    a.tick(RaftConfig().heartbeat_interval_ms)
    assert not a.ready().messages and not a.ready().entry_requests  # b waits
    # Now and then b is asked again, from the start point: rebuilt from a snapshot at 50
    # meanwhile, it holds it, and is served from there.
    a.tick(BEHIND_START_RETRY_MS)
    (probe,) = [m for to, m in a.ready().messages if to == "b" and isinstance(m, AppendEntries)]
    assert (probe.prev_index, probe.prev_term) == (50, 2)
    a.step(AppendEntriesResponse(a.term, "b", True, 50, 50, commit_index=50))
    assert not a.details().acks["b"].needs_snapshot
    sent = [m for to, m in a.ready().messages if to == "b" and isinstance(m, AppendEntries)]
    assert sent and sent[0].entries[0].index == 51


def _primary_with_entries_compacted_below(compacted: int) -> Raft:
    """A primary of {a, b} holding entries 1..20 (all committed), those up to `compacted`
    forgotten from memory: a lagging b must be sent them read back from the ledger."""
    a = Raft.restore(
        "a",
        config=RaftConfig(pre_vote=False),
        start=StartState(configuration=frozenset({"a", "b"}), commit_index=20),
        entries=[LogEntry(i, 1, f"e{i}".encode(), signature=True) for i in range(1, 21)],
    )
    a.campaign()
    a.step(RequestVoteResponse(a.term, "b", True))
    assert a.role is Role.PRIMARY
    a.ready()
    a.compact(compacted)
    assert a.log.first_index == compacted + 1
    return a


def test_a_failed_read_of_entries_for_a_lagging_peer_is_tried_again_at_the_next_heartbeat() -> None:
    """The runtime's read of compacted entries came back empty (the ledger read failed): the
    peer was left waiting for entries and sent nothing again, ever. It is read again at the
    next heartbeat, and served once the read succeeds."""
    a = _primary_with_entries_compacted_below(15)
    a.step(AppendEntriesResponse(a.term, "b", False, 0, 0, 20, 6, 0, 5))
    (request,) = a.ready().entry_requests
    a.provide_entries("b", [])
    a.tick(RaftConfig().heartbeat_interval_ms)
    (again,) = a.ready().entry_requests
    assert (again.peer, again.from_index) == (request.peer, request.from_index)
    stored = [LogEntry(i, 1, f"e{i}".encode(), signature=True) for i in range(1, 16)]
    a.provide_entries("b", stored[again.from_index - 1 : again.to_index])
    sent = [m for to, m in a.ready().messages if to == "b" and isinstance(m, AppendEntries)]
    assert sent and sent[0].entries[0].index == 6


def _d_retired_then_a_new_primary() -> tuple[Cluster, Raft, int, list[str]]:
    """{a, b, c, d} with d removed and retired, then a crashed and another node primary:
    (cluster, new primary, d's commit index at its removal, the peers the new primary
    releases from now on, `Ready.released`)."""
    c = Cluster(["a", "b", "c", "d"])
    a = c.elect("a")
    a.propose(b"rm d", signature=True, configuration=frozenset(ABC))
    c.process("a")
    c.deliver()
    c.run_for(60)
    assert c.nodes["d"].role is Role.RETIRED
    removal = c.nodes["d"].commit_index
    c.crash("a")
    c.run_for(3000)
    new = c.primary()
    assert new in ("b", "c")
    b = c.nodes[new]
    released: list[str] = []
    ready = b.ready

    def recording_ready() -> Ready:
        r = ready()
        released.extend(r.released)
        return r

    b.ready = recording_ready  # type: ignore[method-assign]
    return c, b, removal, released


def test_a_primary_tracking_a_removed_node_lets_it_go_once_it_says_it_committed_its_removal() -> (
    None
):
    """A primary elected after a removal tracks the removed node (the runtime asks it to):
    a node that had already retired answers with its commit index, which is enough, and is
    released (`Ready.released`) so the runtime can record that it was told."""
    c, b, removal, released = _d_retired_then_a_new_primary()
    b.track_removed("d", removal)
    assert "d" in b.details().acks
    c.run_for(200)  # far below the silence after which a removed node is dropped unheard
    assert released == ["d"] and "d" not in b.details().acks
    acks_before = dict(b.details().acks)
    b.track_removed("a", removal)  # a voter is never tracked as removed
    assert b.details().acks.keys() == acks_before.keys()


def test_a_primary_tracking_a_retired_node_from_past_its_removal_lets_it_go_when_it_answers() -> (
    None
):
    """The runtime tracks a removed node from the primary's store version when it tracks it
    (the removal's own index is not at hand), which can be past the removal: a node that
    retired there stopped its commit index at the removal and could never reach it, so it
    was told forever and never recorded as told (seen in seed 17 of the node simulator).
    Its answer says it retired: that is enough."""
    c, b, removal, released = _d_retired_then_a_new_primary()
    c.propose(b.id, b"later", signature=True)
    c.run_for(60)
    assert b.commit_index > removal
    b.track_removed("d", b.last_index)  # past what d committed
    # A live node's rejection of a stale view has no hint either, but no commit index: it
    # says nothing of a retirement.
    b.step(AppendEntriesResponse(b.term, "d", False, 0, 0))
    b.ready()
    assert released == [] and "d" in b.details().acks
    c.run_for(200)  # far below the silence after which a removed node is dropped unheard
    assert released == ["d"] and "d" not in b.details().acks
    assert c.nodes["d"].commit_index == removal  # it learnt nothing past its removal


def test_retire_waits_for_the_configuration_without_the_node_to_commit() -> None:
    """Seed 1589: a primary whose own removal was appended but not yet replicated was
    retired by the runtime's learner rule (its Retired status had committed), dropping
    the configuration change with it; the others then needed its vote forever. `retire`
    does nothing until a configuration without the node has committed."""
    c = Cluster(ABC)
    a = c.elect("a")
    a.propose(b"rm a", signature=True, configuration=frozenset({"b", "c"}))
    a.retire()
    assert a.role is Role.PRIMARY
    c.process("a")
    c.deliver()
    c.run_for(100)
    assert a.role is Role.RETIRED
    c.run_for(3000)
    new = c.primary()
    assert new in ("b", "c")
    c.propose(new, b"after", signature=True)
    assert c.nodes[new].commit_index == c.nodes[new].last_index


def test_a_node_left_out_of_an_uncommitted_configuration_still_campaigns() -> None:
    """Seed 140: of two voters, the primary appended the configuration without itself,
    then restarted before the other had it. The other needs both votes and its log is
    behind, so only the removed node can win; it must campaign (counting the new
    configuration's votes), commit the change and then retire."""
    c = Cluster(["a", "b"])
    a = c.elect("a")
    _grow(c, "a", 5)
    c.isolate("b")
    a.propose(b"rm a", signature=True, configuration=frozenset({"b"}))
    c.process("a")
    c.make_durable("a")
    c.crash("a")
    a = c.restart("a")
    assert "a" not in a.configuration and a.commit_index < a.last_index
    c.heal()
    for _ in range(100):
        c.run_for(100)
        if a.role is Role.PRIMARY:
            break
    assert a.role is Role.PRIMARY  # with b's vote: the new configuration's majority
    c.propose("a", b"sig", signature=True)  # as the runtime does on becoming primary
    c.run_for(5_000)
    b = c.nodes["b"]
    assert a.role is Role.RETIRED
    assert b.role is Role.PRIMARY and b.configuration == frozenset({"b"})
    c.propose("b", b"after", signature=True)
    assert b.commit_index == b.last_index
