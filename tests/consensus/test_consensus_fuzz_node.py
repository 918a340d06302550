"""Random message sequences fed to one node: it raises nothing but ConsensusError, and its
invariants hold (view and commit never move back, commit within the log, Ready consistent)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.consensus import (
    AppendEntries,
    AppendEntriesResponse,
    ConsensusError,
    LogEntry,
    Message,
    PreVote,
    PreVoteResponse,
    Raft,
    RaftConfig,
    RequestVote,
    RequestVoteResponse,
    Role,
    StartState,
    TimeoutNow,
    decode_message,
    encode_message,
)

PEERS = ["a", "b", "c", "x"]
CONFIG = RaftConfig(
    election_timeout_min_ms=50,
    election_timeout_max_ms=100,
    heartbeat_interval_ms=10,
    max_batch_entries=4,
    max_inflight_messages=2,
)
terms = st.integers(0, 6)
indices = st.integers(0, 12)
senders = st.sampled_from(PEERS)


@st.composite
def appends(draw: st.DrawFn) -> AppendEntries:
    term = draw(st.integers(1, 6))
    prev = draw(indices)
    prev_term = 0 if prev == 0 else draw(st.integers(1, term))
    n = draw(st.integers(0, 4))
    ts = sorted(draw(st.lists(st.integers(max(prev_term, 1), term), min_size=n, max_size=n)))
    entries = tuple(
        LogEntry(
            prev + 1 + k,
            t,
            bytes([k]),
            draw(st.booleans()),
            draw(st.none() | st.just(frozenset({"a", "b", "c"}))),
        )
        for k, t in enumerate(ts)
    )
    return AppendEntries(term, draw(senders), prev, prev_term, entries, draw(st.integers(0, 14)))


messages: st.SearchStrategy[Message] = st.one_of(
    appends(),
    st.builds(
        AppendEntriesResponse,
        terms,
        senders,
        st.booleans(),
        indices,
        indices,
        indices,
        indices,
        terms,
    ),
    st.builds(PreVote, terms, senders, indices, terms),
    st.builds(PreVoteResponse, terms, senders, st.booleans()),
    st.builds(RequestVote, terms, senders, indices, terms, st.booleans()),
    st.builds(RequestVoteResponse, terms, senders, st.booleans()),
    st.builds(TimeoutNow, terms, senders),
)
ops = st.one_of(
    messages.map(lambda m: ("msg", m)),
    st.integers(1, 60).map(lambda ms: ("tick", ms)),
    st.booleans().map(lambda sig: ("propose", sig)),
    indices.map(lambda i: ("durable", i)),
    st.just(("campaign", 0)),
)


@settings(
    max_examples=1000, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(ops, max_size=60), st.booleans())
def test_random_message_sequences_raise_only_consensus_error_and_keep_invariants(
    script: list[tuple[str, object]], through_codec: bool
) -> None:
    node = Raft("c", config=CONFIG, start=StartState(configuration=frozenset({"a", "b", "c"})))
    view, commit, stored = 0, 0, 0
    for kind, arg in script:
        try:
            if kind == "msg":
                assert isinstance(
                    arg,
                    AppendEntries
                    | AppendEntriesResponse
                    | PreVote
                    | PreVoteResponse
                    | RequestVote
                    | RequestVoteResponse
                    | TimeoutNow,
                )
                msg = decode_message(encode_message(arg)) if through_codec else arg
                node.step(msg)
            elif kind == "tick":
                assert isinstance(arg, int)
                node.tick(arg)
            elif kind == "propose":
                node.propose(b"p", signature=bool(arg))
            elif kind == "durable":
                assert isinstance(arg, int)
                node.durable(arg)
            else:
                node.campaign()
        except ConsensusError:
            pass
        r = node.ready()
        assert r.view >= view
        view = r.view
        if r.truncate_to is not None:
            assert r.truncate_to >= commit
            stored = min(stored, r.truncate_to)
        for e in r.entries:
            assert e.index == stored + 1
            stored = e.index
        assert stored == node.last_index
        assert commit <= node.commit_index <= node.last_index
        commit = node.commit_index
        if r.role is Role.PRIMARY:
            assert node.leader_id == "c"
