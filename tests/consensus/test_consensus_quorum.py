"""consensus/quorum.py and consensus/confchange.py: the majority rule and the membership rule,
each written once and used by elections, check-quorum, commit and `propose`."""

from __future__ import annotations

import pytest
from consensus_cluster import Cluster

from charter.consensus import ConfigurationError, StartState, check_configuration_change, quorum

ABC = frozenset({"a", "b", "c"})
ABCD = frozenset({"a", "b", "c", "d"})


def test_a_majority_is_more_than_half_of_the_voters() -> None:
    assert [quorum.majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_only_voters_count_toward_a_quorum() -> None:
    assert quorum.has_quorum(ABC, ["a", "b"])
    assert not quorum.has_quorum(ABC, ["a", "learner", "stranger"])
    assert not quorum.has_quorum(ABCD, ["a", "b"])
    assert quorum.has_quorum(ABCD, ["a", "b", "d", "d"])


def test_an_election_is_decided_by_a_majority_either_way() -> None:
    assert quorum.vote_result(ABC, {"a": True}) is None
    assert quorum.vote_result(ABC, {"a": True, "b": True}) is True
    assert quorum.vote_result(ABC, {"a": False, "b": False}) is False
    assert quorum.vote_result(ABC, {"a": True, "x": True, "y": True}) is None
    assert quorum.vote_result(ABCD, {"a": True, "b": True, "c": False, "d": False}) is None


def test_the_committed_index_is_the_highest_held_by_a_majority() -> None:
    assert quorum.committed_index(ABC, {"a": 9, "b": 5, "c": 3}) == 5
    assert quorum.committed_index(ABC, {"a": 9}) == 0
    assert quorum.committed_index(ABCD, {"a": 9, "b": 7, "c": 5, "d": 1}) == 5
    assert quorum.committed_index(frozenset({"a"}), {"a": 4, "x": 100}) == 4


def _check(**overrides: object) -> None:
    args: dict[str, object] = {
        "current": ABC,
        "new": ABCD,
        "configuration_index": 3,
        "commit_index": 10,
        "commit_term": 2,
        "term": 2,
        "proposer": "a",
        "is_caught_up": lambda node: True,
    }
    args.update(overrides)
    check_configuration_change(**args)  # type: ignore[arg-type]


def test_a_committed_primary_may_add_one_caught_up_node_or_remove_one() -> None:
    _check()
    _check(new=frozenset({"a", "b"}))


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"new": frozenset()}, "InvalidConfiguration"),
        ({"new": ABC}, "InvalidConfiguration"),
        ({"new": ABCD | {"e"}}, "InvalidConfiguration"),
        ({"configuration_index": 11}, "ConfigurationChangeInProgress"),
        ({"commit_term": 1}, "ConfigurationChangeInProgress"),
        ({"is_caught_up": lambda node: node != "d"}, "NotCaughtUp"),
    ],
)
def test_a_configuration_change_outside_the_rule_is_refused_with_its_code(
    overrides: dict[str, object], code: str
) -> None:
    with pytest.raises(ConfigurationError) as e:
        _check(**overrides)
    assert e.value.code == code


def test_the_proposer_need_not_be_caught_up_with_itself() -> None:
    _check(current=frozenset({"b"}), new=frozenset({"a", "b"}), is_caught_up=lambda n: False)


def test_the_primary_answers_whether_it_may_change_its_configuration_before_proposing() -> None:
    c = Cluster(["a", "b", "c"])
    a = c.elect("a")
    c.add("d", StartState(configuration=frozenset()))
    for r in c.nodes.values():
        r.add_learner("d")
    with pytest.raises(ConfigurationError) as e:
        a.check_configuration_change(a.configuration | {"d"})
    assert e.value.code == "NotCaughtUp"
    c.run_for(60)
    a.check_configuration_change(a.configuration | {"d"})  # caught up now: allowed
    last = a.last_index
    a.propose(b"add d", signature=True, configuration=a.configuration | {"d"})
    assert a.last_index == last + 1
    with pytest.raises(ConfigurationError) as e:
        a.check_configuration_change(a.configuration - {"b"})
    assert e.value.code == "ConfigurationChangeInProgress"
