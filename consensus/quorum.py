"""Majority arithmetic over a set of voters (etcd's `quorum/`): the one place it is written.

Elections, check-quorum and commit all ask "does a majority of the configuration agree?";
each asks it through these functions, so the three cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def majority(voter_count: int) -> int:
    """How many of `voter_count` voters make a majority (a quorum)."""
    assert voter_count >= 1, "a configuration has at least one voter"
    return voter_count // 2 + 1


def has_quorum(voters: frozenset[str], agreeing: Iterable[str]) -> bool:
    """Whether the voters among `agreeing` are a majority of `voters` (others are ignored)."""
    return len(voters.intersection(agreeing)) >= majority(len(voters))


def vote_result(voters: frozenset[str], votes: Mapping[str, bool]) -> bool | None:
    """An election's outcome: True once a majority granted, False once a majority refused,
    None while undecided. Votes from outside `voters` do not count."""
    need = majority(len(voters))
    granted = sum(1 for v, g in votes.items() if g and v in voters)
    if granted >= need:
        return True
    refused = sum(1 for v, g in votes.items() if not g and v in voters)
    return False if refused >= need else None


def committed_index(voters: frozenset[str], match_index: Mapping[str, int]) -> int:
    """The highest index that a majority of `voters` hold (a voter missing from
    `match_index` holds nothing: 0)."""
    matches = sorted((match_index.get(v, 0) for v in voters), reverse=True)
    index = matches[majority(len(voters)) - 1]
    assert index >= 0
    return index
