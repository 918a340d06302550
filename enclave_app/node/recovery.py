"""Disaster recovery: a new service from an old service's ledger (CCF's recover start mode).

A node started with `start.mode: recover` holds a copy of an old ledger and the previous
service certificate, and no secret of the old service. It goes through CCF's states:

1. `ReadingPublicLedger` (`replay_public`, one entry at a time from the untrusted host):
   every entry decodes and extends the Merkle tree; every signature signs that tree's root
   with a node certificate the service of its time endorsed, and its COSE signature is that
   service's; a change of service key (an earlier recovery) is endorsed by the new key. The
   first entry that fails any of this stops the replay: the ledger is cut back to the last
   valid signature, which is also where an intact copy's uncommitted suffix ends.
2. `PartOfPublicNetwork` (`open_public_service`): a new node key and service identity, whose
   key endorses the previous one, and the recovery transaction (service `Recovering`, the
   previous identity and its endorsements, old nodes retired, this node trusted).
   Governance works; applications are refused (the service is not open).
3. `transition_service_to_open` moves the service to `WaitingForRecoveryShares`; the members'
   shares reveal the ledger secrets, and `start_private_replay(secrets)` decrypts and checks
   every private domain of the old ledger (nothing changes if one fails).
4. `ReadingPrivateLedger`, then `PartOfNetwork`: `finish_private_replay` (from the node's
   `settle`, outside any request's transaction) puts the private state back and opens the
   service.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import struct
from typing import Any

from cryptography import x509

from charter.consensus import LogEntry
from charter.enclave_app import interface as itf
from charter.enclave_app.errors import KVError
from charter.enclave_app.identity import LEDGER_SECRET_BYTES, Identity
from charter.enclave_app.kv import Tx
from charter.enclave_app.node import certificates
from charter.enclave_app.node.core import NodeCore, configuration_if_changed
from charter.enclave_app.node.lifecycle import NodeState
from charter.enclave_app.node.replication import LocalLog
from charter.governance import tables as gt
from charter.governance.errors import GovernanceError
from charter.ledger import certs, cose
from charter.ledger import service_state as ss
from charter.ledger.entry import (
    WriteSet,
    commit_evidence,
    commit_evidence_digest,
    decode_entry,
    decrypt_private,
)
from charter.ledger.errors import LedgerError
from charter.ledger.signatures import verify_cose_root_signature, verify_root

LOG = logging.getLogger(__name__)

# At most this many ledger secrets (one per rekey) are accepted for a private replay.
LEDGER_SECRETS_MAX = 100_000


class RecoveryError(Exception):
    """A recovery cannot go on: the ledger copy, the previous identity or the secrets are
    not what they must be. The message says what and where (a seqno)."""

    code = "RecoveryFailed"


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayStop:
    """Where and why the public replay stopped before the end of the host's ledger."""

    seqno: int
    reason: str


def _u64(seqno: int) -> bytes:
    return struct.pack("<Q", seqno)


class Recovery:
    """The recovery of one old ledger by this node (held by the Node as `node.recovery`)."""

    def __init__(self, core: NodeCore, log: LocalLog, previous_service_cert_pem: str) -> None:
        self.core = core
        self.log = log
        self.previous_service_cert_pem = previous_service_cert_pem.strip() + "\n"
        self.previous_service_cert = certs.load_cert(previous_service_cert_pem)
        # The service certificate of the ledger as replayed so far (its SERVICE_INFO).
        self._service_cert: x509.Certificate | None = None
        # The service certificate in force at the last valid signature.
        self._signed_by: x509.Certificate | None = None
        # The old ledger's entries as read (index seqno - 1): the private replay needs them
        # again, and the host is not asked twice for what it could change in between.
        self._raws: list[bytes] = []
        self._entries: list[LogEntry] = []
        self.last_valid_signature = 0
        self.stop: ReplayStop | None = None
        # The seqno up to which the old ledger is recovered (its last valid signature).
        self.recovery_target_seqno: int | None = None
        # Checked private write sets, waiting for `finish_private_replay`.
        self._private: list[tuple[int, WriteSet, str]] | None = None
        self._secrets: list[tuple[int, bytes]] = []

    # ------------------------------------------------------------------ public replay
    def replay_public(self, raw: bytes) -> None:
        """One entry of the old ledger; after a stop, further entries are ignored."""
        self.core.lifecycle.expect(NodeState.READING_PUBLIC_LEDGER, action="replay_public")
        if self.stop is not None:
            return
        seqno = self.log.applied_seqno + 1
        try:
            self._replay_one(raw, seqno)
        except (LedgerError, RecoveryError, GovernanceError, KVError, ValueError, KeyError) as exc:
            # Whatever the host's bytes make fail (a malformed table value too) ends the
            # replay there; the node carries on from the last valid signature before it.
            self.stop = ReplayStop(seqno, f"{type(exc).__name__}: {exc}")
            LOG.warning(
                "event=recovery_replay_stopped seqno=%d last_valid_signature=%d reason=%s",
                seqno,
                self.last_valid_signature,
                type(exc).__name__,
            )

    def _replay_one(self, raw: bytes, seqno: int) -> None:
        entry, _ = decode_entry(raw)
        public = dict(entry.public)
        info_writes = public.get(ss.SERVICE_INFO, {})
        new_cert = self._service_change(info_writes.get(ss.SINGLETON_KEY), public)
        # Checks the seqno, and that a signature signs this tree's root.
        record = self.core.history.append_raw(raw)
        if new_cert is not None:
            self._service_cert = new_cert
        if record.is_signature:
            try:
                self._check_signature(seqno)
            except (LedgerError, RecoveryError):
                self.core.history.truncate(seqno - 1)
                raise
        self.log.store.apply(public, seqno)
        self.log.appended(entry.view, seqno, len(raw), entry.flags)
        self._raws.append(raw)
        self._entries.append(
            LogEntry(seqno, entry.view, raw, record.is_signature, configuration_if_changed(public))
        )
        if record.is_signature:
            self.last_valid_signature = seqno
            self._signed_by = self._service_cert

    def _service_change(
        self, value: bytes | None, public: dict[str, dict[bytes, bytes | None]]
    ) -> x509.Certificate | None:
        """The service certificate an entry installs, if it changes the service key: then
        the new key must endorse the old one (an earlier recovery), else RecoveryError."""
        if value is None:
            return None
        info = gt.load_json(value, what=ss.SERVICE_INFO)
        cert = certs.load_cert(str(info.get("cert", "")))
        current = self._service_cert
        if current is None or current.public_key() == cert.public_key():
            return cert
        for raw in public.get(ss.SERVICE_ENDORSEMENTS, {}).values():
            if raw is None:
                continue
            endorsement = certs.load_cert(gt.load_json(raw, what="endorsement")["endorsement"])
            if endorsement.public_key() == current.public_key() and certs.issued_by(
                endorsement, cert
            ):
                return cert
        raise RecoveryError("the service key changes without an endorsement of the previous one")

    def _check_signature(self, seqno: int) -> None:
        signature = self.core.history.last_signature
        assert signature is not None and signature.seqno == seqno
        service = self._service_cert
        if service is None:
            raise RecoveryError(f"signature at seqno {seqno} precedes any service identity")
        node_cert = certs.load_cert(signature.node_cert_pem or "")
        if not certs.issued_by(node_cert, service):
            raise RecoveryError(f"the node that signed seqno {seqno} is not the service's")
        verify_root(node_cert, signature.root, signature.signature)
        if signature.cose_sign1:
            verify_cose_root_signature(signature.cose_sign1, service, signature.root)

    def finish_public(self) -> int:
        """The replay is over: cut the ledger back to its last valid signature; returns it."""
        keep = self.last_valid_signature
        if keep == 0:
            where = (
                f" (stopped at seqno {self.stop.seqno}: {self.stop.reason})" if self.stop else ""
            )
            raise RecoveryError(f"the ledger copy holds no valid signature{where}")
        assert self._signed_by is not None
        if self._signed_by.public_key() != self.previous_service_cert.public_key():
            raise RecoveryError(
                "previous_service_identity is not the service that signed this ledger "
                f"(up to seqno {keep})"
            )
        log = self.log
        if log.applied_seqno > keep:
            log.rollback(keep)
        if self.core.history.last_seqno > keep:
            self.core.history.truncate(keep)
        del self._raws[keep:]
        del self._entries[keep:]
        # The host may hold more (an unsigned tail, or what follows a damaged entry).
        self.core.outbox.append(itf.Truncate(keep))
        log.commit_seqno = keep
        log.store.compact(keep)
        self.recovery_target_seqno = keep
        if self.stop is not None:
            LOG.warning(
                "event=recovery_ledger_cut seqno=%d stopped_at=%d reason=%s",
                keep,
                self.stop.seqno,
                self.stop.reason,
            )
        LOG.info("event=public_ledger_replayed last_signed_seqno=%d", keep)
        return keep

    @property
    def last_view(self) -> int:
        return self._entries[-1].term if self._entries else 0

    # ------------------------------------------------------------------ the new service
    def new_identity(self) -> Identity:
        """A new node key and service identity, and a fresh ledger secret for what the new
        service writes (the old secrets come back with the shares)."""
        core = self.core
        keep = self.recovery_target_seqno
        assert keep is not None
        return certificates.new_service_identity(core, keep + 1)

    def write_recovery_tx(self, tx: Tx, create_txid: str) -> None:
        """The new service's first transaction (CCF's recovery genesis)."""
        core = self.core
        identity = core.identity
        keep = self.recovery_target_seqno
        assert keep is not None and identity.service_key is not None
        old = gt.service_info(tx) or {}
        previous_info_version = tx.version_of(ss.SERVICE_INFO, ss.SINGLETON_KEY)
        endorsement = certs.endorse_previous_service_identity(
            self.previous_service_cert, identity.service_key, identity.service_cert
        )
        gt.put_json(
            tx,
            ss.SERVICE_INFO,
            ss.SINGLETON_KEY,
            {
                "cert": identity.service_cert_pem,
                "status": ss.ServiceStatus.RECOVERING,
                "recovery_count": int(old.get("recovery_count") or 0) + 1,
                "previous_service_identity_version": previous_info_version,
                "current_service_create_txid": create_txid,
                "service_data": old.get("service_data"),
            },
        )
        tx.put(
            ss.PREVIOUS_SERVICE_IDENTITY, ss.SINGLETON_KEY, self.previous_service_cert_pem.encode()
        )
        gt.put_json(
            tx,
            ss.SERVICE_ENDORSEMENTS,
            _u64(keep + 1),
            {"endorsement": certs.cert_pem(endorsement), "epoch_end": keep},
        )
        gt.put_json(
            tx,
            ss.PREVIOUS_SERVICE_IDENTITY_ENDORSEMENT,
            ss.SINGLETON_KEY,
            self._cose_endorsement(tx, old, create_txid),
        )
        # The old service's nodes are gone: retired, with nothing left to tell them.
        for key, value in list(tx.items(ss.NODES_INFO)):
            info = gt.load_json(value, what=ss.NODES_INFO)
            if info.get("status") != ss.NodeStatus.RETIRED or not info.get("retired_committed"):
                info["status"] = ss.NodeStatus.RETIRED
                info["retired_committed"] = True
                gt.put_json(tx, ss.NODES_INFO, key, info)
        gt.put_json(tx, ss.NODES_INFO, gt.id_key(identity.node_id), core.node_info("Trusted"))
        tx.put(
            ss.NODES_ENDORSED_CERTIFICATES,
            gt.id_key(identity.node_id),
            identity.node_cert_pem.encode(),
        )
        gt.put_json(tx, ss.CONFIGURATION, ss.SINGLETON_KEY, {"voters": [identity.node_id]})

    def _cose_endorsement(self, tx: Tx, old_info: dict[str, Any], create_txid: str) -> Any:
        """CCF's `CoseEndorsement` of the previous service key by the new one: a COSE_Sign1
        over the previous key (DER SPKI), for the epoch the previous service signed."""
        identity = self.core.identity
        assert identity.service_key is not None
        keep = self.recovery_target_seqno
        previous_key_der = certs.spki_der(self.previous_service_cert.public_key())  # type: ignore[arg-type]
        epoch_begin = str(old_info.get("current_service_create_txid") or "")
        epoch_end = f"{self.last_view}.{keep}"
        signed = cose.sign1(
            identity.service_key,
            {
                cose.HEADER_CCF_V1: {"epoch.start": epoch_begin, "epoch.end": epoch_end},
            },
            previous_key_der,
            deterministic=self.core.entropy.deterministic,
        )
        doc: dict[str, Any] = {
            "endorsement": base64.b64encode(signed).decode(),
            "endorsing_key": base64.b64encode(
                certs.spki_der(identity.service_key.public_key())
            ).decode(),
            "endorsement_epoch_begin": epoch_begin,
            "endorsement_epoch_end": epoch_end,
            "create_txid": create_txid,
        }
        previous = tx.version_of(ss.PREVIOUS_SERVICE_IDENTITY_ENDORSEMENT, ss.SINGLETON_KEY)
        if previous is not None:
            doc["previous_version"] = previous
        return doc

    # ------------------------------------------------------------------ private replay
    def start_private_replay(self, secrets: list[tuple[int, bytes]]) -> None:
        """The members' shares revealed the old service's ledger `secrets` (the shape of
        `Identity.ledger_secrets`): decrypt and check every private domain of the recovered
        ledger with them, then leave the rest to the node's next `settle` (outside the
        request's transaction): the private state back and the service open. Raises
        RecoveryError, changing nothing, if the service is not waiting for shares or a
        secret is missing or wrong."""
        core = self.core
        core.lifecycle.expect(NodeState.PART_OF_PUBLIC_NETWORK, action="start_private_replay")
        info = gt.service_info(core.store.begin()) or {}
        if info.get("status") != ss.ServiceStatus.WAITING_FOR_RECOVERY_SHARES:
            raise RecoveryError(
                f"the service is {info.get('status')}, not WaitingForRecoveryShares"
            )
        keep = self.recovery_target_seqno
        assert keep is not None
        if not secrets or len(secrets) > LEDGER_SECRETS_MAX:
            raise RecoveryError("no ledger secrets, or too many")
        ordered = sorted((int(start), bytes(secret)) for start, secret in secrets)
        if any(len(secret) != LEDGER_SECRET_BYTES for _, secret in ordered):
            raise RecoveryError(f"a ledger secret is not {LEDGER_SECRET_BYTES} bytes")
        if len({start for start, _ in ordered}) != len(ordered) or ordered[0][0] > 1:
            raise RecoveryError("the ledger secrets do not cover the ledger from seqno 1")
        old = [(start, secret) for start, secret in ordered if start <= keep]
        holder = Identity(node_key=self.core.identity.node_key, ledger_secrets=old)
        checked: list[tuple[int, WriteSet, str]] = []
        for seqno, raw in enumerate(self._raws, start=1):
            entry, _ = decode_entry(raw)
            secret = holder.secret_for(seqno)
            try:
                private = decrypt_private(entry, secret)
            except LedgerError:
                raise RecoveryError(f"the ledger secrets do not decrypt seqno {seqno}") from None
            evidence = commit_evidence(secret, entry.view, seqno)
            if commit_evidence_digest(evidence) != entry.commit_evidence_digest:
                raise RecoveryError(f"commit evidence of seqno {seqno} does not match")
            checked.append((seqno, private, evidence))
        self._private = checked
        self._secrets = old
        core.lifecycle.advance(NodeState.READING_PRIVATE_LEDGER)

    @property
    def private_replay_due(self) -> bool:
        return self._private is not None

    def finish_private_replay(self) -> None:
        """Put the checked private state back, adopt the old secrets, open the service."""
        checked = self._private
        assert checked is not None
        self._private = None
        core = self.core
        history, store = core.history, core.store
        for seqno, private, evidence in checked:
            if private:
                store.recover_private(private, seqno)
            history.set_commit_evidence(seqno, evidence)
        identity = core.identity
        identity.ledger_secrets = sorted(self._secrets + identity.ledger_secrets)
        self._secrets = []
        self._raws = []
        self._entries = []
        LOG.info("event=private_ledger_replayed seqno=%d", self.recovery_target_seqno or 0)

    @staticmethod
    def open_service(tx: Tx) -> None:
        """The transaction that opens the recovered service."""
        info = gt.service_info(tx)
        assert info is not None
        info["status"] = ss.ServiceStatus.OPEN
        gt.put_json(tx, ss.SERVICE_INFO, ss.SINGLETON_KEY, info)
