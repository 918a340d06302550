"""Member operations: COSE-signed governance requests (FORMATS §6).

    member = Member(client, "member0_cert.pem", "member0_privk.pem")
    p = await member.propose([{"name": "transition_service_to_open", "args": {}}])
    p = await member.vote(p.proposal_id, approve=True)

Each state-changing request is a COSE_Sign1 envelope signed by the member's key, with the
member id as `kid` and CCF's `ccf.gov.msg.*` headers, posted as `application/cose` with
`?api-version=2024-07-01`. The TLS connection itself need not carry the member's certificate:
the envelope is the authentication.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from charter.errors import IdentityError, InvalidInput, ProtocolError
from charter.governance.actions import parse_action
from charter.governance.errors import GovernanceError
from charter.identity import PEM_FILE_BYTES_MAX, Identity, TxId, read_bounded
from charter.ledger.cose import (
    GOV_MSG_CREATED_AT,
    GOV_MSG_PROPOSAL_ID,
    GOV_MSG_TYPE,
    GOV_MSG_TYPES,
    GOV_MSG_TYPES_WITH_PROPOSAL_ID,
    HEADER_ALG,
    HEADER_KID,
    alg_for_curve,
    sign1,
)
from charter.sdk import GOV_API_VERSION, CharterClient, Response

log = logging.getLogger(__name__)

COSE_CONTENT_TYPE = "application/cose"
CREATED_AT_MAX = 9_999_999_999
# Charter's dry-run endpoint (not in CCF): the same signed proposal, validated and resolved
# against the current state without being stored. Documented in docs/internals.md.
DRY_RUN_PATH = "/gov/members/proposals:dry-run"
PROPOSAL_STATES = frozenset({"Open", "Accepted", "Withdrawn", "Rejected", "Failed", "Dropped"})

_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
SHARE_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


def gov_envelope(
    key: ec.EllipticCurvePrivateKey,
    member_id: str,
    msg_type: str,
    payload: bytes,
    *,
    proposal_id: str | None = None,
    created_at: int | None = None,
) -> bytes:
    """A tagged COSE_Sign1 governance request with an embedded payload (FORMATS §6)."""
    if msg_type not in GOV_MSG_TYPES:
        raise ValueError(f"unknown governance message type {msg_type!r}")
    if (msg_type in GOV_MSG_TYPES_WITH_PROPOSAL_ID) != (proposal_id is not None):
        raise ValueError(f"{msg_type} messages name a proposal id, and only they do")
    assert _HEX64_RE.match(member_id), "member id is 64 lowercase hex digits"
    created = int(time.time()) if created_at is None else created_at
    assert 0 <= created <= CREATED_AT_MAX
    try:
        alg = alg_for_curve(key.curve)
    except ValueError:
        raise IdentityError(
            f"member keys must be P-256, P-384 or P-521, not {key.curve.name}"
        ) from None
    # The order of `ccf_cose_sign1` (alg, kid, type, proposal id, created_at), so that our
    # protected headers are byte-identical to those CCF's own tooling produces.
    protected: dict[Any, Any] = {
        HEADER_ALG: alg,
        HEADER_KID: member_id.encode("ascii"),
        GOV_MSG_TYPE: msg_type,
    }
    if proposal_id is not None:
        protected[GOV_MSG_PROPOSAL_ID] = proposal_id
    protected[GOV_MSG_CREATED_AT] = created
    return sign1(key, protected, payload)


def load_encryption_key(path: Path) -> rsa.RSAPrivateKey:
    """A member's RSA encryption private key (`charter keygen --enc-key` writes it)."""
    pem = read_bounded(path, PEM_FILE_BYTES_MAX, "encryption private key")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise IdentityError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise IdentityError(f"{path} is not an RSA private key")
    return key


def decrypt_share(private_key: rsa.RSAPrivateKey, encrypted: bytes) -> bytes:
    """RSA-OAEP-256, as the service encrypts shares (CCF's scheme)."""
    try:
        return private_key.decrypt(encrypted, SHARE_OAEP)
    except ValueError:
        raise InvalidInput(
            "the encrypted share does not decrypt with this encryption key (another member's "
            "key, or a share issued to another key)"
        ) from None


@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposal as the service reports it (CCF's field names mapped to Python ones)."""

    proposal_id: str
    proposer_id: str | None
    state: str
    ballot_count: int
    final_votes: dict[str, bool] = field(default_factory=dict)
    vote_failures: dict[str, Any] = field(default_factory=dict)
    failure: dict[str, Any] | None = None
    txid: TxId | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: Any, txid: TxId | None = None) -> Proposal:
        if not isinstance(body, dict):
            raise ProtocolError("a proposal must be a JSON object")
        pid = body.get("proposalId")
        state = body.get("proposalState")
        if not isinstance(pid, str) or not isinstance(state, str):
            raise ProtocolError("a proposal needs string proposalId and proposalState")
        if state not in PROPOSAL_STATES:
            log.warning("unknown proposal state state=%s", state)
        proposer = body.get("proposerId")
        count = body.get("ballotCount", 0)
        return cls(
            proposal_id=pid,
            proposer_id=proposer if isinstance(proposer, str) else None,
            state=state,
            ballot_count=count if isinstance(count, int) else 0,
            final_votes=dict(body.get("finalVotes") or {}),
            vote_failures=dict(body.get("voteFailures") or {}),
            failure=body.get("failure") if isinstance(body.get("failure"), dict) else None,
            txid=txid,
            raw=body,
        )

    def to_json(self) -> dict[str, Any]:
        out = dict(self.raw)
        if self.txid is not None:
            out["transactionId"] = str(self.txid)
        return out


def check_actions(actions: list[dict[str, Any]]) -> None:
    """Validate actions against governance's schemas before anything is signed or sent.

    The service validates again (it trusts no client); checking here gives the member the
    same precise message without a round trip, and keeps junk out of the ledger.
    """
    if not isinstance(actions, list) or not actions:
        raise InvalidInput("a proposal needs a non-empty list of actions")
    for i, action in enumerate(actions):
        if not isinstance(action, dict) or not isinstance(action.get("name"), str):
            raise InvalidInput(f"action {i} must be an object with a string 'name'")
        extra = set(action) - {"name", "args"}
        if extra:
            raise InvalidInput(f"action {i} ({action['name']}) has unknown fields {sorted(extra)}")
        try:
            parse_action(action["name"], action.get("args"))
        except GovernanceError as e:
            raise InvalidInput(f"action {i}: {e.message}", code=e.code) from None


class Member:
    """A consortium member acting through a `CharterClient`."""

    def __init__(self, client: CharterClient, cert_path: str | Path, key_path: str | Path) -> None:
        self.client = client
        self.identity = Identity.load(Path(cert_path), Path(key_path))
        self.id = self.identity.id

    def envelope(self, msg_type: str, payload: bytes, *, proposal_id: str | None = None) -> bytes:
        return gov_envelope(self.identity.key, self.id, msg_type, payload, proposal_id=proposal_id)

    async def _send(
        self, path: str, msg_type: str, payload: bytes, *, proposal_id: str | None = None
    ) -> Response:
        body = self.envelope(msg_type, payload, proposal_id=proposal_id)
        r = await self.client.post(
            path,
            data=body,
            headers={"Content-Type": COSE_CONTENT_TYPE},
            params={"api-version": GOV_API_VERSION},
        )
        log.info("gov request type=%s path=%s status=%d", msg_type, path, r.status)
        return self.client.check(r)

    async def propose(self, actions: list[dict[str, Any]]) -> Proposal:
        """Submit a proposal; returns it as stored (Open, or already Accepted)."""
        check_actions(actions)
        payload = json.dumps({"actions": actions}).encode()
        r = await self._send("/gov/members/proposals:create", "proposal", payload)
        return Proposal.from_json(r.body, r.txid)

    async def dry_run(self, actions: list[dict[str, Any]]) -> dict[str, Any]:
        """Ask the service what the proposal would do, without storing it."""
        check_actions(actions)
        payload = json.dumps({"actions": actions}).encode()
        r = await self._send(DRY_RUN_PATH, "proposal", payload)
        if not isinstance(r.body, dict):
            raise ProtocolError("dry run did not return a JSON object")
        return r.body

    async def vote(self, proposal_id: str, approve: bool) -> Proposal:
        """Submit this member's ballot (Charter ballots: {"ballot": "approve"|"reject"})."""
        _check_proposal_id(proposal_id)
        payload = json.dumps({"ballot": "approve" if approve else "reject"}).encode()
        path = f"/gov/members/proposals/{proposal_id}/ballots/{self.id}:submit"
        r = await self._send(path, "ballot", payload, proposal_id=proposal_id)
        return Proposal.from_json(r.body, r.txid)

    async def withdraw(self, proposal_id: str) -> Proposal | None:
        """Withdraw one of this member's proposals; None if the service does not know it."""
        _check_proposal_id(proposal_id)
        path = f"/gov/members/proposals/{proposal_id}:withdraw"
        r = await self._send(path, "withdrawal", b"", proposal_id=proposal_id)
        if r.status == 204 or not r.body:
            return None
        return Proposal.from_json(r.body, r.txid)

    async def ack(self) -> str:
        """Activate this member: fetch the state digest (:update) and sign it back (:ack)."""
        base = f"/gov/members/state-digests/{self.id}"
        r = await self._send(f"{base}:update", "state_digest", b"")
        digest = r.body.get("stateDigest") if isinstance(r.body, dict) else None
        if not isinstance(digest, str) or not digest:
            raise ProtocolError("state digest update returned no stateDigest")
        await self._send(f"{base}:ack", "ack", json.dumps({"stateDigest": digest}).encode())
        return digest

    async def submit_share(self, share: bytes) -> dict[str, Any]:
        """Submit this member's decrypted recovery share (msg type recovery_share); the
        service's `{"message", "submittedCount", "recoveryThreshold"}`."""
        payload = json.dumps({"share": base64.b64encode(share).decode("ascii")}).encode()
        r = await self._send(f"/gov/recovery/members/{self.id}:recover", "recovery_share", payload)
        if not isinstance(r.body, dict):
            raise ProtocolError("share submission did not return a JSON object")
        return r.body

    async def recover(self, encryption_key_path: str | Path) -> dict[str, Any]:
        """Fetch this member's encrypted share, decrypt it here with its encryption private
        key, and submit it: the share is in clear only in this process and, sealed by TLS and
        then AES-GCM, in the enclave."""
        private_key = load_encryption_key(Path(encryption_key_path))
        encrypted = await self.client.encrypted_share(self.id)
        return await self.submit_share(decrypt_share(private_key, encrypted))

    async def proposals(self) -> list[Proposal]:
        return await list_proposals(self.client)

    async def proposal(self, proposal_id: str) -> Proposal:
        return await get_proposal(self.client, proposal_id)


# Reads need no member identity (CCF's gov reads are unauthenticated).


async def list_proposals(client: CharterClient) -> list[Proposal]:
    items = await client.get_list("/gov/members/proposals")
    return [Proposal.from_json(p) for p in items]


async def get_proposal(client: CharterClient, proposal_id: str) -> Proposal:
    _check_proposal_id(proposal_id)
    body = await client.get_json(
        f"/gov/members/proposals/{proposal_id}", params={"api-version": GOV_API_VERSION}
    )
    return Proposal.from_json(body)


async def get_proposal_actions(client: CharterClient, proposal_id: str) -> list[dict[str, Any]]:
    """The actions of a proposal (its signed body), as the service stored them."""
    _check_proposal_id(proposal_id)
    body = await client.get_json(
        f"/gov/members/proposals/{proposal_id}/actions", params={"api-version": GOV_API_VERSION}
    )
    actions = body.get("actions") if isinstance(body, dict) else None
    if not isinstance(actions, list):
        raise ProtocolError("proposal actions are not a list")
    return actions


def _check_proposal_id(proposal_id: str) -> None:
    # The id goes into a URL path: refuse anything that could change the path's meaning.
    if not _HEX64_RE.match(proposal_id):
        raise ValueError(f"a proposal id is 64 lowercase hex digits, got {proposal_id[:80]!r}")
