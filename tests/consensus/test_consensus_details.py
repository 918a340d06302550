"""`Raft.details()`: what a node reports of consensus (CCF's `/node/consensus` details),
under simulated time only: the core's clock is the sum of the ticks it was given."""

from __future__ import annotations

from consensus_cluster import Cluster

from charter.consensus import (
    AppendEntriesResponse,
    Raft,
    Role,
    StartState,
    decode_message,
    encode_message,
)

ABC = ["a", "b", "c"]


def test_the_core_clock_is_the_sum_of_the_ticks_it_was_given() -> None:
    raft = Raft("a", start=StartState(configuration=frozenset(ABC)))
    assert raft.now_ms == 0 and not raft.details().ticking
    raft.tick(7)
    raft.tick(0)
    raft.tick(35)
    assert raft.now_ms == 42
    assert raft.details().ticking


def test_primary_reports_each_peers_acknowledged_seqno_and_commit() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    for k in range(5):
        c.propose("a", f"tx{k}".encode(), signature=k == 4)
    c.run_for(40)  # heartbeats carry the new commit; the answers report it back
    d = a.details()
    assert d.node_id == "a" and d.primary_id == "a"
    assert d.leadership_state == "Leader" and d.membership_state == "Active"
    assert d.current_view == a.view
    assert set(d.acks) == {"b", "c"}
    for peer in ("b", "c"):
        assert d.acks[peer].seqno == a.last_index == c.nodes[peer].last_index
        assert d.acks[peer].commit_seqno == a.commit_index == c.nodes[peer].commit_index
    assert (d.commit_seqno, d.last_seqno, d.durable_seqno) == (a.commit_index,) + (
        a.last_index,
    ) * 2
    assert d.configuration == frozenset(ABC)


def test_an_ack_ages_with_ticks_and_resets_when_the_peer_answers() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    c.run_for(20, step_ms=10)  # everyone answered the last heartbeat
    assert all(ack.last_received_ms == 0 for ack in a.details().acks.values())
    c.isolate("c")
    for _ in range(6):  # 60 ms: three heartbeats, b answers each, c none
        c.tick("a", 10)
        c.deliver()
    acks = a.details().acks
    assert acks["b"].last_received_ms == 0
    assert acks["c"].last_received_ms == 60
    c.heal()
    c.tick("a", 20)  # the next heartbeat reaches c, whose answer resets its age
    c.deliver()
    assert a.details().acks["c"].last_received_ms == 0


def test_a_peer_that_never_answered_counts_from_when_the_primary_began_tracking_it() -> None:
    c = Cluster(ABC)
    c.isolate("c")
    c.run_for(30)
    a = c.elect("a")
    c.tick("a", 25)
    c.deliver()
    ack = a.details().acks["c"]
    assert ack.seqno == 0 and ack.commit_seqno == 0
    assert ack.last_received_ms == 25  # a became primary 25 ms ago on its clock


def test_backup_reports_its_own_seqnos_its_primary_and_when_it_last_heard_it() -> None:
    c = Cluster(ABC)
    c.elect("a")
    c.propose("a", b"x", signature=True)
    c.run_for(40)
    b = c.nodes["b"]
    d = b.details()
    assert d.primary_id == "a" and d.leadership_state == "Follower"
    assert d.acks == {}  # only a primary collects acknowledgements
    assert (d.commit_seqno, d.last_seqno) == (b.commit_index, b.last_index)
    assert d.primary_last_received_ms is not None and d.primary_last_received_ms < 20
    c.isolate("a")
    c.tick("b", 15)
    c.tick("b", 15)
    assert b.details().primary_last_received_ms == d.primary_last_received_ms + 30


def test_a_node_that_follows_no_primary_reports_no_contact_time() -> None:
    raft = Raft("b", start=StartState(configuration=frozenset(ABC)))
    raft.tick(10)
    d = raft.details()
    assert d.primary_id is None and d.primary_last_received_ms is None
    assert d.leadership_state == "Follower"


def test_a_learner_is_reported_as_such_and_acknowledged_by_the_primary() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    c.add("d", StartState(configuration=frozenset()))
    for r in c.nodes.values():
        r.add_learner("d")
    c.run_for(60)
    assert c.nodes["d"].details().membership_state == "Learner"
    assert "d" in a.details().learners
    assert a.details().acks["d"].seqno == a.last_index


def test_retired_node_reports_retired_and_no_leadership() -> None:
    c = Cluster(ABC)
    a = c.elect("a")
    a.propose(b"remove c", signature=True, configuration=frozenset({"a", "b"}))
    c.process("a")
    c.deliver()
    c.run_for(60)
    retired = c.nodes["c"]
    assert retired.role is Role.RETIRED
    d = retired.details()
    assert d.membership_state == "Retired" and d.leadership_state is None


def test_append_entries_response_carries_the_senders_commit_over_the_wire() -> None:
    msg = AppendEntriesResponse(3, "b", True, 10, 9, commit_index=8)
    assert decode_message(encode_message(msg)) == msg
