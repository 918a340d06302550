"""Ledger rekey and the recovery shares that follow the secrets, on every node.

`LedgerSecrets` carries out the two effects governance leaves to the runtime:

- `rekey` (primary, inside the accepted proposal's transaction at seqno s): a fresh ledger
  secret that applies from s + 1. As CCF, the primary writes it to
  `public:ccf.internal.encrypted_ledger_secrets` sealed to each trusted node's key (CCF seals
  to each node's encryption key; a Charter node's key is its P-384 identity key, so the
  seal is `channels.seal_to`: ECDH + HKDF + AES-GCM), so a retired node never learns it.
  The previous secret goes into the chain, encrypted under the new one (and, in CCF's
  shape, into `public:ccf.internal.historical_encrypted_ledger_secret`), and shares are
  re-issued for the new secret.
- `refresh_recovery_shares`: new shares for the latest secret.

Every node, the primary included, installs a new secret from the replicated record itself
(a KV hook on the table, at s + 1), whether the entry is committed by the primary, applied
by a backup, or replayed by a restarted node; a rollback of the rekey's entry removes the
secret again. Joiners get every secret in their join answer (joins.py).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from charter.enclave_app.channels import ChannelError, open_sealed, seal_to
from charter.enclave_app.identity import LEDGER_SECRET_BYTES
from charter.enclave_app.kv import MapChange, Tx
from charter.enclave_app.node import shares
from charter.enclave_app.node.core import NodeCore
from charter.enclave_app.node.lifecycle import NodeState
from charter.governance import tables as gt
from charter.governance.effects import Effects
from charter.governance.errors import GovernanceError
from charter.ledger import certs
from charter.ledger.errors import LedgerError
from charter.ledger.service_state import (
    ENCRYPTED_LEDGER_SECRETS,
    HISTORICAL_ENCRYPTED_LEDGER_SECRET,
    SINGLETON_KEY,
    NodeStatus,
)

LOG = logging.getLogger(__name__)

# A sealed secret for one node: 2 + DER of a P-384 key + nonce/tag + 32 bytes, with room.
SEALED_SECRET_BYTES_MAX = 1024


class LedgerSecrets:
    """Rekey and share issuance (primary) and secret installation (every node)."""

    def __init__(self, core: NodeCore, seal: Callable[[], None]) -> None:
        self.core = core
        self._seal = seal
        core.store.add_hook(ENCRYPTED_LEDGER_SECRETS, self._on_change)

    # ------------------------------------------------------------------ primary, in a tx
    def apply_effects(self, tx: Tx, effects: Effects) -> None:
        if effects.rekey:
            self.rekey(tx)
        elif effects.refresh_recovery_shares:
            if self.core.lifecycle.is_(
                NodeState.PART_OF_PUBLIC_NETWORK, NodeState.READING_PRIVATE_LEDGER
            ):
                # A recovering service: the record must keep the old service's shares, which
                # the members are submitting; the service issues new ones, for the members
                # and threshold then in force, in the transaction that opens it.
                LOG.info("event=recovery_shares_refresh_deferred reason=recovering")
            else:
                self.refresh_shares(tx)

    def refresh_shares(self, tx: Tx) -> bool:
        start, secret = self.core.identity.ledger_secrets[-1]
        return shares.issue_shares(
            tx,
            latest_version=start,
            latest_secret=secret,
            random_bytes=self.core.entropy.token_bytes,
        )

    def rekey(self, tx: Tx) -> int:
        """A fresh ledger secret from the seqno after this transaction's; that seqno."""
        core = self.core
        identity = core.identity
        # One transaction runs at a time on the primary: this one commits at version + 1.
        seqno = core.store.version + 1
        start = seqno + 1
        previous_start, previous = identity.ledger_secrets[-1]
        assert previous_start < start
        secret = core.entropy.token_bytes(LEDGER_SECRET_BYTES)
        for_nodes: dict[str, list[dict[str, Any]]] = {}
        for key, raw in sorted(tx.items(gt.NODES_INFO)):
            info = gt.load_json(raw, what=gt.NODES_INFO)
            if not isinstance(info, dict) or info.get("status") != NodeStatus.TRUSTED:
                continue
            public_key = certs.load_public_key(str(info.get("public_key", "")))
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise GovernanceError("a trusted node's key is not ECDSA", code="InternalError")
            sealed = seal_to(public_key, secret, ephemeral=core.entropy.new_ec_key())
            for_nodes[gt.key_to_id(key)] = [
                {"version": start, "encrypted_secret": base64.b64encode(sealed).decode()}
            ]
        assert identity.node_id in for_nodes, "the primary is a trusted node"
        gt.put_json(tx, ENCRYPTED_LEDGER_SECRETS, SINGLETON_KEY, for_nodes)
        wrapped = shares.wrap_previous_secret(
            tx,
            previous_start=previous_start,
            previous=previous,
            next_start=start,
            successor=secret,
            iv=core.entropy.token_bytes(shares.GCM_IV_BYTES),
        )
        historical: dict[str, Any] = {
            "encrypted_data": base64.b64encode(wrapped).decode(),
            "version": previous_start,
        }
        stored = tx.version_of(HISTORICAL_ENCRYPTED_LEDGER_SECRET, SINGLETON_KEY)
        if stored is not None:
            historical["previous_secret_stored_version"] = stored
        gt.put_json(
            tx,
            HISTORICAL_ENCRYPTED_LEDGER_SECRET,
            SINGLETON_KEY,
            {"previous_ledger_secret": historical},
        )
        shares.issue_shares(
            tx, latest_version=start, latest_secret=secret, random_bytes=core.entropy.token_bytes
        )
        LOG.info("event=rekey seqno=%d new_secret_from=%d nodes=%d", seqno, start, len(for_nodes))
        return start

    # ------------------------------------------------------------------ every node
    def _on_change(self, change: MapChange) -> None:
        identity = self.core.maybe_identity()
        if identity is None or not identity.ledger_secrets:
            # A joiner before its answer: the answer brings every secret, this one included.
            return
        if change.reason == "rollback":
            kept = [(s, k) for s, k in identity.ledger_secrets if s <= change.version + 1]
            if len(kept) != len(identity.ledger_secrets):
                LOG.warning("event=ledger_secret_rolled_back to=%d", change.version)
                identity.ledger_secrets = kept
                self._seal()
            return
        raw = self.core.store.begin().get(ENCRYPTED_LEDGER_SECRETS, SINGLETON_KEY)
        if raw is None:
            return
        try:
            mine = gt.load_json(raw, what=ENCRYPTED_LEDGER_SECRETS).get(identity.node_id) or []
            offers = [(int(item["version"]), str(item["encrypted_secret"])) for item in mine]
        except (GovernanceError, AttributeError, KeyError, TypeError, ValueError):
            LOG.error("event=ledger_secrets_record_malformed version=%d", change.version)
            return
        known = {start for start, _ in identity.ledger_secrets}
        added = False
        for start, text in offers:
            if start in known:
                continue  # a replay of the own ledger, or a joiner given it already
            if start <= identity.ledger_secrets[-1][0]:
                LOG.error("event=ledger_secret_out_of_order start=%d", start)
                continue
            try:
                sealed = base64.b64decode(text, validate=True)
                if len(sealed) > SEALED_SECRET_BYTES_MAX:
                    raise ValueError("too large")
                secret = open_sealed(identity.node_key, sealed)
            except (binascii.Error, ValueError, ChannelError, LedgerError):
                LOG.error("event=ledger_secret_unreadable start=%d", start)
                continue
            identity.add_ledger_secret(start, secret)
            added = True
            LOG.info("event=ledger_secret_installed start=%d", start)
        if added:
            self._seal()
