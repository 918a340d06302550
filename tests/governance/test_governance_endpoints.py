"""The /gov HTTP routes through the real application framework: CCF paths (with ':'
suffixes), api-version, JSON errors, effects performed in the same transaction."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gov_testkit import Network, start_network, state_of

from charter.enclave_app.app import ANONYMOUS, App
from charter.enclave_app.gov_endpoints import GovHooks, make_gov_app
from charter.governance import tables as t
from charter.governance.effects import Effects

Q = "api-version=2024-07-01"
OPEN = {"actions": [{"name": "transition_service_to_open", "args": {}}]}


class Harness:
    def __init__(self, net: Network) -> None:
        self.net = net
        self.effects: list[Effects] = []
        self.app: App = make_gov_app(
            GovHooks(
                merkle_root=lambda: net.root,
                now_s=lambda: net.now_s,
                apply_effects=self._effects,
            )
        )

    def _effects(self, tx: Any, effects: Effects) -> None:
        # A runtime would endorse certs / flip status here; record it, in the same tx.
        self.effects.append(effects)
        tx.put("public:charter.test.effects", b"last", json.dumps(effects.open_service).encode())

    def call(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        query: str = Q,
        content_type: str | None = "application/cose",
    ) -> tuple[int, Any]:
        match = self.app.match(method, path)
        assert match is not None, f"no route for {method} {path}"
        tx = self.net.store.begin()
        headers = {} if content_type is None else {"Content-Type": content_type}
        outcome = self.app.invoke(
            match, tx=tx, caller=ANONYMOUS, body=body, query=query, headers=headers
        )
        if outcome.commit:
            self.net.store.commit(tx, self.net.store.version + 1)
        response = outcome.response
        parsed = json.loads(response.body) if response.body else None
        return response.status, parsed


@pytest.fixture()
def harness() -> Harness:
    return Harness(start_network())


def test_members_open_the_service_through_the_http_routes(harness: Harness) -> None:
    net = harness.net
    m0, m1, m2 = net.members
    status, body = harness.call(
        "POST", "/gov/members/proposals:create", m0.sign("proposal", OPEN, created_at=net.now_s)
    )
    assert status == 200 and body["proposalState"] == "Open"
    pid = body["proposalId"]
    for voter in (m1, m2):
        envelope = voter.sign(
            "ballot", {"ballot": "approve"}, proposal_id=pid, created_at=net.now_s
        )
        status, body = harness.call(
            "POST", f"/gov/members/proposals/{pid}/ballots/{voter.id}:submit", envelope
        )
        assert status == 200
    assert body["proposalState"] == "Accepted"
    assert [e.open_service for e in harness.effects] == [True]
    tx = net.store.begin()
    assert tx.get("public:charter.test.effects", b"last") == b"true"  # same transaction
    assert harness.call("GET", "/gov/service/info")[1]["status"] == "Open"
    assert harness.call("GET", f"/gov/members/proposals/{pid}")[1]["finalVotes"] == {
        m1.id: True,
        m2.id: True,
    }
    assert harness.call("GET", f"/gov/members/proposals/{pid}/actions")[1] == OPEN
    assert harness.call("GET", f"/gov/members/proposals/{pid}/ballots/{m1.id}")[1] == {
        "ballot": "approve"
    }
    listed = harness.call("GET", "/gov/members/proposals")[1]["value"]
    assert [p["proposalId"] for p in listed] == [pid]


def test_read_routes_answer_in_ccf_shapes(harness: Harness) -> None:
    net = harness.net
    m0 = net.members[0]
    assert len(harness.call("GET", "/gov/service/members")[1]["value"]) == 3
    assert harness.call("GET", f"/gov/service/members/{m0.id}")[1]["memberId"] == m0.id
    assert harness.call("GET", "/gov/service/users")[1] == {"value": []}
    assert harness.call("GET", f"/gov/service/nodes/{net.node_id}")[1]["status"] == "Trusted"
    assert harness.call("GET", "/gov/service/nodes")[1]["value"][0]["nodeId"] == net.node_id
    assert "default" in harness.call("GET", "/gov/service/constitution")[1]
    assert harness.call("GET", "/gov/service/join-policy")[1]["virtual"]["measurements"] == []
    digest = harness.call("GET", f"/gov/members/state-digests/{m0.id}")[1]
    assert digest["memberId"] == m0.id and len(digest["stateDigest"]) == 64
    status, body = harness.call("GET", f"/gov/service/users/{'ab' * 32}")
    assert (status, body["error"]["code"]) == (404, "ResourceNotFound")


def test_withdraw_route_withdraws_and_unknown_proposal_answers_204(harness: Harness) -> None:
    net = harness.net
    m0 = net.members[0]
    pid = harness.call(
        "POST", "/gov/members/proposals:create", m0.sign("proposal", OPEN, created_at=net.now_s)
    )[1]["proposalId"]
    envelope = m0.sign("withdrawal", b"", proposal_id=pid, created_at=net.now_s)
    status, body = harness.call("POST", f"/gov/members/proposals/{pid}:withdraw", envelope)
    assert (status, body["proposalState"]) == (200, "Withdrawn")
    unknown = "ef" * 32
    envelope = m0.sign("withdrawal", b"", proposal_id=unknown, created_at=net.now_s)
    assert harness.call("POST", f"/gov/members/proposals/{unknown}:withdraw", envelope) == (
        204,
        None,
    )


def test_state_digest_routes_activate_a_member() -> None:
    harness = Harness(start_network(("h0",), activate=False))
    net = harness.net
    who = net.members[0]
    update = who.sign("state_digest", b"", created_at=net.now_s)
    status, body = harness.call("POST", f"/gov/members/state-digests/{who.id}:update", update)
    assert status == 200
    ack = who.sign("ack", {"stateDigest": body["stateDigest"]}, created_at=net.now_s)
    assert harness.call("POST", f"/gov/members/state-digests/{who.id}:ack", ack) == (204, None)
    assert harness.call("GET", f"/gov/service/members/{who.id}")[1]["status"] == "Active"


def test_dry_run_route_records_nothing(harness: Harness) -> None:
    net = harness.net
    before = state_of(net.store)
    envelope = net.members[0].sign("proposal", OPEN, created_at=net.now_s)
    status, body = harness.call("POST", "/gov/members/proposals:dry-run", envelope)
    assert status == 200 and body["valid"] is True and body["effects"]["openService"]
    assert state_of(net.store) == before


@pytest.mark.parametrize(
    ("query", "code"),
    [("", "MissingApiVersionParameter"), ("api-version=2020-01-01", "UnsupportedApiVersionValue")],
)
def test_missing_or_unknown_api_version_is_a_400(harness: Harness, query: str, code: str) -> None:
    status, body = harness.call("GET", "/gov/service/info", query=query)
    assert (status, body["error"]["code"]) == (400, code)
    net = harness.net
    before = state_of(net.store)
    envelope = net.members[0].sign("proposal", OPEN, created_at=net.now_s)
    status, body = harness.call("POST", "/gov/members/proposals:create", envelope, query=query)
    assert (status, body["error"]["code"]) == (400, code)
    assert state_of(net.store) == before


def test_preview_api_version_is_accepted(harness: Harness) -> None:
    status, _ = harness.call("GET", "/gov/service/info", query="api-version=2023-06-01-preview")
    assert status == 200


def test_refused_request_is_a_json_error_and_changes_nothing(harness: Harness) -> None:
    net = harness.net
    before = state_of(net.store)
    envelope = net.members[0].sign("ballot", OPEN, proposal_id="ab" * 32, created_at=net.now_s)
    status, body = harness.call("POST", "/gov/members/proposals:create", envelope)
    assert status == 401
    assert body["error"]["code"] == "InvalidMessageType" and body["error"]["message"]
    assert state_of(net.store) == before


def test_oversized_body_is_refused_before_parsing(harness: Harness) -> None:
    status, body = harness.call("POST", "/gov/members/proposals:create", b"\0" * (1024 * 1024 + 1))
    assert (status, body["error"]["code"]) == (413, "RequestTooLarge")


def test_non_cose_content_type_is_refused(harness: Harness) -> None:
    net = harness.net
    envelope = net.members[0].sign("proposal", OPEN, created_at=net.now_s)
    status, body = harness.call(
        "POST", "/gov/members/proposals:create", envelope, content_type="application/json"
    )
    assert (status, body["error"]["code"]) == (415, "UnsupportedContentType")


def test_governance_tables_written_by_the_routes_have_ccf_names(harness: Harness) -> None:
    net = harness.net
    harness.call(
        "POST",
        "/gov/members/proposals:create",
        net.members[0].sign("proposal", OPEN, created_at=net.now_s),
    )
    names = set(net.store.map_names())
    assert {t.PROPOSALS, t.PROPOSALS_INFO, t.COSE_RECENT_PROPOSALS, t.COSE_HISTORY} <= names
    assert all(n.startswith("public:ccf.gov.") for n in names)


def test_gov_openapi_document_lists_the_colon_routes(harness: Harness) -> None:
    match = harness.app.match("GET", "/gov/api")
    assert match is not None
    outcome = harness.app.invoke(match, tx=harness.net.store.begin(), caller=ANONYMOUS)
    paths = json.loads(outcome.response.body)["paths"]
    assert "/gov/members/proposals:create" in paths
    assert "/gov/members/proposals/{proposalId}/ballots/{memberId}:submit" in paths
