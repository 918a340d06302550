"""The membership-change rule (etcd's `confchange/`): when a new voter set may be proposed.

Charter changes configurations one node at a time (Raft's single-server changes), so no joint
consensus is needed: any two successive configurations share a majority. The rule is a pure
function of what the primary knows, so the node can ask it before proposing and a test can
ask it without a cluster.
"""

from __future__ import annotations

from collections.abc import Callable

from charter.consensus.errors import ConfigurationError


def check_configuration_change(
    *,
    current: frozenset[str],
    new: frozenset[str],
    configuration_index: int,
    commit_index: int,
    commit_term: int | None,
    term: int,
    proposer: str,
    is_caught_up: Callable[[str], bool],
) -> None:
    """Raise `ConfigurationError` unless the primary `proposer`, in `term`, may propose `new`.

    `current` is the latest configuration in its log (appended at `configuration_index`),
    `commit_index` its commit index and `commit_term` that entry's term (None: unknown);
    `is_caught_up(node)` says whether a node holds everything committed. The rule:
    - `new` has at least one voter and differs from `current` by exactly one node;
    - the previous change is committed (code `ConfigurationChangeInProgress`);
    - an entry of this term is committed, so no uncommitted change of an older primary can
      still take effect (code `ConfigurationChangeInProgress`);
    - every added node other than the proposer has caught up (code `NotCaughtUp`), so adding
      it cannot stall commit.
    """
    if not new:
        raise ConfigurationError("a configuration needs at least one voter")
    if len(current ^ new) != 1:
        raise ConfigurationError("configurations change one node at a time")
    if configuration_index > commit_index:
        raise ConfigurationError(
            "the previous configuration change is not yet committed",
            code="ConfigurationChangeInProgress",
        )
    if commit_term != term:
        raise ConfigurationError(
            "no entry of this view is committed yet", code="ConfigurationChangeInProgress"
        )
    for node in sorted(new - current):
        if node != proposer and not is_caught_up(node):
            raise ConfigurationError(f"{node} has not caught up", code="NotCaughtUp")
