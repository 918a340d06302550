"""Hostile request bodies: any byte string is either accepted or refused with a 4xx
GovernanceError, and a refusal never changes the KV."""

from __future__ import annotations

from gov_testkit import start_network, state_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.governance import handlers
from charter.governance.errors import GovernanceError

NET = start_network(("fz0", "fz1", "fz2"))
VALID = NET.members[0].sign(
    "proposal",
    {"actions": [{"name": "set_member_data", "args": {"member_id": NET.members[0].id}}]},
    created_at=NET.now_s,
)
BEFORE = state_of(NET.store)

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _refused_or_accepted(body: bytes) -> None:
    tx = NET.store.begin()
    try:
        handlers.create_proposal(tx, body, now_s=NET.now_s, merkle_root=NET.root)
    except GovernanceError as exc:
        assert 400 <= exc.status < 500, exc
        assert not tx.has_writes
        return
    # Only the untouched envelope may pass; the transaction is dropped, not committed.
    assert body == VALID


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes_are_refused_with_a_4xx(body: bytes) -> None:
    _refused_or_accepted(body)


@FUZZ
@given(st.data())
def test_mutated_valid_envelope_is_refused_unless_unchanged(data: st.DataObject) -> None:
    body = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(body) - 1))
        body[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    _refused_or_accepted(bytes(body[:cut]) if data.draw(st.booleans()) else bytes(body))


def test_fuzzing_left_the_store_untouched() -> None:
    assert state_of(NET.store) == BEFORE
