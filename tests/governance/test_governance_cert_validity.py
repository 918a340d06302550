"""The certificate validity actions (CCF's names and arguments): each checks its period
against the service's limits and asks the runtime for a certificate with that period."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from gov_testkit import Network, start_network

from charter.governance import handlers, proposals
from charter.governance import tables as t
from charter.governance.effects import NodeEndorsement, ServiceRenewal

OTHER_NODE = "cd" * 32
PENDING_NODE = "ef" * 32


def utc_text(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y%m%d%H%M%SZ")


@pytest.fixture()
def net() -> Network:
    network = start_network()
    tx = network.store.begin()
    t.put_json(tx, t.NODES_INFO, OTHER_NODE.encode(), {"status": "Trusted", "node_data": None})
    t.put_json(tx, t.NODES_INFO, PENDING_NODE.encode(), {"status": "Pending", "node_data": None})
    network.store.commit(tx, network.store.version + 1)
    return network


def accepted(net: Network, name: str, args: dict[str, Any]) -> Any:
    result = net.pass_proposal([{"name": name, "args": args}])
    assert result.json["proposalState"] == "Accepted", result.json
    return result


def refused_code(net: Network, name: str, args: dict[str, Any]) -> str:
    envelope = net.members[0].sign(
        "proposal", {"actions": [{"name": name, "args": args}]}, created_at=net.now_s
    )
    error = net.refused(handlers.create_proposal, envelope, now_s=net.now_s, merkle_root=net.root)
    return error.code


def test_service_certificate_validity_asks_for_a_renewal_with_the_given_period(
    net: Network,
) -> None:
    start = utc_text(net.now_s)
    result = accepted(
        net, "set_service_certificate_validity", {"valid_from": start, "validity_period_days": 30}
    )
    assert result.effects.renew_service_certificate == ServiceRenewal(start, 30)
    assert proposals.effects_to_json(result.effects)["renewServiceCertificate"] == {
        "validFrom": start,
        "validityPeriodDays": 30,
    }


def test_a_missing_period_is_the_service_maximum(net: Network) -> None:
    result = accepted(net, "set_service_certificate_validity", {"valid_from": utc_text(net.now_s)})
    assert result.effects.renew_service_certificate.validity_period_days == 365


def test_a_period_beyond_the_maximum_is_refused_until_set_service_configuration_raises_it(
    net: Network,
) -> None:
    args = {"valid_from": utc_text(net.now_s), "validity_period_days": 500}
    assert refused_code(net, "set_service_certificate_validity", args) == (
        "ProposalFailedToValidate"
    )
    assert refused_code(net, "set_all_nodes_certificate_validity", args) == (
        "ProposalFailedToValidate"
    )
    accepted(
        net,
        "set_service_configuration",
        {
            "maximum_service_certificate_validity_days": 500,
            "maximum_node_certificate_validity_days": 500,
        },
    )
    result = accepted(net, "set_service_certificate_validity", args)
    assert result.effects.renew_service_certificate.validity_period_days == 500
    accepted(net, "set_service_configuration", {"maximum_node_certificate_validity_days": 10})
    result = accepted(net, "set_all_nodes_certificate_validity", {"valid_from": args["valid_from"]})
    assert {e.validity_period_days for e in result.effects.endorse_nodes} == {10}


def test_all_nodes_certificate_validity_endorses_every_trusted_node_and_no_other(
    net: Network,
) -> None:
    start = utc_text(net.now_s)
    result = accepted(
        net, "set_all_nodes_certificate_validity", {"valid_from": start, "validity_period_days": 7}
    )
    assert sorted(result.effects.endorse_nodes, key=lambda e: e.node_id) == [
        NodeEndorsement(net.node_id, start, 7),
        NodeEndorsement(OTHER_NODE, start, 7),
    ]


def test_node_certificate_validity_endorses_that_trusted_node(net: Network) -> None:
    start = utc_text(net.now_s)
    result = accepted(
        net,
        "set_node_certificate_validity",
        {"node_id": OTHER_NODE, "valid_from": start, "validity_period_days": 3},
    )
    assert result.effects.endorse_nodes == (NodeEndorsement(OTHER_NODE, start, 3),)


@pytest.mark.parametrize(
    ("name", "args", "code"),
    [
        ("set_node_certificate_validity", {"node_id": PENDING_NODE}, "ProposalFailedToValidate"),
        ("set_node_certificate_validity", {"node_id": "01" * 32}, "ProposalFailedToValidate"),
        ("set_service_certificate_validity", {"valid_from": "soon"}, "ProposalFailedToValidate"),
        (
            "set_service_certificate_validity",
            {"validity_period_days": 0},
            "ProposalFailedToValidate",
        ),
        ("set_service_certificate_validity", {"validity_period_days": "3"}, "InvalidActionArgs"),
        ("set_all_nodes_certificate_validity", {"node_id": OTHER_NODE}, "InvalidActionArgs"),
    ],
)
def test_bad_validity_arguments_are_refused_and_change_nothing(
    net: Network, name: str, args: dict[str, Any], code: str
) -> None:
    full = {"valid_from": utc_text(net.now_s), **args}
    assert refused_code(net, name, full) == code


def test_a_period_that_has_already_ended_is_refused(net: Network) -> None:
    two_days_ago = utc_text(net.now_s - 2 * 86_400)
    args = {"valid_from": two_days_ago, "validity_period_days": 1}
    assert refused_code(net, "set_service_certificate_validity", args) == (
        "ProposalFailedToValidate"
    )
    # Started in the past but still running: accepted (how a test makes a short-lived cert).
    result = accepted(
        net,
        "set_service_certificate_validity",
        {"valid_from": utc_text(net.now_s - 86_400 + 120), "validity_period_days": 1},
    )
    assert result.effects.renew_service_certificate is not None
