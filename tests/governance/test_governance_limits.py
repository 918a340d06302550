"""Governance refuses what could never work and bounds what one member can pile up: a user
certificate outside its validity period, more open proposals than the per-member cap, and an
unpaged proposal listing."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from gov_testkit import Network, start_network
from test_governance_endpoints import Harness

from charter.enclave_app.kv import Store
from charter.governance import handlers, proposals, queries, tables
from charter.governance.actions import DEFAULT_MAX_OPEN_PROPOSALS_PER_MEMBER
from charter.governance.errors import GovernanceError
from charter.ledger import certs

DAY_S = 24 * 3600


def user_cert(not_before_s: int, not_after_s: int) -> str:
    """A user's self-signed TLS client certificate valid only in the given window."""
    key = certs.new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "user")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(not_before_s, datetime.UTC))
        .not_valid_after(datetime.datetime.fromtimestamp(not_after_s, datetime.UTC))
        .sign(key, hashes.SHA384())
    )
    return certs.cert_pem(cert)


def set_user(pem: str) -> list[dict[str, Any]]:
    return [{"name": "set_user", "args": {"cert": pem}}]


def dry_run(net: Network, actions: list[dict[str, Any]]) -> dict[str, Any]:
    envelope = net.members[0].sign("proposal", {"actions": actions}, created_at=net.now_s)
    tx = net.store.begin()
    result = handlers.dry_run_proposal(tx, envelope, now_s=net.now_s, merkle_root=net.root)
    return result.json


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ((-30 * DAY_S, -DAY_S), "expired"),
        ((DAY_S, 30 * DAY_S), "not valid yet"),
    ],
)
def test_set_user_with_a_cert_outside_its_validity_is_refused_and_dry_run_says_why(
    window: tuple[int, int], reason: str
) -> None:
    net = start_network()
    pem = user_cert(net.now_s + window[0], net.now_s + window[1])
    envelope = net.members[0].sign("proposal", {"actions": set_user(pem)}, created_at=net.now_s)
    error = net.refused(handlers.create_proposal, envelope, now_s=net.now_s, merkle_root=net.root)
    assert error.code == "ProposalFailedToValidate"
    assert reason in error.message
    report = dry_run(net, set_user(pem))
    assert report["valid"] is False
    assert [e["code"] for e in report["errors"]] == ["ProposalFailedToValidate"]
    assert reason in report["errors"][0]["message"]
    assert report["errors"][0]["message"].startswith("set_user: ")
    assert queries.users(net.store.begin()) == {"value": []}


def test_set_user_whose_cert_expires_before_acceptance_fails_instead_of_registering() -> None:
    net = start_network()
    pem = user_cert(net.now_s - DAY_S, net.now_s + 60)
    proposed = net.propose(net.members[0], set_user(pem))
    assert proposed.json["proposalState"] == "Open"
    net.now_s += 120  # the ballots arrive after the certificate expired
    result = net.vote(net.members[0], proposed.json["proposalId"])
    for voter in net.members[1:]:
        if result.json["proposalState"] != "Open":
            break
        result = net.vote(voter, proposed.json["proposalId"])
    assert result.json["proposalState"] == "Failed"
    assert queries.users(net.store.begin()) == {"value": []}


def test_set_user_with_a_currently_valid_cert_is_accepted() -> None:
    net = start_network()
    pem = user_cert(net.now_s - DAY_S, net.now_s + DAY_S)
    assert net.pass_proposal(set_user(pem)).json["proposalState"] == "Accepted"
    assert [u["userId"] for u in queries.users(net.store.begin())["value"]] == [certs.cert_id(pem)]


def member_data(net: Network, i: int) -> list[dict[str, Any]]:
    return [{"name": "set_member_data", "args": {"member_id": net.members[0].id, "member_data": i}}]


def test_a_member_may_not_hold_more_open_proposals_than_the_cap() -> None:
    net = start_network()
    m0, m1 = net.members[0], net.members[1]
    for i in range(DEFAULT_MAX_OPEN_PROPOSALS_PER_MEMBER):
        assert net.propose(m0, member_data(net, i)).json["proposalState"] == "Open"
    envelope = m0.sign("proposal", {"actions": member_data(net, -1)}, created_at=net.now_s)
    error = net.refused(handlers.create_proposal, envelope, now_s=net.now_s, merkle_root=net.root)
    assert (error.code, error.status) == ("TooManyOpenProposals", 429)
    # The cap is per member: another member still proposes.
    assert net.propose(m1, member_data(net, 1000)).json["proposalState"] == "Open"
    # Once one of m0's proposals closes, m0 may propose again.
    first = proposals.list_proposals(net.store.begin()).proposals
    mine = [p["proposalId"] for p in first if p["proposerId"] == m0.id]
    withdrawal = m0.sign("withdrawal", None, proposal_id=mine[0], created_at=net.now_s)
    net.run(handlers.withdraw_proposal, withdrawal, proposal_id=mine[0], now_s=net.now_s)
    assert net.propose(m0, member_data(net, -2)).json["proposalState"] == "Open"


def test_the_open_proposal_cap_is_set_by_service_configuration() -> None:
    net = start_network()
    config = [
        {"name": "set_service_configuration", "args": {"maximum_open_proposals_per_member": 2}}
    ]
    assert net.pass_proposal(config).json["proposalState"] == "Accepted"
    info = queries.service_info(net.store.begin())
    assert info["configuration"]["maximumOpenProposalsPerMember"] == 2
    m2 = net.members[2]
    for i in range(2):
        assert net.propose(m2, member_data(net, i)).json["proposalState"] == "Open"
    envelope = m2.sign("proposal", {"actions": member_data(net, 9)}, created_at=net.now_s)
    error = net.refused(handlers.create_proposal, envelope, now_s=net.now_s, merkle_root=net.root)
    assert error.code == "TooManyOpenProposals"
    bad = [{"name": "set_service_configuration", "args": {"maximum_open_proposals_per_member": 0}}]
    assert dry_run(net, bad)["valid"] is False


def test_proposal_listing_is_paged_and_next_link_leads_through_every_proposal() -> None:
    harness = Harness(start_network())
    net = harness.net
    created = set()
    for member in net.members:
        for i in range(DEFAULT_MAX_OPEN_PROPOSALS_PER_MEMBER):
            result = net.propose(member, member_data(net, i))
            created.add(result.json["proposalId"])
    assert len(created) > proposals.PROPOSALS_PAGE_SIZE
    seen: list[str] = []
    query = "api-version=2024-07-01"
    pages = 0
    while True:
        status, body = harness.call("GET", "/gov/members/proposals", query=query)
        assert status == 200, body
        pages += 1
        assert len(body["value"]) <= proposals.PROPOSALS_PAGE_SIZE
        seen += [p["proposalId"] for p in body["value"]]
        link = body.get("nextLink")
        if link is None:
            break
        path, _, query = link.partition("?")
        assert path == "/gov/members/proposals"
    assert pages == 2
    assert seen == sorted(created)
    status, body = harness.call(
        "GET", "/gov/members/proposals", query="api-version=2024-07-01&after=zz"
    )
    assert status == 400 and body["error"]["code"] == "InvalidInput"
    assert json.dumps(body).count("zz") == 0


def test_service_info_follows_every_change_and_each_caller_gets_its_own_copy() -> None:
    # service_info keeps the last value it parsed (it is read on every request): a caller
    # changing what it got must not change what the next one gets, and a new value in the
    # store is what the next read returns.
    store = Store()
    tx = store.begin()
    original = {"status": "Opening", "cert": "pem", "service_data": {"tags": ["a"]}}
    tables.put_json(tx, tables.SERVICE_INFO, tables.SINGLETON_KEY, original)
    store.commit(tx, 1)
    first = tables.service_info(store.begin())
    assert first == original
    assert first is not None
    first["status"] = "Open"
    first["service_data"]["tags"].append("b")
    assert tables.service_info(store.begin()) == original
    tx = store.begin()
    tables.put_json(tx, tables.SERVICE_INFO, tables.SINGLETON_KEY, {**original, "status": "Open"})
    store.commit(tx, 2)
    reread = tables.service_info(store.begin())
    assert reread is not None and reread["status"] == "Open"
    assert queries.service_status(store.begin()) == "Open"
    tx = store.begin()
    tx.put(tables.SERVICE_INFO, tables.SINGLETON_KEY, b"[1, 2]")
    with pytest.raises(GovernanceError):
        tables.service_info(tx)
