"""Tests named after the promises of the Raft paper (Figure 3) and CCF's additions to them."""

from __future__ import annotations

import dataclasses

import pytest
from consensus_cluster import FAST, Cluster

from charter.consensus import (
    AppendEntries,
    AppendEntriesResponse,
    LogEntry,
    NotPrimaryError,
    PreVote,
    Raft,
    RequestVote,
    RequestVoteResponse,
    Role,
    StartState,
)

ABC = ["a", "b", "c"]
NO_PRE_VOTE = dataclasses.replace(FAST, pre_vote=False)


def _entries(raft: Raft) -> list[tuple[int, int]]:
    return [(i, raft.term_at(i) or 0) for i in range(1, raft.last_index + 1)]


# -- Election Safety: at most one leader can be elected in a given term ---------------------------
def test_election_safety_two_candidates_in_one_view_elect_at_most_one_primary() -> None:
    c = Cluster(ABC, config=NO_PRE_VOTE)
    c.nodes["a"].campaign()
    c.nodes["b"].campaign()
    c.process("a")
    c.process("b")
    c.deliver()
    assert c.nodes["a"].view == c.nodes["b"].view == 1
    primaries = [n for n, r in c.nodes.items() if r.role is Role.PRIMARY]
    assert len(primaries) <= 1


def test_election_safety_a_node_grants_one_vote_per_view() -> None:
    voter = Raft("c", config=NO_PRE_VOTE, start=StartState(configuration=frozenset(ABC)))
    voter.step(RequestVote(1, "a", 0, 0))
    voter.step(RequestVote(1, "b", 0, 0))
    answers = [m for _, m in voter.ready().messages if isinstance(m, RequestVoteResponse)]
    assert [m.granted for m in answers] == [True, False]


def test_election_safety_a_vote_survives_a_restart() -> None:
    c = Cluster(ABC, config=NO_PRE_VOTE)
    c.nodes["c"].step(RequestVote(1, "a", 0, 0))
    c.process("c")
    c.drop_messages()
    c.crash("c")
    voter = c.restart("c")
    voter.step(RequestVote(1, "b", 0, 0))
    answers = [m for _, m in voter.ready().messages if isinstance(m, RequestVoteResponse)]
    assert answers and not answers[0].granted
    assert voter.voted_for == "a"


def test_election_restriction_a_candidate_missing_committed_entries_is_refused() -> None:
    c = Cluster(ABC, config=NO_PRE_VOTE)
    c.elect("a")
    c.isolate("c")
    c.propose("a", b"x", signature=True)
    c.heal()
    c.isolate("a")
    c.nodes["c"].campaign()
    c.process("c")
    c.deliver()
    assert c.nodes["c"].role is not Role.PRIMARY
    assert c.nodes["b"].voted_for != "c"


# -- Leader Append-Only: a leader never overwrites or deletes entries in its log ------------------
def test_leader_append_only_primary_log_only_grows_while_it_leads() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    seen = _entries(a)
    for k in range(5):
        c.propose("a", f"e{k}".encode(), signature=k % 2 == 1)
        now = _entries(a)
        assert now[: len(seen)] == seen
        seen = now
    # A stale message from an older view cannot make the primary rewrite its log.
    a.step(AppendEntries(0, "b", 0, 0, (LogEntry(1, 0, b"old"),), 0))
    assert a.role is Role.PRIMARY and _entries(a) == seen


def test_leader_append_only_a_deposed_primary_truncates_only_as_backup() -> None:
    c = Cluster(ABC)
    c.elect("a")
    c.isolate("a")
    c.propose("a", b"lost-1")
    c.propose("a", b"lost-2", signature=True)
    assert c.nodes["a"].last_index == 3
    c.run_for(400)  # b or c takes over in a later view; a steps down by check-quorum
    new = c.primary()
    assert new in ("b", "c")
    c.propose(new, b"new", signature=True)
    c.heal()
    c.run_for(200)
    a = c.nodes["a"]
    assert a.role is Role.BACKUP
    assert c.log_of("a") == c.log_of(new)
    assert all(data not in (b"lost-1", b"lost-2") for _, _, data in c.log_of("a"))


# -- Log Matching: same index and term means identical logs up to there --------------------------
def test_log_matching_follower_rejects_append_whose_previous_entry_differs() -> None:
    f = Raft("b", start=StartState(configuration=frozenset(ABC)))
    f.step(AppendEntries(1, "a", 0, 0, (LogEntry(1, 1, b"x"),), 0))
    f.ready()
    f.step(AppendEntries(2, "c", 1, 2, (LogEntry(2, 2, b"y"),), 0))
    (_, resp), *_ = f.ready().messages
    assert isinstance(resp, AppendEntriesResponse)
    assert not resp.success and resp.reject_index == 1
    assert f.last_index == 1


def test_log_matching_holds_after_divergent_primaries_reconcile() -> None:
    c = Cluster(["a", "b", "c", "d", "e"])
    c.elect("a")
    for round_ in range(3):
        old = c.primary()
        assert old is not None
        c.isolate(old)
        c.propose(old, f"orphan{round_}".encode(), signature=True)
        c.run_for(500)
        c.heal()
        c.run_for(200)
        p = c.primary()
        assert p is not None
        c.propose(p, f"kept{round_}".encode(), signature=True)
    logs = {n: {(i, t): d for i, t, d in c.log_of(n)} for n in c.nodes}
    for n1 in c.nodes:
        for n2 in c.nodes:
            common = logs[n1].keys() & logs[n2].keys()
            top = max((i for i, _ in common), default=0)
            prefix1 = [k for k in logs[n1] if k[0] <= top]
            prefix2 = [k for k in logs[n2] if k[0] <= top]
            assert prefix1 == prefix2
            assert all(logs[n1][k] == logs[n2][k] for k in common)


# -- Leader Completeness: a committed entry is in the log of every later leader -------------------
def test_leader_completeness_committed_entry_is_in_every_later_primary_log() -> None:
    c = Cluster(ABC)
    c.elect("a")
    _, seqno = c.propose("a", b"committed", signature=True)
    assert c.nodes["a"].commit_index == seqno
    c.crash("a")
    c.run_for(500)
    p = c.primary()
    assert p in ("b", "c")
    assert c.nodes[p].entry(seqno).data == b"committed"


def test_committed_entry_survives_primary_crash_and_restart() -> None:
    c = Cluster(ABC)
    c.elect("a")
    c.propose("a", b"keep", signature=True)
    c.crash("a")
    c.run_for(500)
    c.restart("a")
    c.run_for(200)
    for n in ABC:
        assert (2, 1, b"keep") in c.log_of(n)


# -- State Machine Safety: no two nodes apply different entries at one index ---------------------
def test_state_machine_safety_all_nodes_commit_the_same_entries() -> None:
    c = Cluster(["a", "b", "c", "d", "e"])
    c.elect("a")
    for k in range(4):
        c.propose(c.primary() or "a", f"v{k}".encode(), signature=True)
        old = c.primary()
        assert old is not None
        c.crash(old)
        c.run_for(500)
        c.restart(old)
        c.run_for(100)
    p = c.primary()
    assert p is not None
    c.propose(p, b"final", signature=True)  # commits the earlier views' entries too
    c.run_for(100)
    committed = {n: c.disks[n].commit for n in c.nodes}
    low = min(committed.values())
    assert low >= 6
    prefixes = {tuple(c.log_of(n)[:low]) for n in c.nodes}
    assert len(prefixes) == 1


def test_commit_index_never_moves_back_on_any_node() -> None:
    c = Cluster(ABC)
    c.elect("a")
    for k in range(3):
        c.propose("a", f"{k}".encode(), signature=True)
    c.crash("a")
    c.run_for(500)
    c.restart("a")
    c.run_for(200)
    for disk in c.disks.values():
        assert disk.commits == sorted(disk.commits)


# -- CCF's rules on top of Raft -------------------------------------------------------------------
def test_commit_advances_only_at_signature_entries() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    base = a.commit_index
    c.propose("a", b"t1")
    c.propose("a", b"t2")
    assert a.commit_index == base
    _, sig = c.propose("a", b"sig", signature=True)
    assert a.commit_index == sig
    c.run_for(40)
    assert all(r.commit_index == sig for r in c.nodes.values())


def test_commit_counts_only_entries_hosts_made_durable() -> None:
    c = Cluster(ABC, auto_durable=False)
    c.nodes["a"].campaign()
    c.process("a")
    c.deliver()
    a = c.nodes["a"]
    a.propose(b"sig", signature=True)
    c.process("a")
    c.deliver()
    assert a.commit_index == 0  # replicated everywhere, durable nowhere
    c.make_durable("b")
    c.deliver()
    assert a.commit_index == 0  # b alone is not a majority: the primary counts only if durable
    c.make_durable("a")
    c.deliver()
    assert a.commit_index == 1


def test_primary_steps_down_by_check_quorum_when_cut_off() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    c.isolate("a")
    c.run_for(250)
    assert a.role is not Role.PRIMARY


def test_pre_vote_keeps_a_partitioned_node_from_raising_the_view() -> None:
    c = Cluster(ABC)
    c.elect("a")
    c.isolate("c")
    c.run_for(1000)
    assert c.nodes["c"].view == 1  # it pre-voted in vain, never raised its view
    c.heal()
    c.run_for(200)
    assert c.nodes["a"].role is Role.PRIMARY and c.nodes["a"].view == 1


def test_backups_ignore_vote_requests_while_they_hear_from_a_primary() -> None:
    c = Cluster(ABC)
    c.elect("a")
    b = c.nodes["b"]
    b.step(PreVote(2, "c", 99, 1))
    b.step(RequestVote(2, "c", 99, 1))
    assert b.view == 1 and not b.ready().messages


def test_proposing_on_a_backup_raises_not_primary() -> None:
    c = Cluster(ABC)
    c.elect("a")
    with pytest.raises(NotPrimaryError) as info:
        c.nodes["b"].propose(b"x", signature=False)
    assert info.value.code == "NotPrimary"


def test_fast_back_off_skips_a_whole_view_of_conflicting_entries() -> None:
    c = Cluster(ABC)
    c.elect("a")
    c.isolate("a")
    for k in range(50):
        c.nodes["a"].propose(f"stale{k}".encode(), signature=False)
    c.process("a")
    c.run_for(400)
    new = c.primary()
    assert new is not None and new != "a"
    c.propose(new, b"new", signature=True)
    c.heal()
    rejections = 0
    for _ in range(30):
        c.tick_all(10)
        while c.queue:
            src, _to, msg = c.queue[0]
            if isinstance(msg, AppendEntriesResponse) and src == "a" and not msg.success:
                rejections += 1
            c.deliver(1)
    assert c.log_of("a") == c.log_of(new)
    assert rejections <= 3  # one skip over the whole stale view, not fifty single steps


def test_pipelining_is_bounded_by_bytes_in_flight_per_peer() -> None:
    cfg = dataclasses.replace(FAST, max_batch_bytes=100, max_inflight_bytes=300)
    c = Cluster(ABC, config=cfg)
    a = c.elect("a")
    c.run_for(40)
    for k in range(100):
        a.propose(bytes(50) + k.to_bytes(2, "big"), signature=False)
    r = a.ready()
    sent = [m for to, m in r.messages if to == "b" and isinstance(m, AppendEntries)]
    in_flight = sum(len(e.data) for m in sent for e in m.entries)
    assert sent and in_flight <= 300 + 100
    assert all(sum(len(e.data) for e in m.entries) <= 100 + 52 for m in sent)


def _figure8_cluster() -> Cluster:
    """The Raft paper's Figure 8 on three nodes, everyone in view 3 with entry 1 committed:
    a holds (2, view 2) that only it has; c holds (2, view 3) that only it has."""
    logs = {"a": [(1, 1), (2, 2)], "b": [(1, 1)], "c": [(1, 1), (2, 3)]}
    # No leases, so that votes depend on the logs alone.
    cfg = dataclasses.replace(FAST, pre_vote=False, check_quorum=False)
    c = Cluster(ABC, config=cfg)
    for node, log in logs.items():
        entries = [LogEntry(i, t, f"{node}{i}".encode(), True) for i, t in log]
        start = StartState(configuration=frozenset(ABC), commit_index=1, term=3)
        c.nodes[node] = Raft.restore(node, config=cfg, start=start, entries=entries)
        c.disks[node].entries = list(entries)
        c.disks[node].durable_count = len(entries)
        c.disks[node].term = 3
    return c


def test_an_old_view_entry_is_not_committed_by_counting_its_replicas() -> None:
    c = _figure8_cluster()
    c.isolate("c")
    c.campaign("a")  # view 4, with b's vote
    a = c.nodes["a"]
    assert a.role is Role.PRIMARY and a.view == 4
    c.run_for(40)
    assert c.log_of("b")[-1][:2] == (2, 2)  # on a majority, durable...
    assert a.commit_index == 1  # ...yet not committed: it is not an entry of view 4
    # Rightly so: c can still win view 5 (its last view, 3, beats b's 2) and replace it.
    c.heal()
    c.isolate("a")
    c.campaign("c")  # view 4: b already voted in it
    c.campaign("c")  # view 5
    assert c.nodes["c"].role is Role.PRIMARY
    c.propose("c", b"c-view5", signature=True)
    assert c.log_of("b")[1][:2] == (2, 3)


def test_an_old_view_entry_commits_with_the_first_signature_of_the_new_view() -> None:
    c = _figure8_cluster()
    c.isolate("c")
    c.campaign("a")
    _, seqno = c.propose("a", b"a-view4", signature=True)
    a = c.nodes["a"]
    assert a.commit_index == seqno == 3  # entry 2 (view 2) is committed along with it
    c.heal()
    c.isolate("a")
    c.campaign("c")
    c.campaign("c")
    assert c.nodes["c"].role is not Role.PRIMARY  # b's log now ends in view 4: c cannot win
    assert c.log_of("b")[1][:2] == (2, 2)


def test_batches_a_backup_receives_in_one_turn_get_one_answer_that_covers_them() -> None:
    # The runtime steps every frame that arrived in one event-loop turn before it asks for
    # Ready: three batches (and the durable report after them) cost the primary one answer.
    cfg = dataclasses.replace(FAST, max_batch_entries=2)
    c = Cluster(ABC, config=cfg, auto_durable=False)
    a = c.elect("a")
    c.make_durable("a")
    c.make_durable("b")
    c.make_durable("c")
    c.deliver()
    base = a.last_index
    for k in range(6):
        a.propose(k.to_bytes(2, "big"), signature=k == 5)
    batches = [m for to, m in a.ready().messages if to == "b" and isinstance(m, AppendEntries)]
    assert len(batches) == 3
    b = c.nodes["b"]
    for m in batches:
        b.step(m)
    b.durable(base + 6, a.term)
    answers = [m for to, m in b.ready().messages if to == "a"]
    assert len(answers) == 1
    (answer,) = answers
    assert isinstance(answer, AppendEntriesResponse) and answer.success
    assert (answer.last_index, answer.durable_index) == (base + 6, base + 6)
    a.durable(base + 6, a.term)
    a.step(answer)
    assert a.commit_index == base + 6  # the one answer counts b for the signature


def test_an_answer_that_says_less_does_not_replace_one_that_says_more() -> None:
    c = Cluster(ABC, config=FAST)
    a = c.elect("a")
    c.run_for(40)
    base = a.last_index
    a.propose(b"x", signature=False)
    (batch,) = [m for to, m in a.ready().messages if to == "b" and isinstance(m, AppendEntries)]
    b = c.nodes["b"]
    b.step(batch)
    # A stale copy of an older, empty batch (a resend that arrives late) verifies less.
    b.step(dataclasses.replace(batch, prev_index=base, entries=()))
    answers = [m for to, m in b.ready().messages if to == "a"]
    assert [m.last_index for m in answers if isinstance(m, AppendEntriesResponse)] == [
        base + 1,
        base,
    ]
