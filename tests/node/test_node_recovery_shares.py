"""Recovery shares on an in-process node driven through its /gov endpoints, as members do:
when shares are issued and re-issued, that k of them give back exactly the node's ledger
secrets and k-1 do not, and how the share endpoints refuse what they must."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from charter.enclave_app import interface as itf
from charter.enclave_app import node_endpoints
from charter.enclave_app.app import HttpResponse
from charter.enclave_app.errors import HttpError
from charter.enclave_app.node import Node
from charter.enclave_app.node.shares import OAEP, RecoveryShareError, recover_ledger_secrets
from charter.enclave_app.platform import VirtualPlatform
from charter.enclave_app.startup import include_governance, initial_members, load_app
from charter.governance import tables as gt
from charter.ledger import certs, cose
from charter.ledger.service_state import RECOVERY_SHARES, SINGLETON_KEY

API = "api-version=2024-07-01"


@dataclass
class Member:
    key: Any
    cert_pem: str
    enc_key: rsa.RSAPrivateKey

    @classmethod
    def make(cls, name: str) -> Member:
        key = certs.new_key()
        return cls(
            key, certs.cert_pem(certs.identity_cert(key, name)), certs.new_rsa_encryption_key()
        )

    @property
    def id(self) -> str:
        return certs.cert_id(self.cert_pem)

    @property
    def enc_pub_pem(self) -> str:
        return certs.public_key_pem(self.enc_key.public_key())

    def sign(
        self, msg_type: str, payload: Any, now_s: int, proposal_id: str | None = None
    ) -> bytes:
        protected: dict[Any, Any] = {cose.HEADER_KID: self.id.encode(), cose.GOV_MSG_TYPE: msg_type}
        if proposal_id is not None:
            protected[cose.GOV_MSG_PROPOSAL_ID] = proposal_id
        protected[cose.GOV_MSG_CREATED_AT] = now_s
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return cose.sign1(self.key, protected, body)


def _node(config: itf.NodeConfig, tmp: Path) -> Node:
    node = Node(config, VirtualPlatform(tmp), load_app(config.app))
    node.routes.include(node_endpoints.build(node))
    include_governance(node)
    return node


class Service:
    def __init__(self, tmp: Path, members: list[Member], threshold: int) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        entries = []
        for i, m in enumerate(members):
            cert, enc = tmp / f"m{i}_cert.pem", tmp / f"m{i}_enc_pubk.pem"
            cert.write_text(m.cert_pem)
            enc.write_text(m.enc_pub_pem)
            entries.append({"cert": str(cert), "encryption_key": str(enc)})
        config = itf.NodeConfig.model_validate(
            {
                "workspace": str(tmp),
                "start": {
                    "mode": "start",
                    "members": entries,
                    "service_config": {"recovery_threshold": threshold},
                },
            }
        )
        self.node = _node(config, tmp)
        self.ledger: dict[int, bytes] = {}
        self.node.start_new_network(initial_members(config), None)
        self.members = list(members)
        self.settle()

    @classmethod
    def recovering(cls, tmp: Path, old: Service) -> Service:
        """A real recovering node (start mode `recover`) on a copy of `old`'s ledger, as
        `charter recovery start` lays one out: public replay done, new identity, waiting
        for the members to open it."""
        tmp.mkdir(parents=True, exist_ok=True)
        info = gt.service_info(old.node.store.begin())
        assert info is not None
        previous = tmp / "previous_service_cert.pem"
        previous.write_text(info["cert"])
        config = itf.NodeConfig.model_validate(
            {
                "workspace": str(tmp),
                "start": {"mode": "recover", "previous_service_identity": str(previous)},
            }
        )
        svc = cls.__new__(cls)
        svc.node = _node(config, tmp)
        svc.members = list(old.members)
        svc.ledger = dict(old.ledger)
        svc.node.start_recovery(info["cert"])
        for seqno in sorted(old.ledger):
            svc.node.replay_public(old.ledger[seqno])
        svc.node.public_ledger_replayed()
        svc.settle()
        return svc

    def settle(self) -> None:
        node = self.node
        node.settle()
        while node.outbox:
            frames, node.outbox = node.outbox, []
            for frame in frames:
                if isinstance(frame, itf.WriteEntries):
                    self.ledger.update(frame.entries)
                    node.durable(max(s for s, _ in frame.entries))
                elif isinstance(frame, itf.Truncate):
                    for seqno in [s for s in self.ledger if s > frame.seqno]:
                        del self.ledger[seqno]

    def post(self, path: str, body: bytes) -> HttpResponse:
        headers = {"content-type": "application/cose"}
        response = self.node.handle("POST", path, API, headers, body, None)
        assert isinstance(response, HttpResponse)
        self.settle()
        return response

    def get(self, path: str) -> HttpResponse:
        response = self.node.handle("GET", path, API, {}, b"", None)
        assert isinstance(response, HttpResponse)
        return response

    def ack(self, m: Member) -> None:
        now = self.node.now_s()
        base = f"/gov/members/state-digests/{m.id}"
        updated = self.post(f"{base}:update", m.sign("state_digest", b"", now))
        assert updated.status == 200, updated.body
        digest = json.loads(updated.body)["stateDigest"]
        acked = self.post(f"{base}:ack", m.sign("ack", {"stateDigest": digest}, now))
        assert acked.status in (200, 204), acked.body

    def passed(self, actions: list[dict[str, Any]]) -> None:
        active = [m for m in self.members if m.id in gt.active_member_ids(self.node.store.begin())]
        now = self.node.now_s()
        created = self.post(
            "/gov/members/proposals:create", active[0].sign("proposal", {"actions": actions}, now)
        )
        assert created.status == 200, created.body
        doc = json.loads(created.body)
        proposal_id = doc["proposalId"]
        for m in active:
            if doc["proposalState"] != "Open":
                break
            path = f"/gov/members/proposals/{proposal_id}/ballots/{m.id}:submit"
            body = m.sign("ballot", {"ballot": "approve"}, now, proposal_id)
            voted = self.post(path, body)
            assert voted.status == 200, voted.body
            doc = json.loads(voted.body)
        assert doc["proposalState"] == "Accepted", doc

    def encrypted_share(self, m: Member) -> HttpResponse:
        return self.get(f"/gov/recovery/encrypted-shares/{m.id}")

    def share(self, m: Member) -> bytes:
        response = self.encrypted_share(m)
        assert response.status == 200, response.body
        doc = json.loads(response.body)
        assert doc["memberId"] == m.id
        return m.enc_key.decrypt(base64.b64decode(doc["encryptedShare"]), OAEP)

    def secrets(self) -> list[tuple[int, bytes]]:
        assert self.node.identity is not None
        return list(self.node.identity.ledger_secrets)

    def recover(self, shares: dict[str, bytes]) -> list[tuple[int, bytes]]:
        return recover_ledger_secrets(self.node.store.begin(), shares)


def _code(exc: pytest.ExceptionInfo[RecoveryShareError]) -> str:
    return exc.value.code


def test_shares_are_issued_once_enough_recovery_members_are_active(tmp_path: Path) -> None:
    members = [Member.make(f"m{i}") for i in range(3)]
    svc = Service(tmp_path, members, threshold=2)
    assert svc.node.store.begin().get(RECOVERY_SHARES, SINGLETON_KEY) is None
    svc.ack(members[0])
    # One active recovery member cannot hold a 2-of-n split: nothing issued yet.
    assert svc.encrypted_share(members[0]).status == 404
    svc.ack(members[1])
    assert svc.encrypted_share(members[2]).status == 404  # not active yet
    two = {m.id: svc.share(m) for m in members[:2]}
    assert svc.recover(two) == svc.secrets()
    svc.ack(members[2])
    # Re-issued for three: the old shares are not today's any more.
    with pytest.raises(RecoveryShareError) as err:
        svc.recover(two)
    assert _code(err) == "InvalidRecoveryShare"
    shares = {m.id: svc.share(m) for m in members}
    for pair in ((0, 1), (0, 2), (1, 2)):
        chosen = {members[i].id: shares[members[i].id] for i in pair}
        assert svc.recover(chosen) == svc.secrets()
    with pytest.raises(RecoveryShareError) as err:
        svc.recover({members[0].id: shares[members[0].id]})
    assert _code(err) == "NotEnoughRecoveryShares"


def test_k_shares_unlock_every_secret_after_rekeys_and_k_minus_1_do_not(tmp_path: Path) -> None:
    members = [Member.make(f"m{i}") for i in range(3)]
    svc = Service(tmp_path, members, threshold=2)
    for m in members:
        svc.ack(m)
    svc.passed([{"name": "transition_service_to_open", "args": {}}])
    svc.passed([{"name": "trigger_ledger_rekey", "args": {}}])
    svc.passed([{"name": "trigger_ledger_rekey", "args": {}}])
    secrets = svc.secrets()
    assert len(secrets) == 3 and secrets[0][0] == 1
    shares = {m.id: svc.share(m) for m in members}
    assert svc.recover({k: shares[k] for k in list(shares)[1:]}) == secrets
    with pytest.raises(RecoveryShareError) as err:
        svc.recover({members[2].id: shares[members[2].id]})
    assert _code(err) == "NotEnoughRecoveryShares"
    tampered = bytearray(shares[members[0].id])
    tampered[-1] ^= 1
    with pytest.raises(RecoveryShareError) as err:
        svc.recover({members[0].id: bytes(tampered), members[1].id: shares[members[1].id]})
    assert _code(err) == "InvalidRecoveryShare"
    outsider = Member.make("outsider")
    with pytest.raises(RecoveryShareError) as err:
        svc.recover({outsider.id: shares[members[0].id], members[1].id: shares[members[1].id]})
    assert _code(err) == "NotRecoveryMember"


def test_a_removed_member_cannot_help_and_a_member_added_later_can(tmp_path: Path) -> None:
    members = [Member.make(f"m{i}") for i in range(3)]
    svc = Service(tmp_path, members, threshold=2)
    for m in members:
        svc.ack(m)
    svc.passed([{"name": "transition_service_to_open", "args": {}}])
    removed = members[2]
    old_share = svc.share(removed)
    before = svc.secrets()
    svc.passed([{"name": "remove_member", "args": {"member_id": removed.id}}])
    svc.members.remove(removed)
    # Removing an active recovery member rotates the ledger secret, and re-issues shares.
    assert len(svc.secrets()) == len(before) + 1
    assert svc.encrypted_share(removed).status == 404
    with pytest.raises(RecoveryShareError) as err:
        svc.recover({removed.id: old_share, members[0].id: svc.share(members[0])})
    assert _code(err) == "NotRecoveryMember"

    late = Member.make("late")
    svc.passed(
        [
            {
                "name": "set_member",
                "args": {"cert": late.cert_pem, "encryption_pub_key": late.enc_pub_pem},
            }
        ]
    )
    svc.members.append(late)
    assert svc.encrypted_share(late).status == 404  # Accepted: no share before it acks
    svc.ack(late)
    assert svc.recover({late.id: svc.share(late), members[1].id: svc.share(members[1])}) == (
        svc.secrets()
    )


def test_raising_the_threshold_reissues_shares_that_need_more_members(tmp_path: Path) -> None:
    members = [Member.make(f"m{i}") for i in range(3)]
    svc = Service(tmp_path, members, threshold=1)
    for m in members:
        svc.ack(m)
    svc.passed([{"name": "transition_service_to_open", "args": {}}])
    assert svc.recover({members[0].id: svc.share(members[0])}) == svc.secrets()
    svc.passed([{"name": "set_recovery_threshold", "args": {"recovery_threshold": 3}}])
    shares = {m.id: svc.share(m) for m in members}
    with pytest.raises(RecoveryShareError) as err:
        svc.recover(dict(list(shares.items())[:2]))
    assert _code(err) == "NotEnoughRecoveryShares"
    assert svc.recover(shares) == svc.secrets()
    svc.passed([{"name": "trigger_recovery_shares_refresh", "args": {}}])
    with pytest.raises(RecoveryShareError) as err:
        svc.recover(shares)  # refreshed: yesterday's shares are not today's
    assert _code(err) == "InvalidRecoveryShare"
    assert svc.recover({m.id: svc.share(m) for m in members}) == svc.secrets()


def _submit(svc: Service, m: Member, share: bytes, *, signer: Member | None = None) -> HttpResponse:
    body = (signer or m).sign(
        "recovery_share", {"share": base64.b64encode(share).decode()}, svc.node.now_s()
    )
    return svc.post(f"/gov/recovery/members/{m.id}:recover", body)


def _error(response: HttpResponse) -> str:
    return str(json.loads(response.body)["error"]["code"])


def _write(svc: Service, key: bytes, value: bytes) -> None:
    tx = svc.node.store.begin()
    tx.put("records", key, value)
    svc.node.commit_tx(tx)
    svc.node.emit_signature()
    svc.settle()


def _open_recovered(svc: Service, old: Service) -> None:
    old_info = gt.service_info(old.node.store.begin())
    new_info = gt.service_info(svc.node.store.begin())
    assert old_info is not None and new_info is not None
    args = {
        "previous_service_identity": old_info["cert"],
        "next_service_identity": new_info["cert"],
    }
    svc.passed([{"name": "transition_service_to_open", "args": args}])


def test_share_submissions_are_refused_each_with_its_own_code(tmp_path: Path) -> None:
    members = [Member.make(f"m{i}") for i in range(3)]
    old = Service(tmp_path / "old", members, threshold=2)
    for m in members:
        old.ack(m)
    old.passed([{"name": "transition_service_to_open", "args": {}}])
    _write(old, b"before", b"private before the rekey")
    old.passed([{"name": "trigger_ledger_rekey", "args": {}}])
    _write(old, b"after", b"private after the rekey")
    old_secrets = old.secrets()

    svc = Service.recovering(tmp_path / "new", old)
    assert json.loads(svc.get("/node/state").body)["state"] == "PartOfPublicNetwork"
    shares = {m.id: svc.share(m) for m in members}  # the old service's, replayed
    first = members[0]

    refused = _submit(svc, first, shares[first.id])
    assert (refused.status, _error(refused)) == (403, "ServiceNotWaitingForRecoveryShares")
    _open_recovered(svc, old)
    status = json.loads(svc.get("/gov/recovery/status").body)
    assert status["serviceStatus"] == "WaitingForRecoveryShares"

    outsider = Member.make("outsider")
    refused = _submit(svc, outsider, shares[first.id])
    assert (refused.status, _error(refused)) == (401, "UnknownMember")
    refused = _submit(svc, first, shares[first.id], signer=members[1])
    assert (refused.status, _error(refused)) == (400, "InvalidResourceName")
    tampered = bytearray(shares[first.id])
    tampered[5] ^= 0x40
    refused = _submit(svc, first, bytes(tampered))
    assert (refused.status, _error(refused)) == (400, "InvalidRecoveryShare")
    refused = _submit(svc, first, shares[members[1].id])  # another member's share
    assert (refused.status, _error(refused)) == (400, "InvalidRecoveryShare")
    assert json.loads(svc.get("/gov/recovery/status").body)["submittedCount"] == 0

    body = first.sign(
        "recovery_share", {"share": base64.b64encode(shares[first.id]).decode()}, svc.node.now_s()
    )
    accepted = svc.post(f"/gov/recovery/members/{first.id}:recover", body)
    assert accepted.status == 200, accepted.body
    doc = json.loads(accepted.body)
    assert (doc["submittedCount"], doc["recoveryThreshold"]) == (1, 2)
    assert doc["message"] == "1/2 recovery shares successfully submitted"
    replayed = svc.post(f"/gov/recovery/members/{first.id}:recover", body)
    assert (replayed.status, _error(replayed)) == (400, "RequestReplay")

    status = json.loads(svc.get("/gov/recovery/status").body)
    assert status["submittedMembers"] == [first.id]
    assert (status["stillNeeded"], status["recoveryThreshold"]) == (1, 2)
    assert sorted(status["recoveryMembers"]) == sorted(m.id for m in members)
    assert json.loads(svc.get("/node/state").body)["state"] == "PartOfPublicNetwork"
    # The stored share is not the share in clear, and the recovering node's own fresh
    # secret (from the seqno the new service starts at) is what it is stored under.
    stored = list(svc.node.store.begin().items("public:ccf.internal.encrypted_submitted_shares"))
    assert len(stored) == 1 and shares[first.id] not in stored[0][1]
    recovery = svc.node.recovery
    assert recovery is not None and recovery.recovery_target_seqno is not None
    assert svc.secrets() == [(recovery.recovery_target_seqno + 1, svc.node.share_storage_key())]

    # The k-th share: the old secrets come back, the private ledger is replayed, and the
    # service opens with every private value back.
    second = members[1]
    done = _submit(svc, second, shares[second.id])
    assert done.status == 200, done.body
    assert json.loads(done.body)["message"].endswith("End of recovery procedure initiated")
    assert json.loads(svc.get("/node/state").body)["state"] == "PartOfNetwork"
    tx = svc.node.store.begin()
    assert tx.get("records", b"before") == b"private before the rekey"
    assert tx.get("records", b"after") == b"private after the rekey"
    assert svc.secrets()[:-1] == old_secrets
    status = json.loads(svc.get("/gov/recovery/status").body)
    assert (status["serviceStatus"], status["submittedCount"]) == ("Open", 0)
    # Shares were issued for the fresh secret, and they walk the chain back to seqno 1.
    assert svc.recover({m.id: svc.share(m) for m in members[1:]}) == svc.secrets()
    refused = _submit(svc, members[2], shares[members[2].id])
    assert (refused.status, _error(refused)) == (403, "ServiceNotWaitingForRecoveryShares")


def test_secrets_that_do_not_decrypt_the_copy_are_refused_and_change_nothing(
    tmp_path: Path,
) -> None:
    """What the k-th share hands over goes through the real private replay: secrets that
    do not decrypt the ledger copy get 409 RecoveryLedgerMismatch, the node stays where it
    was (PartOfPublicNetwork, service WaitingForRecoveryShares), and the right ones then
    still recover it."""
    members = [Member.make(f"m{i}") for i in range(2)]
    old = Service(tmp_path / "old", members, threshold=1)
    for m in members:
        old.ack(m)
    old.passed([{"name": "transition_service_to_open", "args": {}}])
    _write(old, b"k", b"private value")
    svc = Service.recovering(tmp_path / "new", old)
    _open_recovered(svc, old)
    version = svc.node.store.version
    with pytest.raises(HttpError) as refused:
        svc.node.on_recovery_shares_complete([(1, bytes(32))])
    assert (refused.value.status, refused.value.code) == (409, "RecoveryLedgerMismatch")
    assert json.loads(svc.get("/node/state").body)["state"] == "PartOfPublicNetwork"
    assert svc.node.store.version == version
    assert gt.service_info(svc.node.store.begin())["status"] == "WaitingForRecoveryShares"  # type: ignore[index]
    assert svc.node.store.begin().get("records", b"k") is None
    done = _submit(svc, members[0], svc.share(members[0]))
    assert done.status == 200, done.body
    assert svc.node.store.begin().get("records", b"k") == b"private value"


def test_a_threshold_set_while_recovering_applies_to_the_next_shares_not_these(
    tmp_path: Path,
) -> None:
    """The members' shares are the old service's, split 2-of-3: lowering the threshold
    while recovering neither re-issues them (which would lose the old secrets) nor lets one
    share do; the recovered service's new shares are split with the new threshold."""
    members = [Member.make(f"m{i}") for i in range(3)]
    old = Service(tmp_path / "old", members, threshold=2)
    for m in members:
        old.ack(m)
    old.passed([{"name": "transition_service_to_open", "args": {}}])
    _write(old, b"k", b"private value")
    svc = Service.recovering(tmp_path / "new", old)
    shares = {m.id: svc.share(m) for m in members}
    svc.passed([{"name": "set_recovery_threshold", "args": {"recovery_threshold": 1}}])
    assert {m.id: svc.share(m) for m in members} == shares  # not re-issued
    _open_recovered(svc, old)
    status = json.loads(svc.get("/gov/recovery/status").body)
    assert (status["recoveryThreshold"], status["stillNeeded"]) == (2, 2)
    one = _submit(svc, members[0], shares[members[0].id])
    assert one.status == 200 and json.loads(one.body)["submittedCount"] == 1, one.body
    assert json.loads(svc.get("/node/state").body)["state"] == "PartOfPublicNetwork"
    two = _submit(svc, members[2], shares[members[2].id])
    assert two.status == 200, two.body
    assert svc.node.store.begin().get("records", b"k") == b"private value"
    assert svc.recover({members[1].id: svc.share(members[1])}) == svc.secrets()


def test_a_rolled_back_rekey_takes_its_secret_with_it(tmp_path: Path) -> None:
    """A view change can roll back the rekey's entry before it commits: the secret it
    installed goes with it (and the sealed state follows), so the entries that replace it
    are encrypted, and read back, with the secret that was current before."""
    only = Member.make("m0")
    svc = Service(tmp_path, [only], threshold=1)
    svc.ack(only)
    svc.passed([{"name": "transition_service_to_open", "args": {}}])
    before = svc.secrets()
    now = svc.node.now_s()
    rekey = {"actions": [{"name": "trigger_ledger_rekey", "args": {}}]}
    created = svc.post("/gov/members/proposals:create", only.sign("proposal", rekey, now))
    proposal_id = json.loads(created.body)["proposalId"]
    version = svc.node.store.version
    ballot = only.sign("ballot", {"ballot": "approve"}, now, proposal_id)
    response = svc.node.handle(
        "POST",
        f"/gov/members/proposals/{proposal_id}/ballots/{only.id}:submit",
        API,
        {"content-type": "application/cose"},
        ballot,
        None,
    )
    assert isinstance(response, HttpResponse) and response.status == 200, response
    assert json.loads(response.body)["proposalState"] == "Accepted"
    assert len(svc.secrets()) == len(before) + 1
    assert svc.secrets()[-1][0] == version + 2  # from the seqno after the rekey's
    svc.node.outbox.clear()
    svc.node.store.rollback(version)  # what Raft's truncation does to an uncommitted entry
    assert svc.secrets() == before
    assert any(isinstance(f, itf.StoreSealed) for f in svc.node.outbox), "not sealed again"
