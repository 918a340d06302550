"""A node's lifecycle: its states and the only transitions between them.

Like h11's connection states or CCF's `StateMachine`, the state is never assigned: a caller
says which states it expects (`expect`) and where it goes (`advance`), and a transition the
table does not list raises `IllegalTransition` instead of leaving the node half in two
states. The values are the strings `/node/state` and the logs have always shown.
"""

from __future__ import annotations

import enum
import logging

LOG = logging.getLogger(__name__)


class NodeState(enum.Enum):
    UNINITIALIZED = "Uninitialized"
    # A joiner that governance has not trusted yet: it holds an identity and, once trusted,
    # receives entries as a learner, but no ledger secret.
    PENDING = "Pending"
    # A restarted node replaying its own ledger from the host.
    READING_OWN_LEDGER = "ReadingOwnLedger"
    # Disaster recovery (CCF's states): replaying and verifying the public domains of an
    # old service's ledger; then running as the new service's only trusted node, public
    # state only, while members open it; then replaying the private domains with the ledger
    # secrets the recovery shares revealed.
    READING_PUBLIC_LEDGER = "ReadingPublicLedger"
    PART_OF_PUBLIC_NETWORK = "PartOfPublicNetwork"
    READING_PRIVATE_LEDGER = "ReadingPrivateLedger"
    PART_OF_NETWORK = "PartOfNetwork"
    RETIRED = "Retired"


_S = NodeState
TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    # start_new_network, resume (restart), start_joining, start_recovery
    _S.UNINITIALIZED: frozenset(
        {_S.PART_OF_NETWORK, _S.READING_OWN_LEDGER, _S.PENDING, _S.READING_PUBLIC_LEDGER}
    ),
    # resumed; resume_joining (restarted before governance trusted it)
    _S.READING_OWN_LEDGER: frozenset({_S.PART_OF_NETWORK, _S.PENDING}),
    # on_join_response (trusted); retired by Raft before it ever held the secrets
    _S.PENDING: frozenset({_S.PART_OF_NETWORK, _S.RETIRED}),
    # public_ledger_replayed: the recovery service's first transactions are written
    _S.READING_PUBLIC_LEDGER: frozenset({_S.PART_OF_PUBLIC_NETWORK}),
    # start_private_replay (the members' shares revealed the secrets); retired by Raft
    _S.PART_OF_PUBLIC_NETWORK: frozenset({_S.READING_PRIVATE_LEDGER, _S.RETIRED}),
    # the private domains are replayed: the service opens
    _S.READING_PRIVATE_LEDGER: frozenset({_S.PART_OF_NETWORK}),
    _S.PART_OF_NETWORK: frozenset({_S.RETIRED}),
    _S.RETIRED: frozenset(),
}


class IllegalTransition(Exception):
    """A lifecycle step from a state that does not allow it (a bug in the caller)."""

    code = "IllegalNodeTransition"

    def __init__(self, current: NodeState, wanted: tuple[NodeState, ...], action: str) -> None:
        names = "/".join(s.value for s in wanted)
        super().__init__(f"{action}: node is {current.value}, expected {names}")
        self.current = current
        self.wanted = wanted


class Lifecycle:
    """The state of one node, moved only along `TRANSITIONS`."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = NodeState.UNINITIALIZED

    @property
    def state(self) -> NodeState:
        return self._state

    def is_(self, *states: NodeState) -> bool:
        return self._state in states

    def expect(self, *states: NodeState, action: str = "step") -> None:
        """Raise `IllegalTransition` unless the node is in one of `states`."""
        assert states
        if self._state not in states:
            raise IllegalTransition(self._state, states, action)

    def advance(self, to: NodeState) -> None:
        """Move to `to`; raise `IllegalTransition` if the table does not allow it."""
        if to not in TRANSITIONS[self._state]:
            raise IllegalTransition(self._state, tuple(TRANSITIONS[self._state]), f"-> {to.value}")
        LOG.info("event=node_state from=%s to=%s", self._state.value, to.value)
        self._state = to
