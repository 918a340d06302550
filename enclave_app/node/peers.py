"""The other nodes: who they are (governance's nodes table, cached), how to reach them
(sealed channels, addresses), and what passes between them (Raft, forwarded requests).

Anyone can ask to join and name any address, so a node not yet trusted is never contacted
(nor replicated to); once trusted it catches up as a learner before it joins the
configuration. A Retired node that was trusted keeps its route: it must still learn that the
configuration without it committed (and a retiring primary must hand over).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from charter.consensus import Message, Raft
from charter.enclave_app import interface as itf
from charter.enclave_app.app import HttpResponse, error_response
from charter.enclave_app.channels import (
    INTRODUCTION_ADDRESS_BYTES_MAX,
    MAX_FRAME_BYTES,
    ChannelError,
    Channels,
    introduce,
    is_introduction,
    parse_introduction,
    sealed_sender,
)
from charter.enclave_app.frontend import Forwarded
from charter.enclave_app.interface.logs import REPEATS_LIMITED
from charter.enclave_app.node import messages
from charter.enclave_app.node.core import NodeCore
from charter.enclave_app.node.lifecycle import NodeState
from charter.enclave_app.rate_limit import RateLimiter
from charter.governance import tables as gt
from charter.ledger import certs

LOG = logging.getLogger(__name__)

MAX_PENDING_FORWARDS = 10_000
# Forward ids: the channel epoch (u32) above, a per-incarnation counter below (< 2^63).
FORWARD_ID_EPOCH_SHIFT = 31
_FORWARDED_HEADERS = frozenset({"content-type", "accept", "authorization"})
# A peer this node has sent to and not heard from for this long gets an introduction with
# the next frame (it may not know this node's key, channels.py), then again at this
# interval while it stays silent.
INTRODUCE_AFTER_SILENT_MS = 1_000
# Introductions from senders this node does not know cost a certificate check each (an
# ECDSA verification): at most this many a second, all such senders together (a real one
# sends one a second), so that garbage at the node-to-node port cannot spend the enclave's
# CPU on them. Frames from known peers are never held to it.
UNKNOWN_INTRODUCTIONS_PER_S = 20


class Peers:
    """Peer table, channels and node-to-node messages of one node."""

    def __init__(self, core: NodeCore, channels: Channels) -> None:
        self.core = core
        self.channels = channels
        # node id -> node-to-node address of every peer we may talk to
        self.addresses: dict[str, str] = {}
        # Trusted nodes not (yet) in the Raft configuration: replicated to, not counted.
        self.learners: set[str] = set()
        # node id -> status in governance's nodes table (refreshed on every change to it)
        self.statuses: dict[str, str] = {}
        # The seqno at which governance marked this node Retired (it retires once that
        # commits, if it never became a voter; a voter retires by configuration).
        self.retired_at: int | None = None
        # Retired nodes this node, as primary, finished telling; their `retired_committed`
        # is due to be recorded, and they are not tracked again meanwhile.
        self.released: set[str] = set()
        # node id -> the store version at which this node saw it become Trusted (no earlier
        # than the entry that trusted it): its join is answered once that has committed.
        self.trusted_at: dict[str, int] = {}
        # The last forward id used. Ids start at this incarnation's channel epoch (which
        # only grows across restarts), so a late answer to a request the node sent before it
        # restarted never matches one it sent since (it went to another client).
        self._last_forward_id = channels.epoch << FORWARD_ID_EPOCH_SHIFT
        # forward id -> the primary it went to (only that node may answer it)
        self._forward_targets: dict[int, str] = {}
        # node id -> when (the host clock of `tick`) a frame from it last opened; since
        # the first send to it when none has yet. And when it was last introduced to.
        self.heard_ms: dict[str, int] = {}
        self.introduced_ms: dict[str, int] = {}
        # (this node's certificate PEM, its DER), as the introductions carry it.
        self._cert_der: tuple[str, bytes] | None = None
        self._unknown_introductions = RateLimiter(
            rate_per_s=UNKNOWN_INTRODUCTIONS_PER_S, burst=UNKNOWN_INTRODUCTIONS_PER_S, sources_max=1
        )

    # ------------------------------------------------------------------ the peer table
    def refresh(self, raft: Raft | None) -> None:
        """Re-read governance's nodes table: statuses, routes to trusted nodes, learners."""
        voters = raft.configuration if raft is not None else self.core.voters()
        trusted_learners: set[str] = set()
        retiring: list[str] = []
        statuses: dict[str, str] = {}
        own_id = self.channels.own_id
        for key, value in self.core.store.begin().items(gt.NODES_INFO):
            info = gt.load_json(value, what=gt.NODES_INFO)
            node_id = gt.key_to_id(key)
            if not isinstance(info, dict):
                continue
            status = info.get("status")
            statuses[node_id] = str(status)
            if status == "Trusted":
                self.trusted_at.setdefault(node_id, self.core.store.version)
            else:
                self.trusted_at.pop(node_id, None)
            if node_id == own_id:
                if status != "Retired":
                    self.retired_at = None  # e.g. the entry that retired it was rolled back
                elif self.retired_at is None:
                    self.retired_at = self.core.store.version
                continue
            # Only governance retires a node, and only a trusted one, so a Retired node keeps
            # its route: until its retirement is recorded as told (`retired_committed`) any
            # primary tells it, and one heard from again (restarted) is told once more.
            untold = status == "Retired" and info.get("retired_committed") is not True
            if status not in ("Trusted", "Retired"):
                continue
            self.know(
                node_id,
                str(info.get("public_key", "")),
                str(info.get("node_to_node_interface", {}).get("published_address", "")),
            )
            if status == "Trusted" and node_id not in voters:
                trusted_learners.add(node_id)
            elif untold and raft is not None and node_id not in self.released:
                retiring.append(node_id)
        self.statuses = statuses
        for gone in self.trusted_at.keys() - statuses.keys():
            del self.trusted_at[gone]
        if raft is None:
            return
        for node_id in self.learners - trusted_learners:
            # Left before it became a voter: it is told until it commits that it left.
            removed_at = None if node_id in raft.configuration else self.core.store.version
            raft.remove_learner(node_id, removed_at)
        for node_id in trusted_learners - self.learners:
            raft.add_learner(node_id)
        self.learners = trusted_learners
        for node_id in retiring:
            # A primary elected after the removal, or restarted, tells it too (no-op on a
            # backup, and for a node still in the configuration: Raft tells it then).
            raft.track_removed(node_id, self.core.store.version)

    def know(self, node_id: str, public_key_pem: str, address: str) -> None:
        """Route to `node_id` at `address`, if its key is the one its id names."""
        public_key = certs.load_public_key(public_key_pem)
        if certs.node_id(public_key) != node_id:  # type: ignore[arg-type]
            LOG.warning("event=peer_key_mismatch node=%s", node_id[:16])
            return
        self.channels.know(public_key)  # type: ignore[arg-type]
        if address:
            self.addresses[node_id] = address

    def trust_committed(self, node_id: str, commit_seqno: int) -> bool:
        """Is `node_id` Trusted by an entry at or below `commit_seqno`?"""
        trusted_at = self.trusted_at.get(node_id)
        return trusted_at is not None and trusted_at <= commit_seqno

    def status(self, node_id: str) -> str | None:
        return self.statuses.get(node_id)

    def trusted_nodes(self) -> frozenset[str]:
        return frozenset(n for n, s in self.statuses.items() if s == "Trusted")

    def trusted_by_configuration(self, node_id: str, raft: Raft | None) -> bool:
        """A voter of the Raft configuration this node knows (a joiner knows no governance
        state until it holds the ledger secrets, only the configuration)."""
        # A new joiner learns its peers from the trusted join answer, before it has replayed
        # the governance state that names them.
        return (raft is not None and node_id in raft.configuration) or (
            node_id in self.addresses
            and (self.core.lifecycle.is_(NodeState.PENDING) or self.status(node_id) is None)
        )

    # ------------------------------------------------------------------ sending
    def _send(
        self, peer: str, message: messages.NodeMessage, after_durable: int | None = None
    ) -> None:
        """Seal `message` to `peer` (EncodeError if it is too large for the peer to accept);
        with `after_durable`, for the host to send once its ledger is durable up to it."""
        address = self.addresses.get(peer)
        if address is None:
            LOG.debug("event=no_route_to_peer peer=%s", peer[:16])
            return
        plaintext = messages.encode(message)
        try:
            payload = self.channels.seal(peer, plaintext)
        except ChannelError as exc:
            LOG.warning("event=n2n_seal_failed peer=%s reason=%s", peer[:16], exc)
            return
        payload = self._introduced_if_silent(peer, payload)
        if after_durable is None:
            self.core.outbox.append(itf.SendToNode(peer, address, payload))
        else:
            self.core.outbox.append(itf.SendWhenDurable(after_durable, peer, address, payload))
        self.core.metrics["peer_messages_sent"] += 1

    def send_raft(self, peer: str, message: Message, after_durable: int | None = None) -> None:
        self._send(peer, messages.RaftFrame(message), after_durable)

    def forward(
        self,
        primary: str,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        peer_der: bytes | None,
    ) -> Forwarded | HttpResponse:
        """Send a request on to `primary`; its answer comes back as a `ForwardAnswer`."""
        request = messages.ForwardRequest(
            self._next_forward_id(),
            method,
            path,
            query,
            # str(): aiohttp's names are `istr`, a str subclass the codec does not take.
            tuple((str(k), str(v)) for k, v in headers.items() if k.lower() in _FORWARDED_HEADERS),
            body,
            peer_der or b"",
        )
        try:
            self._send(primary, request)
        except messages.EncodeError as exc:
            LOG.warning("event=forward_not_encodable reason=%s", exc)
            if exc.code == messages.TOO_LARGE:
                return error_response("The request is too large to forward", code="RequestTooLarge")
            return error_response("The request cannot be forwarded", code="InvalidInput")
        self._last_forward_id = request.forward_id
        self._forward_targets[request.forward_id] = primary
        while len(self._forward_targets) > MAX_PENDING_FORWARDS:  # answers that never came
            del self._forward_targets[next(iter(self._forward_targets))]
        return Forwarded(request.forward_id, primary)

    def _next_forward_id(self) -> int:
        epoch_base = self.channels.epoch << FORWARD_ID_EPOCH_SHIFT
        counter = (self._last_forward_id - epoch_base + 1) % (1 << FORWARD_ID_EPOCH_SHIFT)
        return epoch_base + max(counter, 1)

    def answer(self, peer: str, forward_id: int, response: HttpResponse) -> None:
        answer = messages.ForwardAnswer(
            forward_id,
            response.status,
            tuple((str(k), str(v)) for k, v in response.headers.items()),
            response.content_type,
            response.body,
        )
        try:
            self._send(peer, answer)
        except messages.EncodeError as exc:
            # The write may have committed: say so rather than leave the backup waiting.
            LOG.warning("event=forward_answer_not_encodable reason=%s", exc)
            error = (
                error_response("The response is too large to forward", code="ResponseTooLarge")
                if exc.code == messages.TOO_LARGE
                else error_response("The response cannot be forwarded", code="InternalError")
            )
            headers = tuple(error.headers.items())
            self._send(
                peer,
                messages.ForwardAnswer(
                    forward_id, error.status, headers, error.content_type, error.body
                ),
            )

    def _introduced_if_silent(self, peer: str, sealed: bytes) -> bytes:
        """`sealed` with this node's introduction if `peer` has been silent for
        `INTRODUCE_AFTER_SILENT_MS` (and was not introduced to within that time)."""
        now = self.core.last_tick_ms
        if now is None:
            return sealed
        silent_since = self.heard_ms.setdefault(peer, now)
        last = self.introduced_ms.get(peer)
        if now - silent_since < INTRODUCE_AFTER_SILENT_MS or (
            last is not None and now - last < INTRODUCE_AFTER_SILENT_MS
        ):
            return sealed
        cert_der = self._own_cert_der()
        address = self.core.n2n_published()
        if cert_der is None or len(address.encode()) > INTRODUCTION_ADDRESS_BYTES_MAX:
            return sealed
        framed = introduce(cert_der, address, sealed)
        if len(framed) > MAX_FRAME_BYTES:
            return sealed  # a later, smaller frame (a heartbeat) carries it
        self.introduced_ms[peer] = now
        LOG.info("event=peer_introduction_sent peer=%s", peer[:16])
        return framed

    def _own_cert_der(self) -> bytes | None:
        """This node's certificate as the service endorsed it (None before it has one)."""
        identity = self.core.maybe_identity()
        if identity is None or not identity.node_cert_pem:
            return None
        pem = identity.node_cert_pem
        if self._cert_der is None or self._cert_der[0] != pem:
            der = certs.load_cert(pem).public_bytes(serialization.Encoding.DER)
            self._cert_der = (pem, der)
        return self._cert_der[1]

    # ------------------------------------------------------------------ receiving
    def open(self, payload: bytes) -> tuple[str, messages.NodeMessage] | None:
        """A sealed frame relayed by the host, or one with its sender's introduction:
        (sender, message) once opened and checked; None if it is dropped. (Who may send
        what is the facade's decision, on the sender's status; only an answer's sender is
        checked here, against where the request went.)"""
        try:
            if is_introduction(payload):
                sender, plaintext = self._open_introduced(payload)
            else:
                sender, plaintext = self.channels.open(payload)
            message = messages.decode(plaintext)
        except (ChannelError, messages.DecodeError) as exc:
            self.core.metrics["peer_messages_dropped"] += 1
            LOG.warning("event=n2n_frame_dropped reason=%s", str(exc)[:200], extra=REPEATS_LIMITED)
            return None
        if self.core.last_tick_ms is not None:
            self.heard_ms[sender] = self.core.last_tick_ms
        self.core.metrics["peer_messages_received"] += 1
        if (
            isinstance(message, messages.ForwardAnswer)
            and self._forward_targets.pop(message.forward_id, None) != sender
        ):
            LOG.warning("event=forward_answer_refused peer=%s", sender[:16], extra=REPEATS_LIMITED)
            return None
        return sender, message

    def _open_introduced(self, payload: bytes) -> tuple[str, bytes]:
        """An introduced frame: from a known peer, its sealed frame as any other; from an
        unknown one, its key and address are learned if the service's key issued its
        certificate and the sealed frame opens under that key (else ChannelError)."""
        introduction = parse_introduction(payload)
        if sealed_sender(introduction.sealed) in self.channels.public_keys:
            return self.channels.open(introduction.sealed)
        identity = self.core.maybe_identity()
        if identity is None or not identity.service_cert_pem:
            raise ChannelError("no service certificate to check an introduction against")
        now_s = (self.core.last_tick_ms or 0) / 1000
        if not self._unknown_introductions.allow("unknown senders", now_s):
            raise ChannelError("too many introductions from unknown senders")
        try:
            cert = x509.load_der_x509_certificate(introduction.cert_der)
            public_key = cert.public_key()
        except Exception:  # outside bytes: cryptography raises several types for them
            raise ChannelError("an introduction's certificate is unreadable") from None
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not certs.issued_by(
            cert, identity.service_cert
        ):
            raise ChannelError("an introduction's certificate was not issued by the service")
        sender, plaintext = self.channels.open_introduced(public_key, introduction.sealed)
        if sender not in self.addresses and introduction.address:
            self.addresses[sender] = introduction.address
        LOG.info("event=peer_introduced peer=%s", sender[:16])
        return sender, plaintext
