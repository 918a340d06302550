"""`RaftConfig.hold_until_signature`: the primary sends unsigned entries with the signature
that can commit them (or when a bound, a heartbeat or the runtime asks), never later than
any of these, and a commit still needs the same majority of durable copies."""

from __future__ import annotations

import dataclasses

from consensus_cluster import FAST, Cluster

from charter.consensus import AppendEntries, AppendEntriesResponse, Raft, RaftConfig, Role

ABC = ["a", "b", "c"]
HOLD = dataclasses.replace(FAST, hold_until_signature=True, heartbeat_interval_ms=50)


def _batches(raft: Raft, peer: str = "b") -> list[AppendEntries]:
    return [m for to, m in raft.ready().messages if to == peer and isinstance(m, AppendEntries)]


def _settled(config: RaftConfig = HOLD, voters: list[str] = ABC) -> tuple[Cluster, Raft]:
    """A primary whose first signature committed everywhere."""
    c = Cluster(voters, config=config)
    a = c.elect("a")
    c.deliver()
    c.process("a")
    c.deliver()
    return c, a


def test_unsigned_entries_wait_for_the_signature_and_travel_with_it_in_one_batch() -> None:
    _c, a = _settled()
    base = a.last_index
    for k in range(5):
        a.propose(b"w%d" % k, signature=False)
        assert _batches(a) == [], "an unsigned entry went out before its signature"
    a.propose(b"sig", signature=True)
    (batch,) = _batches(a)
    assert [e.index for e in batch.entries] == list(range(base + 1, base + 7))
    assert batch.entries[-1].signature


def test_held_entries_commit_at_their_signature_once_a_majority_made_them_durable() -> None:
    c, a = _settled()
    base = a.last_index
    for k in range(3):
        c.propose("a", b"w%d" % k)  # proposed, processed, every message delivered
    assert c.nodes["b"].last_index == base  # held: nothing reached the backups
    assert a.commit_index == base
    c.propose("a", b"sig", signature=True)
    c.deliver()
    c.process("a")
    assert a.commit_index == base + 4
    assert c.nodes["b"].last_index == c.nodes["c"].last_index == base + 4


def test_held_entries_go_out_at_the_next_heartbeat_without_a_signature() -> None:
    _c, a = _settled()
    base = a.last_index
    a.propose(b"w", signature=False)
    assert _batches(a) == []
    a.tick(HOLD.heartbeat_interval_ms)
    sent = [e.index for m in _batches(a) for e in m.entries]
    assert sent == [base + 1]


def test_held_entries_go_out_once_a_batch_of_them_waits() -> None:
    _c, a = _settled(dataclasses.replace(HOLD, max_batch_entries=4))
    base = a.last_index
    for k in range(3):
        a.propose(b"w%d" % k, signature=False)
    assert _batches(a) == []
    a.propose(b"w3", signature=False)
    (batch,) = _batches(a)
    assert [e.index for e in batch.entries] == list(range(base + 1, base + 5))


def test_held_entries_go_out_once_their_bytes_reach_the_batch_bound() -> None:
    _c, a = _settled(dataclasses.replace(HOLD, max_batch_bytes=100))
    a.propose(b"x" * 60, signature=False)
    assert _batches(a) == []
    a.propose(b"y" * 60, signature=False)
    assert sum(len(m.entries) for m in _batches(a)) == 2


def test_release_held_sends_what_waits_at_once() -> None:
    _c, a = _settled()
    base = a.last_index
    a.propose(b"w", signature=False)
    assert a.held_count == 1
    a.release_held()
    assert a.held_count == 0
    assert [e.index for m in _batches(a) for e in m.entries] == [base + 1]
    a.release_held()  # nothing more held: nothing more sent
    assert _batches(a) == []


def test_a_configuration_change_is_not_held() -> None:
    _c, a = _settled(voters=[*ABC, "d"])
    base = a.last_index
    a.propose(b"cfg", signature=False, configuration=frozenset(ABC))
    sent = [e.index for m in _batches(a) for e in m.entries]
    assert sent == [base + 1]


def test_a_new_primary_sends_what_it_inherited_at_once() -> None:
    c, a = _settled()
    base = a.last_index
    a.propose(b"w", signature=False)
    # Only b receives the held entry (released to b alone, by hand), then a goes away.
    a.release_held()
    for to, m in a.ready().messages:
        if to == "b":
            c.nodes["b"].step(m)
    c.process("b")
    c.queue.clear()
    c.down.add("a")
    c.nodes["c"].tick(HOLD.election_timeout_min_ms)  # c stops waiting for a: it may vote
    assert c.nodes["c"].role is Role.BACKUP
    c.campaign("b")  # no tick after it: no heartbeat releases anything
    b = c.nodes["b"]
    assert b.role is Role.PRIMARY
    assert c.nodes["c"].last_index == base + 1


def test_without_the_option_every_entry_goes_out_with_the_next_ready() -> None:
    _c, a = _settled(FAST)
    base = a.last_index
    a.propose(b"w", signature=False)
    assert [e.index for m in _batches(a) for e in m.entries] == [base + 1]


def test_a_primary_handing_over_sends_the_entries_it_held_without_waiting() -> None:
    # Entries accepted after the primary's removal was signed, held when the removal
    # committed: the successor must hold them before the primary retires, and they go out
    # as the hand-over starts, not a heartbeat later.
    config = dataclasses.replace(HOLD, heartbeat_interval_ms=90)
    c, a = _settled(config)
    a.propose(b"rm a", signature=True, configuration=frozenset({"b", "c"}))
    c.process("a")
    late = [a.propose(b"late%d" % k, signature=False)[1] for k in range(3)]
    c.process("a")
    assert all(c.nodes[p].last_index < late[0] for p in ("b", "c"))
    c.deliver()  # the removal commits; no tick, so no heartbeat
    c.process("a")
    c.deliver()
    assert a.handing_over or a.role is Role.RETIRED
    assert max(c.nodes[p].last_index for p in ("b", "c")) >= late[-1]


def test_backups_learn_a_commit_from_the_next_batch_while_entries_are_held() -> None:
    c, a = _settled()
    base = a.last_index
    a.propose(b"w", signature=False)
    a.propose(b"sig", signature=True)
    c.process("a")  # the batch is on its way to b and c
    a.propose(b"held", signature=False)  # proposed before their answers come back
    c.process("a")
    c.deliver()
    assert a.commit_index == base + 2
    # Not told by a message of its own: the batch that carries the held entry tells it.
    assert c.nodes["b"].commit_index == base
    c.propose("a", b"sig2", signature=True)
    assert c.nodes["b"].commit_index >= base + 2


def test_backups_are_told_a_commit_at_once_when_nothing_is_held() -> None:
    c, a = _settled()
    base = a.last_index
    c.propose("a", b"sig", signature=True)
    assert a.commit_index == base + 1
    assert c.nodes["b"].commit_index == c.nodes["c"].commit_index == base + 1


def _answers(raft: Raft, to: str = "a") -> list[AppendEntriesResponse]:
    return [m for t, m in raft.ready().messages if t == to and isinstance(m, AppendEntriesResponse)]


DURABLE = dataclasses.replace(HOLD, ack_when_durable=True)
RELEASED = dataclasses.replace(DURABLE, ack_released_on_durable=True)


def _one_batch_to_b(config: RaftConfig) -> tuple[Raft, Raft, AppendEntries, int]:
    """(primary a, backup b, a batch of one write and a signature for b, the index before
    it), every node durable up to that index."""
    c = Cluster(ABC, config=config, auto_durable=False)
    a = c.elect("a")
    for node in ABC:
        c.make_durable(node)
    c.deliver()
    c.process("a")
    c.deliver()
    base = a.last_index
    a.propose(b"w", signature=False)
    a.propose(b"sig", signature=True)
    (batch,) = _batches(a)
    return a, c.nodes["b"], batch, base


def test_a_backup_that_acks_when_durable_answers_new_entries_once_they_are_durable() -> None:
    a, b, batch, base = _one_batch_to_b(DURABLE)
    b.step(batch)
    assert _answers(b) == []  # received, not yet durable: nothing to count
    b.durable(base + 2, a.term)
    (answer,) = _answers(b)
    assert answer.success and answer.durable_index == answer.last_index == base + 2
    a.durable(base + 2, a.term)
    a.step(answer)
    assert a.commit_index == base + 2
    # A batch with nothing new (a heartbeat) is answered at once: it keeps the primary's
    # view of its backups fresh.
    b.step(dataclasses.replace(batch, entries=(), prev_index=base + 2, prev_term=a.term))
    (heard,) = _answers(b)
    assert heard.success and heard.durable_index == base + 2


def test_a_backup_hands_its_answer_to_new_entries_to_the_caller_to_send_once_durable() -> None:
    """`ack_released_on_durable`: the answer `durable()` would give is made on receipt and
    handed out with the index it waits for; the later `durable()` report sends nothing
    again, and the primary commits on that answer as before."""
    a, b, batch, base = _one_batch_to_b(RELEASED)
    b.step(batch)
    ready = b.ready()
    assert [m for _, m in ready.messages if isinstance(m, AppendEntriesResponse)] == []
    (held,) = ready.durable_messages
    to, answer, index = held
    assert to == "a" and index == base + 2
    assert isinstance(answer, AppendEntriesResponse) and answer.success
    assert answer.durable_index == answer.last_index == base + 2
    b.durable(base + 2, a.term)
    assert _answers(b) == []  # already answered: no second answer for the same entries
    a.durable(base + 2, a.term)
    a.step(answer)
    assert a.commit_index == base + 2


def test_a_held_answer_for_entries_a_truncation_dropped_is_never_handed_out() -> None:
    """A new primary's batch replaces entries the backup had just received: the answer
    held for them must not go (it would count copies the backup no longer has)."""
    a, b, batch, base = _one_batch_to_b(RELEASED)
    b.step(batch)  # held answer for base + 2, not handed out yet
    conflicting = AppendEntries(
        term=a.term + 1,
        sender="c",
        prev_index=base,
        prev_term=a.term,
        entries=(batch.entries[0]._replace(term=a.term + 1),),
        leader_commit=base,
    )
    b.step(conflicting)
    ready = b.ready()
    assert ready.truncate_to == base
    assert [(to, index) for to, _, index in ready.durable_messages] == [("c", base + 1)]


def test_releasing_answers_without_acking_when_durable_is_refused() -> None:
    import pytest

    from charter.consensus.errors import ConsensusError

    with pytest.raises(ConsensusError, match="needs ack_when_durable"):
        dataclasses.replace(HOLD, ack_released_on_durable=True)
