"""Node-to-node channels: frames sealed between two enclaves; hosts relay only ciphertext.

Each pair of nodes derives its keys from an ECDH exchange between their identity keys
(P-384), expanded with HKDF-SHA256 into one AES-256-GCM key per direction. Every frame
carries the sender's id, the receiver's id and a per-direction sequence number; the
sequence number is the GCM nonce, so a key never sees a nonce twice, and the receiver keeps a
sliding window of the numbers it accepted: a replayed frame, or one older than the window,
is dropped. Identity comes from the keys themselves: only the holder of a node's private key
can produce frames that open under its pairwise key.

A node restarted under the same identity starts a new epoch (a counter kept in its sealed
state, so it only grows): frames carry `(epoch, seqno)`, the nonce is both, and a receiver
that sees a higher epoch from a peer restarts that peer's window; a lower epoch is refused.

Wire format (`u8` version = 1 | 32 B sender id | 32 B receiver id | u32 epoch | u64 seqno |
ciphertext with its 16-byte tag); the first 77 bytes are the GCM associated data.

A node that does not know the sender's identity key (its own state is from before the
sender was trusted: a node far behind, or restarted from an old ledger) cannot open its
frames, and a node it cannot hear from can never bring it up to date. So a sender whose
peer has been silent attaches an introduction to a frame (`introduce`): `u8` version = 2 |
`u16` certificate length | `u16` address length | the sender's node certificate (DER) | its
node-to-node address (UTF-8) | the sealed frame. The receiver learns the key only if the
certificate was issued by the service's key (checked by the caller) and the sealed frame it
carries opens under the pairwise key of that certificate's key, which proves the sender
holds the private key (`Channels.open_introduced`).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from charter.enclave_app.interface.limits import NODE_FRAME_BYTES_MAX, NODE_FRAME_ENVELOPE_BYTES
from charter.ledger import certs

LOG = logging.getLogger(__name__)

VERSION = 1
HEADER = struct.Struct("<B32s32sIQ")
TAG_BYTES = 16
# A sealed frame: the boundary's node-frame limit (a consensus message and its envelope).
MAX_FRAME_BYTES = NODE_FRAME_BYTES_MAX
# The seal (header and tag) plus the node message's own wrapping fit the envelope reserved.
assert HEADER.size + TAG_BYTES + 1024 <= NODE_FRAME_ENVELOPE_BYTES
REPLAY_WINDOW = 256
_INFO = b"charter node-to-node v1"
INTRODUCED_VERSION = 2
INTRODUCTION_HEADER = struct.Struct("<BHH")  # version, certificate length, address length
INTRODUCTION_CERT_BYTES_MAX = 4096
INTRODUCTION_ADDRESS_BYTES_MAX = 256


class ChannelError(Exception):
    """A frame that cannot be opened: malformed, forged, for someone else, or replayed."""

    code = "ChannelError"


def sealed_sender(frame: bytes) -> str:
    """The sender id a sealed frame's header claims (not yet authenticated)."""
    return frame[1 : 1 + 32].hex()


def _nonce(epoch: int, seqno: int) -> bytes:
    return epoch.to_bytes(4, "little") + seqno.to_bytes(8, "little")


def _pair_keys(
    own_key: ec.EllipticCurvePrivateKey, own_id: str, peer_public: ec.EllipticCurvePublicKey
) -> tuple[bytes, bytes]:
    """(key for frames we send, key for frames we receive)."""
    peer_id = certs.node_id(peer_public)
    shared = own_key.exchange(ec.ECDH(), peer_public)
    low, high = sorted((own_id, peer_id))
    material = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=bytes.fromhex(low) + bytes.fromhex(high),
        info=_INFO,
    ).derive(shared)
    low_to_high, high_to_low = material[:32], material[32:]
    if own_id == low:
        return low_to_high, high_to_low
    return high_to_low, low_to_high


@dataclass(slots=True)
class _Peer:
    send: AESGCM
    receive: AESGCM
    next_seqno: int = 1
    peer_epoch: int = 0
    highest_seen: int = 0
    seen_mask: int = 0  # bit i set = seqno (highest_seen - i) was accepted


@dataclass(slots=True)
class Channels:
    """All of one node's channels, keyed by peer node id."""

    own_key: ec.EllipticCurvePrivateKey
    epoch: int = 0
    own_id: str = ""
    peers: dict[str, _Peer] = field(default_factory=dict)
    public_keys: dict[str, ec.EllipticCurvePublicKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.own_id = certs.node_id(self.own_key.public_key())

    def know(self, public_key: ec.EllipticCurvePublicKey) -> str:
        """Learn a peer's identity key (from governance or the join protocol)."""
        peer_id = certs.node_id(public_key)
        if peer_id != self.own_id and peer_id not in self.public_keys:
            self.public_keys[peer_id] = public_key
        return peer_id

    def _peer(self, peer_id: str) -> _Peer:
        peer = self.peers.get(peer_id)
        if peer is None:
            public = self.public_keys.get(peer_id)
            if public is None:
                raise ChannelError(f"no identity key known for node {peer_id[:16]}")
            send, receive = _pair_keys(self.own_key, self.own_id, public)
            peer = _Peer(AESGCM(send), AESGCM(receive))
            self.peers[peer_id] = peer
        return peer

    def seal(self, peer_id: str, plaintext: bytes) -> bytes:
        peer = self._peer(peer_id)
        seqno = peer.next_seqno
        peer.next_seqno += 1
        header = HEADER.pack(
            VERSION, bytes.fromhex(self.own_id), bytes.fromhex(peer_id), self.epoch, seqno
        )
        nonce = _nonce(self.epoch, seqno)
        return header + peer.send.encrypt(nonce, plaintext, header)

    def open(self, frame: bytes) -> tuple[str, bytes]:
        """(sender id, plaintext), or ChannelError; a failed frame changes no state."""
        if not HEADER.size + TAG_BYTES <= len(frame) <= MAX_FRAME_BYTES:
            raise ChannelError(f"frame of {len(frame)} bytes has an impossible size")
        version, sender, receiver, epoch, seqno = HEADER.unpack_from(frame)
        if version != VERSION:
            raise ChannelError(f"unknown channel version {version}")
        if receiver.hex() != self.own_id:
            raise ChannelError("frame is addressed to another node")
        sender_id = sender.hex()
        peer = self._peer(sender_id)
        if epoch < peer.peer_epoch:
            raise ChannelError(f"frame from an old epoch {epoch} < {peer.peer_epoch}")
        new_epoch = epoch > peer.peer_epoch
        if seqno == 0 or (not new_epoch and self._seen(peer, seqno)):
            raise ChannelError(f"replayed or too old frame seqno={seqno}")
        try:
            plaintext = peer.receive.decrypt(
                _nonce(epoch, seqno), frame[HEADER.size :], frame[: HEADER.size]
            )
        except InvalidTag:
            raise ChannelError("frame fails authentication") from None
        if new_epoch:
            peer.peer_epoch, peer.highest_seen, peer.seen_mask = epoch, 0, 0
        self._accept(peer, seqno)
        return sender_id, plaintext

    @staticmethod
    def _seen(peer: _Peer, seqno: int) -> bool:
        if seqno > peer.highest_seen:
            return False
        age = peer.highest_seen - seqno
        return age >= REPLAY_WINDOW or bool(peer.seen_mask >> age & 1)

    @staticmethod
    def _accept(peer: _Peer, seqno: int) -> None:
        if seqno > peer.highest_seen:
            shift = seqno - peer.highest_seen
            peer.seen_mask = ((peer.seen_mask << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            peer.highest_seen = seqno
        else:
            peer.seen_mask |= 1 << (peer.highest_seen - seqno)

    def open_introduced(
        self, public_key: ec.EllipticCurvePublicKey, frame: bytes
    ) -> tuple[str, bytes]:
        """Open the sealed `frame` an introduction carried, under `public_key` (its sender's,
        from a certificate the caller checked). The key is kept only if the frame opens and
        comes from that key's node; otherwise nothing changes (ChannelError)."""
        peer_id = certs.node_id(public_key)
        if sealed_sender(frame) != peer_id:
            raise ChannelError("an introduction carries another node's frame")
        known = peer_id in self.public_keys
        if not known:
            self.public_keys[peer_id] = public_key
        try:
            return self.open(frame)
        except ChannelError:
            if not known:
                self.forget(peer_id)
            raise

    def forget(self, peer_id: str) -> None:
        """Drop a peer's channel (a retired node): its frames no longer open."""
        self.peers.pop(peer_id, None)
        self.public_keys.pop(peer_id, None)


# ---------------------------------------------------------------------------------------------
# Secrets for one node's eyes only (the join response): ECIES on P-384.

_SEAL_INFO = b"charter sealed-to-node v1"
MAX_SEALED_BYTES = 1024 * 1024


def seal_to(
    public_key: ec.EllipticCurvePublicKey,
    plaintext: bytes,
    *,
    ephemeral: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """Encrypt for the holder of `public_key`: an ephemeral ECDH key + HKDF + AES-GCM.
    The ephemeral key is fresh unless given (from the node's `Entropy`); used once."""
    if ephemeral is None:
        ephemeral = ec.generate_private_key(public_key.curve)
    if ephemeral.curve.name != public_key.curve.name:
        raise ChannelError("the ephemeral key is not on the recipient's curve")
    ephemeral_der = certs.spki_der(ephemeral.public_key())
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral_der, info=_SEAL_INFO).derive(
        ephemeral.exchange(ec.ECDH(), public_key)
    )
    recipient = bytes.fromhex(certs.node_id(public_key))
    sealed = AESGCM(key).encrypt(bytes(12), plaintext, recipient)
    return len(ephemeral_der).to_bytes(2, "little") + ephemeral_der + sealed


def open_sealed(
    private_key: ec.EllipticCurvePrivateKey, blob: bytes, *, max_bytes: int = MAX_SEALED_BYTES
) -> bytes:
    if not 2 < len(blob) <= max_bytes:
        raise ChannelError("sealed blob has an impossible size")
    der_len = int.from_bytes(blob[:2], "little")
    if len(blob) < 2 + der_len + TAG_BYTES:
        raise ChannelError("sealed blob is truncated")
    try:
        ephemeral = serialization.load_der_public_key(blob[2 : 2 + der_len])
    except Exception:
        raise ChannelError("sealed blob has a bad ephemeral key") from None
    if not isinstance(ephemeral, ec.EllipticCurvePublicKey):
        raise ChannelError("sealed blob has a bad ephemeral key")
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=blob[2 : 2 + der_len], info=_SEAL_INFO
    ).derive(private_key.exchange(ec.ECDH(), ephemeral))
    recipient = bytes.fromhex(certs.node_id(private_key.public_key()))
    try:
        return AESGCM(key).decrypt(bytes(12), blob[2 + der_len :], recipient)
    except InvalidTag:
        raise ChannelError("sealed blob fails authentication") from None


# ---------------------------------------------------------------------------------------------
# Introductions: a sealed frame with the sender's certificate and address (module docstring).


@dataclass(frozen=True, slots=True)
class Introduction:
    cert_der: bytes
    address: str
    sealed: bytes


def introduce(cert_der: bytes, address: str, sealed: bytes) -> bytes:
    encoded = address.encode()
    assert len(cert_der) <= INTRODUCTION_CERT_BYTES_MAX
    assert len(encoded) <= INTRODUCTION_ADDRESS_BYTES_MAX
    header = INTRODUCTION_HEADER.pack(INTRODUCED_VERSION, len(cert_der), len(encoded))
    return header + cert_der + encoded + sealed


def is_introduction(frame: bytes) -> bool:
    return frame[:1] == bytes([INTRODUCED_VERSION])


def parse_introduction(frame: bytes) -> Introduction:
    """The parts of an introduced frame (ChannelError if malformed or over its limits)."""
    if not INTRODUCTION_HEADER.size <= len(frame) <= MAX_FRAME_BYTES:
        raise ChannelError(f"introduction of {len(frame)} bytes has an impossible size")
    version, cert_len, address_len = INTRODUCTION_HEADER.unpack_from(frame)
    if version != INTRODUCED_VERSION:
        raise ChannelError(f"not an introduction: version {version}")
    if cert_len > INTRODUCTION_CERT_BYTES_MAX or address_len > INTRODUCTION_ADDRESS_BYTES_MAX:
        raise ChannelError("introduction's certificate or address is over its limit")
    start = INTRODUCTION_HEADER.size
    end = start + cert_len + address_len
    if len(frame) < end + HEADER.size + TAG_BYTES:
        raise ChannelError("introduction is truncated")
    try:
        address = frame[start + cert_len : end].decode()
    except UnicodeDecodeError:
        raise ChannelError("introduction's address is not UTF-8") from None
    return Introduction(frame[start : start + cert_len], address, frame[end:])
