"""Shared helpers for the governance tests: real keys, real COSE envelopes, a real Store.

Nothing here is a fake: members sign with `charter.ledger.cose.sign1` (byte-compatible with CCF's
`ccf_cose_sign1`), and state lives in `enclave_app.kv.Store`, committed one transaction per
request exactly as the runtime does (a refused request's transaction is dropped).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from charter.enclave_app.kv import Store
from charter.governance import handlers
from charter.governance.errors import GovernanceError
from charter.governance.genesis import InitialMember, bootstrap
from charter.governance.handlers import GovResult
from charter.ledger import certs, cose

# The service's clock in these tests. The identities below are real certificates made when
# first used (valid from a minute before that for a year), and governance checks that a
# user's certificate is valid at the service's time. A clock a day ahead of import is inside
# the validity of every certificate made during a test run of up to a day.
NOW_S = int(time.time()) + 24 * 3600


@lru_cache(maxsize=32)
def _identity(name: str) -> tuple[Any, str]:
    # Keys are slow-ish to make; tests reuse them by name (each test still has its own store).
    key = certs.new_key()
    return key, certs.cert_pem(certs.identity_cert(key, name))


@dataclass(frozen=True)
class Member:
    name: str
    key: Any
    cert_pem: str

    @property
    def id(self) -> str:
        return certs.cert_id(self.cert_pem)

    def sign(
        self,
        msg_type: str,
        payload: bytes | dict[str, Any] | None,
        *,
        created_at: int = NOW_S,
        proposal_id: str | None = None,
    ) -> bytes:
        if isinstance(payload, dict):
            payload = json.dumps(payload).encode()
        protected: dict[Any, Any] = {
            cose.HEADER_KID: self.id.encode(),
            cose.GOV_MSG_TYPE: msg_type,
        }
        if proposal_id is not None:
            protected[cose.GOV_MSG_PROPOSAL_ID] = proposal_id
        protected[cose.GOV_MSG_CREATED_AT] = created_at
        return cose.sign1(self.key, protected, payload or b"")


def member(name: str) -> Member:
    key, pem = _identity(name)
    return Member(name, key, pem)


def state_of(store: Store) -> dict[str, dict[bytes, bytes]]:
    """Every map's full contents: compared before/after to show a refusal changed nothing."""
    tx = store.begin()
    return {name: dict(tx.items(name)) for name in store.map_names()}


@dataclass
class Network:
    store: Store = field(default_factory=Store)
    now_s: int = NOW_S
    members: list[Member] = field(default_factory=list)
    node_id: str = "ab" * 32
    service_cert_pem: str = ""

    @property
    def root(self) -> bytes:
        # Stands in for the Merkle root at the read version: distinct per version.
        return hashlib.sha256(b"root-%d" % self.store.version).digest()

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one request in its own transaction; commit it only if it succeeded."""
        tx = self.store.begin()
        result = fn(tx, *args, **kwargs)
        if tx.has_writes:
            self.store.commit(tx, self.store.version + 1)
        return result

    def refused(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> GovernanceError:
        """Run a request that must be refused; assert it changed nothing; return the error."""
        before = state_of(self.store)
        version = self.store.version
        tx = self.store.begin()
        try:
            fn(tx, *args, **kwargs)
        except GovernanceError as exc:
            # The runtime drops the transaction; the governance code also promises that it
            # wrote nothing before refusing, whatever the transaction layer does.
            assert not tx.has_writes, tx.write_set()
            assert self.store.version == version and state_of(self.store) == before
            return exc
        raise AssertionError("request was not refused")

    # ------------------------------------------------------------------ requests

    def propose(self, who: Member, actions: list[dict[str, Any]], **sign: Any) -> GovResult:
        sign.setdefault("created_at", self.now_s)
        envelope = who.sign("proposal", {"actions": actions}, **sign)
        result: GovResult = self.run(
            handlers.create_proposal, envelope, now_s=self.now_s, merkle_root=self.root
        )
        return result

    def vote(self, who: Member, proposal_id: str, ballot: str = "approve") -> GovResult:
        envelope = who.sign(
            "ballot", {"ballot": ballot}, proposal_id=proposal_id, created_at=self.now_s
        )
        result: GovResult = self.run(
            handlers.submit_ballot,
            envelope,
            proposal_id=proposal_id,
            member_id=who.id,
            now_s=self.now_s,
            merkle_root=self.root,
        )
        return result

    def activate(self, who: Member) -> None:
        update = who.sign("state_digest", b"", created_at=self.now_s)
        digest = self.run(
            handlers.update_state_digest,
            update,
            member_id=who.id,
            now_s=self.now_s,
            merkle_root=self.root,
        ).json["stateDigest"]
        ack = who.sign("ack", {"stateDigest": digest}, created_at=self.now_s)
        self.run(handlers.ack_state_digest, ack, member_id=who.id, now_s=self.now_s)

    def pass_proposal(self, actions: list[dict[str, Any]]) -> GovResult:
        """Propose with the first member and approve with as many as needed."""
        result = self.propose(self.members[0], actions)
        pid = result.json["proposalId"]
        for voter in self.members:
            if result.json["proposalState"] != "Open":
                break
            result = self.vote(voter, pid)
        return result


def start_network(names: tuple[str, ...] = ("m0", "m1", "m2"), *, activate: bool = True) -> Network:
    net = Network()
    net.members = [member(n) for n in names]
    service_key = _identity("service")[0]
    net.service_cert_pem = certs.cert_pem(certs.service_cert(service_key))
    tx = net.store.begin()
    bootstrap(
        tx,
        members=[InitialMember(cert=m.cert_pem) for m in net.members],
        service_cert_pem=net.service_cert_pem,
        node_id=net.node_id,
        node_info={"status": "Trusted", "node_data": None},
        create_txid="2.1",
    )
    net.store.commit(tx, 1)
    if activate:
        for m in net.members:
            net.activate(m)
            # Acks from different members in the same second are different envelopes, but
            # advance time anyway so created_at ordering is realistic.
            net.now_s += 1
    return net
