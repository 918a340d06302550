"""Each governance action: its happy path through a real proposal, and its bad arguments."""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any

import pytest
from gov_testkit import Network, member, start_network
from shared_data import SHARED

from charter.governance import handlers, proposals, queries
from charter.governance import tables as t
from charter.governance.actions import ACTIONS, parse_action
from charter.governance.errors import GovernanceError
from charter.ledger import certs, snp

SNP = SHARED / "snp-attestation"

PENDING_NODE = "cd" * 32


@pytest.fixture()
def net() -> Network:
    return start_network()


def accepted(net: Network, name: str, args: dict[str, Any]) -> Any:
    result = net.pass_proposal([{"name": name, "args": args}])
    assert result.json["proposalState"] == "Accepted", result.json
    return result


def refused_at_creation(net: Network, name: str, args: dict[str, Any]) -> GovernanceError:
    envelope = net.members[0].sign(
        "proposal", {"actions": [{"name": name, "args": args}]}, created_at=net.now_s
    )
    return net.refused(handlers.create_proposal, envelope, now_s=net.now_s, merkle_root=net.root)


def add_pending_node(net: Network, node_id: str = PENDING_NODE) -> None:
    # What the runtime writes when a node asks to join.
    tx = net.store.begin()
    t.put_json(tx, t.NODES_INFO, node_id.encode(), {"status": "Pending", "node_data": None})
    net.store.commit(tx, net.store.version + 1)


def utc_text(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y%m%d%H%M%SZ")


def rsa_pem() -> str:
    return certs.public_key_pem(certs.new_rsa_encryption_key().public_key())


def test_every_listed_action_is_registered() -> None:
    assert set(ACTIONS) == {
        "set_member",
        "remove_member",
        "set_member_data",
        "set_user",
        "remove_user",
        "set_user_data",
        "transition_node_to_trusted",
        "remove_node",
        "add_node_measurement",
        "remove_node_measurement",
        "add_virtual_measurement",
        "remove_virtual_measurement",
        "add_snp_measurement",
        "remove_snp_measurement",
        "add_snp_host_data",
        "remove_snp_host_data",
        "set_snp_minimum_tcb_version_hex",
        "remove_snp_minimum_tcb_version",
        "transition_service_to_open",
        "set_constitution",
        "set_recovery_threshold",
        "trigger_ledger_rekey",
        "trigger_recovery_shares_refresh",
        "trigger_snapshot",
        "trigger_ledger_chunk",
        "set_service_configuration",
        "set_scitt_configuration",
        "set_ca_cert_bundle",
        "remove_ca_cert_bundle",
        "set_jwt_issuer",
        "set_jwt_public_signing_keys",
        "remove_jwt_issuer",
        "set_service_certificate_validity",
        "set_node_certificate_validity",
        "set_all_nodes_certificate_validity",
    }


def test_set_member_adds_an_accepted_member_who_can_then_activate(net: Network) -> None:
    newcomer = member("newcomer")
    enc = rsa_pem()
    accepted(
        net,
        "set_member",
        {"cert": newcomer.cert_pem, "encryption_pub_key": enc, "member_data": {"org": "x"}},
    )
    tx = net.store.begin()
    info = queries.member(tx, newcomer.id)
    assert info["status"] == "Accepted"
    assert info["memberData"] == {"org": "x"}
    assert info["recoveryRole"] == "Participant"
    assert info["publicEncryptionKey"] == enc
    ack = t.get_json_object(tx, t.MEMBERS_ACKS, newcomer.id.encode())
    assert ack is not None and len(ack["state_digest"]) == 64
    net.activate(newcomer)
    assert queries.member(net.store.begin(), newcomer.id)["status"] == "Active"


@pytest.mark.parametrize(
    "args",
    [
        {"cert": "not a cert"},
        {"cert": member("x").cert_pem, "encryption_pub_key": "junk"},
        {"cert": member("x").cert_pem, "recovery_role": "Owner"},
    ],
)
def test_set_member_with_unusable_material_fails_validation(
    net: Network, args: dict[str, Any]
) -> None:
    assert refused_at_creation(net, "set_member", args).code == "ProposalFailedToValidate"


def test_set_member_refuses_an_ec_key_for_encryption(net: Network) -> None:
    ec_pem = certs.public_key_pem(certs.new_key().public_key())
    args = {"cert": member("x").cert_pem, "encryption_pub_key": ec_pem}
    assert refused_at_creation(net, "set_member", args).code == "ProposalFailedToValidate"


def test_remove_member_deletes_its_records(net: Network) -> None:
    leaver = net.members[2]
    result = accepted(net, "remove_member", {"member_id": leaver.id})
    assert result.effects.empty  # no rekey: the leaver had not submitted a share
    tx = net.store.begin()
    for map_name in (t.MEMBERS_CERTS, t.MEMBERS_INFO, t.MEMBERS_ACKS, t.COSE_HISTORY):
        assert tx.get(map_name, leaver.id.encode()) is None
    assert tx.get(t.RETIRED_MEMBERS, leaver.id.encode()) is not None


def test_remove_member_of_an_unknown_member_fails_validation(net: Network) -> None:
    err = refused_at_creation(net, "remove_member", {"member_id": "0" * 64})
    assert err.code == "ProposalFailedToValidate"


def test_last_active_member_cannot_be_removed() -> None:
    net = start_network(("alone",))
    err = refused_at_creation(net, "remove_member", {"member_id": net.members[0].id})
    assert err.code == "ProposalFailedToValidate"


def test_set_member_data_replaces_member_data(net: Network) -> None:
    who = net.members[1]
    accepted(net, "set_member_data", {"member_id": who.id, "member_data": [1, 2]})
    assert queries.member(net.store.begin(), who.id)["memberData"] == [1, 2]


@pytest.mark.parametrize("args", [{"member_id": "xyz"}, {"member_data": 1}, {}])
def test_set_member_data_bad_args_are_refused(net: Network, args: dict[str, Any]) -> None:
    assert refused_at_creation(net, "set_member_data", args).code == "InvalidActionArgs"


def test_user_lifecycle_set_data_remove(net: Network) -> None:
    user = member("user-a")
    result = accepted(net, "set_user", {"cert": user.cert_pem, "user_data": {"role": "r"}})
    assert result.effects.empty
    assert queries.user(net.store.begin(), user.id)["userData"] == {"role": "r"}
    accepted(net, "set_user_data", {"user_id": user.id, "user_data": "new"})
    assert queries.user(net.store.begin(), user.id)["userData"] == "new"
    accepted(net, "remove_user", {"user_id": user.id})
    assert queries.users(net.store.begin()) == {"value": []}


@pytest.mark.parametrize(
    ("name", "args", "code"),
    [
        ("set_user", {"cert": 5}, "InvalidActionArgs"),
        ("set_user", {"cert": "-----BEGIN CERTIFICATE-----\n"}, "ProposalFailedToValidate"),
        ("remove_user", {"user_id": "ab" * 32}, "ProposalFailedToValidate"),
        ("set_user_data", {"user_id": "ab" * 32, "user_data": 1}, "ProposalFailedToValidate"),
        ("remove_user", {}, "InvalidActionArgs"),
    ],
)
def test_user_action_bad_args_are_refused(
    net: Network, name: str, args: dict[str, Any], code: str
) -> None:
    assert refused_at_creation(net, name, args).code == code


def test_transition_node_to_trusted_records_trust_and_asks_for_an_endorsement(
    net: Network,
) -> None:
    add_pending_node(net)
    result = accepted(
        net,
        "transition_node_to_trusted",
        {"node_id": PENDING_NODE, "valid_from": utc_text(net.now_s), "validity_period_days": 30},
    )
    (endorsement,) = result.effects.endorse_nodes
    assert endorsement.node_id == PENDING_NODE and endorsement.validity_period_days == 30
    assert queries.node(net.store.begin(), PENDING_NODE)["status"] == "Trusted"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ({"node_id": "ee" * 32}, "ProposalFailedToValidate"),
        ({"node_id": PENDING_NODE, "validity_period_days": 9999}, "ProposalFailedToValidate"),
        ({"node_id": PENDING_NODE, "valid_from": "tomorrow"}, "ProposalFailedToValidate"),
        ({"node_id": PENDING_NODE, "validity_period_days": "30"}, "InvalidActionArgs"),
        ({"node": PENDING_NODE}, "InvalidActionArgs"),
    ],
)
def test_transition_node_to_trusted_bad_args_are_refused(
    net: Network, args: dict[str, Any], code: str
) -> None:
    add_pending_node(net)
    assert refused_at_creation(net, "transition_node_to_trusted", args).code == code


def test_remove_node_deletes_pending_and_retires_trusted(net: Network) -> None:
    add_pending_node(net)
    accepted(net, "remove_node", {"node_id": PENDING_NODE})
    assert t.node_info(net.store.begin(), PENDING_NODE) is None
    add_pending_node(net)
    accepted(net, "transition_node_to_trusted", {"node_id": PENDING_NODE})
    result = accepted(net, "remove_node", {"node_id": net.node_id})
    assert result.effects.retired_nodes == (net.node_id,)
    info = t.node_info(net.store.begin(), net.node_id)
    assert info is not None and info["status"] == "Retired" and info["retired_committed"] is False


def test_last_trusted_node_cannot_be_removed(net: Network) -> None:
    err = refused_at_creation(net, "remove_node", {"node_id": net.node_id})
    assert err.code == "ProposalFailedToValidate"


def test_node_measurements_are_added_and_removed(net: Network) -> None:
    measurement = "ab" * 32
    accepted(net, "add_node_measurement", {"measurement": measurement})
    tx = net.store.begin()
    assert tx.get(t.NODES_VIRTUAL_MEASUREMENTS, measurement.encode()) == b'"AllowedToJoin"'
    assert queries.join_policy(tx)["virtual"]["measurements"] == [measurement]
    accepted(net, "remove_node_measurement", {"measurement": measurement})
    assert queries.join_policy(net.store.begin())["virtual"]["measurements"] == []


def test_ccf_virtual_measurement_names_change_the_same_table_as_charters_aliases(
    net: Network,
) -> None:
    measurement = "cd" * 32
    accepted(net, "add_virtual_measurement", {"measurement": measurement})
    assert queries.join_policy(net.store.begin())["virtual"]["measurements"] == [measurement]
    accepted(net, "remove_node_measurement", {"measurement": measurement})
    assert queries.join_policy(net.store.begin())["virtual"]["measurements"] == []


def test_the_governed_snp_policy_admits_the_real_milan_report_and_nothing_less(
    net: Network,
) -> None:
    report = bytes.fromhex((SNP / "milan" / "report.hex").read_text().strip())
    endorsements = snp.Endorsements.from_bytes((SNP / "milan" / "vcek.der").read_bytes())
    measurement, host_data = report[0x90:0xC0].hex(), report[0xC0:0xE0].hex()

    def verify() -> str:
        policy = queries.snp_join_policy(net.store.begin())
        try:
            snp.verify_report(report, endorsements, report_data=report[0x50:0x90], policy=policy)
        except snp.SnpError as error:
            return error.check
        return "accepted"

    assert verify() == "measurement"  # nothing governed yet
    accepted(net, "add_snp_measurement", {"measurement": measurement})
    assert verify() == "host_data"
    accepted(net, "add_snp_host_data", {"host_data": host_data})
    assert verify() == "accepted"
    # The report's TCB is 7308000000000003 on a Milan (CPUID 00a00f11): ask for snp 9.
    accepted(
        net,
        "set_snp_minimum_tcb_version_hex",
        {"cpuid": "00a00f11", "tcb_version": "7309000000000003"},
    )
    assert verify() == "minimum_tcb"
    policy = queries.join_policy(net.store.begin())["snp"]
    assert policy["tcbVersions"]["00a00f11"] == {
        "boot_loader": 3,
        "tee": 0,
        "snp": 9,
        "microcode": 0x73,
        "hexstring": "7309000000000003",
    }
    accepted(net, "remove_snp_minimum_tcb_version", {"cpuid": "00a00f11"})
    assert verify() == "accepted"
    accepted(net, "remove_snp_host_data", {"host_data": host_data})
    assert verify() == "host_data"
    accepted(net, "remove_snp_measurement", {"measurement": measurement})
    assert queries.join_policy(net.store.begin())["snp"]["measurements"] == []


def test_snp_host_data_with_a_security_policy_must_be_its_digest(net: Network) -> None:
    policy_text = "package policy\nallow := true"
    digest = hashlib.sha256(policy_text.encode()).hexdigest()
    accepted(net, "add_snp_host_data", {"host_data": digest, "security_policy": policy_text})
    assert queries.join_policy(net.store.begin())["snp"]["hostData"] == {digest: policy_text}
    err = refused_at_creation(
        net, "add_snp_host_data", {"host_data": "00" * 32, "security_policy": policy_text}
    )
    assert err.code == "ProposalFailedToValidate"


@pytest.mark.parametrize(
    ("name", "args", "code"),
    [
        ("add_snp_measurement", {"measurement": "ab" * 32}, "InvalidActionArgs"),
        ("remove_snp_measurement", {"measurement": "ab" * 48}, "ProposalFailedToValidate"),
        ("add_snp_host_data", {"host_data": "ab"}, "InvalidActionArgs"),
        ("remove_snp_host_data", {"host_data": "ab" * 32}, "ProposalFailedToValidate"),
        (
            "set_snp_minimum_tcb_version_hex",
            {"cpuid": "00830f10", "tcb_version": "00" * 8},
            "ProposalFailedToValidate",
        ),
        (
            "set_snp_minimum_tcb_version_hex",
            {"cpuid": "00a00f11", "tcb_version": "00"},
            "InvalidActionArgs",
        ),
        ("remove_snp_minimum_tcb_version", {"cpuid": "00a00f11"}, "ProposalFailedToValidate"),
    ],
)
def test_snp_policy_bad_args_are_refused(
    net: Network, name: str, args: dict[str, Any], code: str
) -> None:
    assert refused_at_creation(net, name, args).code == code


@pytest.mark.parametrize(
    ("name", "args", "code"),
    [
        ("add_node_measurement", {"measurement": "XYZ"}, "InvalidActionArgs"),
        ("add_node_measurement", {"measurement": "abc"}, "InvalidActionArgs"),
        ("remove_node_measurement", {"measurement": "abcd"}, "ProposalFailedToValidate"),
    ],
)
def test_measurement_bad_args_are_refused(
    net: Network, name: str, args: dict[str, Any], code: str
) -> None:
    assert refused_at_creation(net, name, args).code == code


def test_service_cannot_be_opened_twice(net: Network) -> None:
    result = accepted(
        net, "transition_service_to_open", {"next_service_identity": net.service_cert_pem}
    )
    assert result.effects.open_service
    err = refused_at_creation(net, "transition_service_to_open", {})
    assert err.code == "ProposalFailedToValidate"


def test_open_with_a_foreign_service_identity_is_refused(net: Network) -> None:
    other = certs.cert_pem(certs.service_cert(certs.new_key()))
    err = refused_at_creation(net, "transition_service_to_open", {"next_service_identity": other})
    assert err.code == "ProposalFailedToValidate"


def test_set_constitution_replaces_the_rules(net: Network) -> None:
    doc = {"default": {"approvals": 1}}
    accepted(net, "set_constitution", {"constitution": doc})
    stored = queries.constitution(net.store.begin())
    assert stored["default"]["approvals"] == 1
    first = net.members[0]
    change = [{"name": "set_member_data", "args": {"member_id": first.id, "member_data": 1}}]
    pid = net.propose(first, change).json["proposalId"]
    assert net.vote(first, pid).json["proposalState"] == "Accepted"  # one approval is enough


def test_set_constitution_with_a_bad_document_is_refused(net: Network) -> None:
    err = refused_at_creation(
        net, "set_constitution", {"constitution": {"default": {"approvals": -1}}}
    )
    assert err.code == "InvalidConstitution"


def test_set_recovery_threshold_updates_service_config(net: Network) -> None:
    for name in ("r1", "r2", "r3"):
        accepted(
            net, "set_member", {"cert": member(name).cert_pem, "encryption_pub_key": rsa_pem()}
        )
    result = accepted(net, "set_recovery_threshold", {"recovery_threshold": 3})
    assert result.effects.refresh_recovery_shares
    assert t.service_config(net.store.begin())["recovery_threshold"] == 3


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ({"recovery_threshold": 0}, "ProposalFailedToValidate"),
        ({"recovery_threshold": 255}, "ProposalFailedToValidate"),
        ({"recovery_threshold": 2.0}, "InvalidActionArgs"),
        ({}, "InvalidActionArgs"),
    ],
)
def test_set_recovery_threshold_bad_args_are_refused(
    net: Network, args: dict[str, Any], code: str
) -> None:
    assert refused_at_creation(net, "set_recovery_threshold", args).code == code


def test_recovery_threshold_cannot_exceed_the_recovery_members(net: Network) -> None:
    accepted(net, "set_member", {"cert": member("r1").cert_pem, "encryption_pub_key": rsa_pem()})
    err = refused_at_creation(net, "set_recovery_threshold", {"recovery_threshold": 2})
    assert err.code == "ProposalFailedToValidate"


def test_once_open_the_threshold_counts_only_active_recovery_members(net: Network) -> None:
    """As CCF: an Accepted member that has not acked holds no share, so it does not count
    once the service is open (while opening it does: it may still ack)."""
    accepted(net, "set_member", {"cert": member("r1").cert_pem, "encryption_pub_key": rsa_pem()})
    accepted(net, "set_recovery_threshold", {"recovery_threshold": 1})
    accepted(net, "transition_service_to_open", {})
    err = refused_at_creation(net, "set_recovery_threshold", {"recovery_threshold": 1})
    assert err.code == "ProposalFailedToValidate"
    assert "0 active recovery members" in err.message


def test_a_recovery_member_cannot_be_removed_below_the_threshold(net: Network) -> None:
    result = accepted(
        net, "set_member", {"cert": member("r1").cert_pem, "encryption_pub_key": rsa_pem()}
    )
    assert not result.effects.refresh_recovery_shares  # Accepted: not a share holder yet
    r1 = member("r1")
    tx = net.store.begin()
    info = t.member_info(tx, r1.id)
    assert info is not None
    info["status"] = "Active"
    t.put_json(tx, t.MEMBERS_INFO, t.id_key(r1.id), info)
    net.store.commit(tx, net.store.version + 1)
    err = refused_at_creation(net, "remove_member", {"member_id": r1.id})
    assert err.code == "ProposalFailedToValidate"
    assert "below the recovery threshold 1" in err.message


def test_trigger_ledger_rekey_asks_the_runtime_to_rekey_once_open(net: Network) -> None:
    err = refused_at_creation(net, "trigger_ledger_rekey", {})
    assert err.code == "ProposalFailedToValidate"
    accepted(net, "transition_service_to_open", {})
    result = accepted(net, "trigger_ledger_rekey", {})
    assert result.effects.rekey
    assert (
        refused_at_creation(net, "trigger_ledger_rekey", {"now": True}).code == "InvalidActionArgs"
    )


@pytest.mark.parametrize(
    ("action", "effect", "key"),
    [
        ("trigger_snapshot", "trigger_snapshot", b"snapshot"),
        ("trigger_ledger_chunk", "trigger_ledger_chunk", b"ledger_chunk"),
    ],
)
def test_file_triggers_ask_every_node_for_a_snapshot_or_a_chunk_boundary(
    net: Network, action: str, effect: str, key: bytes
) -> None:
    result = accepted(net, action, {})
    assert getattr(result.effects, effect)
    recorded = net.store.begin().get(t.FILE_TRIGGERS, key)
    assert recorded is not None
    assert json.loads(recorded) == {"proposal_id": result.json["proposalId"]}
    assert refused_at_creation(net, action, {"now": True}).code == "InvalidActionArgs"


def test_set_service_configuration_merges_settings(net: Network) -> None:
    accepted(
        net,
        "set_service_configuration",
        {"recent_cose_proposals_window_size": 5, "maximum_node_certificate_validity_days": 10},
    )
    config = t.service_config(net.store.begin())
    assert config["recent_cose_proposals_window_size"] == 5
    assert config["maximum_node_certificate_validity_days"] == 10
    assert config["reconfiguration_type"] == "OneTransaction"
    info = queries.service_info(net.store.begin())
    assert info["configuration"]["recentCoseProposalsWindowSize"] == 5


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ({}, "ProposalFailedToValidate"),
        ({"recent_cose_proposals_window_size": 0}, "ProposalFailedToValidate"),
        ({"reconfiguration_type": "Sometimes"}, "InvalidActionArgs"),
        ({"colour": "blue"}, "InvalidActionArgs"),
    ],
)
def test_set_service_configuration_bad_args_are_refused(
    net: Network, args: dict[str, Any], code: str
) -> None:
    assert refused_at_creation(net, "set_service_configuration", args).code == code


def test_recent_proposals_window_is_bounded_by_the_configured_size(net: Network) -> None:
    accepted(net, "set_service_configuration", {"recent_cose_proposals_window_size": 3})
    first = net.members[0]
    for i in range(6):
        change = [{"name": "set_member_data", "args": {"member_id": first.id, "member_data": i}}]
        net.propose(first, change, created_at=net.now_s + i)
    assert len(list(net.store.begin().items(t.COSE_RECENT_PROPOSALS))) == 3


def test_failing_apply_marks_the_proposal_failed_and_changes_nothing_else(net: Network) -> None:
    user = member("user-b")
    accepted(net, "set_user", {"cert": user.cert_pem})
    # Both actions validate against the current state, but the second cannot apply after
    # the first: the proposal must fail as a whole.
    twice = [{"name": "remove_user", "args": {"user_id": user.id}}] * 2
    result = net.pass_proposal(twice)
    assert result.json["proposalState"] == "Failed"
    assert "does not exist" in result.json["failure"]["reason"]
    assert result.effects.empty
    assert queries.user(net.store.begin(), user.id)["userId"] == user.id


def test_parse_action_reports_unknown_and_malformed(net: Network) -> None:
    with pytest.raises(GovernanceError) as unknown:
        parse_action("nope", {})
    assert unknown.value.code == "UnknownAction"
    with pytest.raises(GovernanceError) as bad:
        parse_action("remove_user", {"user_id": 1})
    assert bad.value.code == "InvalidActionArgs"
    assert proposals.list_proposals(net.store.begin()).proposals == []
