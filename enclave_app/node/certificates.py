"""The service and node certificates over time: issued for the periods governance sets,
and taken up by every node from the KV without a restart.

The primary issues them while applying a proposal (`apply`): the service certificate is
re-issued with the same key and subject (`certs.renew_service_cert`) and written to
`public:ccf.gov.service.info`, node certificates are endorsed again and written to
`public:ccf.gov.nodes.endorsed_certificates`. Every node, the primary included, watches
those tables (`adopt`) and swaps its TLS identity when its own entry changes: new
connections get the new certificate, connections already open keep theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from cryptography import x509

from charter.enclave_app.identity import LEDGER_SECRET_BYTES, Identity
from charter.enclave_app.interface.config import (
    SAN_COUNT_MAX,
    address_host,
    host_san,
    parse_san,
)
from charter.enclave_app.kv import Tx
from charter.enclave_app.node.core import NodeCore
from charter.governance import tables as gt
from charter.governance.cert_validity import parse_valid_from
from charter.governance.effects import NodeEndorsement, ServiceRenewal
from charter.governance.errors import GovernanceError
from charter.ledger import certs
from charter.ledger.errors import LedgerError

LOG = logging.getLogger(__name__)


def split_sans(sans: Iterable[str]) -> tuple[list[str], list[str]]:
    """('iPAddress:…', 'dNSName:…') strings -> (IP addresses, DNS names); ValueError."""
    ips: list[str] = []
    dns: list[str] = []
    for san in sans:
        kind, value = parse_san(san)
        (ips if kind == "iPAddress" else dns).append(value)
    return ips, dns


def recorded_sans(info: dict[str, Any]) -> list[str]:
    """The names a node's record asks for on its RPC interface. The record comes from the
    node itself (its join request), so it is checked as outside input: at most
    SAN_COUNT_MAX well-formed names. A record without names (written before they were
    recorded) gets the name of its published address."""
    interface = (info.get("rpc_interfaces") or {}).get("primary_rpc_interface") or {}
    sans = interface.get("subject_alt_names")
    if sans is None:
        published = str(interface.get("published_address") or "")
        host = address_host(published)
        if not host:
            raise ValueError("the node's record has no published RPC address")
        return [host_san(host)]
    if not isinstance(sans, list) or not 0 < len(sans) <= SAN_COUNT_MAX:
        raise ValueError(f"subject_alt_names must list 1 to {SAN_COUNT_MAX} names")
    if not all(isinstance(s, str) for s in sans):
        raise ValueError("subject_alt_names must be strings")
    split_sans(sans)
    return list(sans)


def endorse(
    core: NodeCore,
    public_key: Any,
    sans: Sequence[str],
    *,
    days: int,
    valid_from: str | None,
    issuer_cert: x509.Certificate | None = None,
    identity: Identity | None = None,
) -> str:
    """A node certificate issued by the service key naming exactly `sans` (it never
    outlives the service certificate `issuer_cert`, by default the current one)."""
    ips, dns = split_sans(sans)
    identity = identity or core.identity
    assert identity.service_key is not None
    start = parse_valid_from(valid_from) if valid_from is not None else None
    return certs.cert_pem(
        certs.endorse(
            public_key,
            identity.service_key,
            issuer_cert or identity.service_cert,
            san_ips=ips,
            san_dns=dns,
            days=days,
            valid_from=start,
            issuance=core.entropy.issuance(core.clock_s()),
        )
    )


def renew_service(core: NodeCore, tx: Tx, renewal: ServiceRenewal) -> x509.Certificate:
    """Re-issue the service certificate (same key) and record it in the service info; the
    node takes it up when the transaction is applied (`adopt`)."""
    identity = core.identity
    assert identity.service_key is not None
    info = gt.service_info(tx)
    assert info is not None, "checked by the action"
    cert = certs.renew_service_cert(
        identity.service_key,
        identity.service_cert,
        days=renewal.validity_period_days,
        valid_from=parse_valid_from(renewal.valid_from),
        issuance=core.entropy.issuance(core.clock_s()),
    )
    info["cert"] = certs.cert_pem(cert)
    gt.put_json(tx, gt.SERVICE_INFO, gt.SINGLETON_KEY, info)
    LOG.info("event=service_cert_renewed not_after=%s", cert.not_valid_after_utc.isoformat())
    return cert


def new_service_identity(core: NodeCore, first_secret_seqno: int) -> Identity:
    """A new node key, a new service key and certificate, the node certificate it endorses,
    and a fresh ledger secret for the entries from `first_secret_seqno` on: what a genesis
    and a recovery each start the service they create with."""
    node_key = core.entropy.new_ec_key()
    service_key = core.entropy.new_ec_key()
    service_cert = certs.service_cert(
        service_key,
        days=core.config.start.service_certificate_initial_validity_days,
        issuance=core.entropy.issuance(core.clock_s()),
    )
    identity = Identity(
        node_key=node_key,
        service_key=service_key,
        service_cert_pem=certs.cert_pem(service_cert),
    )
    identity.add_ledger_secret(first_secret_seqno, core.entropy.token_bytes(LEDGER_SECRET_BYTES))
    identity.node_cert_pem = endorse(
        core,
        node_key.public_key(),
        core.config.rpc_subject_alt_names(),
        days=core.config.start.node_certificate_initial_validity_days,
        valid_from=None,
        identity=identity,
    )
    return identity


def endorse_node(
    core: NodeCore, tx: Tx, endorsement: NodeEndorsement, issuer_cert: x509.Certificate
) -> None:
    info = gt.node_info(tx, endorsement.node_id)
    if info is None or not info.get("public_key"):
        raise GovernanceError(f"node {endorsement.node_id} has no public key", code="InvalidNode")
    try:
        sans = recorded_sans(info)
    except ValueError as exc:
        raise GovernanceError(f"node {endorsement.node_id}: {exc}", code="InvalidNode") from None
    days = endorsement.validity_period_days
    assert days is not None, "governance resolves the period"
    pem = endorse(
        core,
        certs.load_public_key(info["public_key"]),
        sans,
        days=days,
        valid_from=endorsement.valid_from,
        issuer_cert=issuer_cert,
    )
    tx.put(gt.NODES_ENDORSED_CERTIFICATES, gt.id_key(endorsement.node_id), pem.encode())


def adopt(core: NodeCore) -> None:
    """Take up the service and own node certificates the KV holds now, if they are new and
    for this node's keys (after a recovery the old service's entries name another key)."""
    identity = core.identity
    tx = core.store.begin()
    info = gt.service_info(tx) or {}
    pem = str(info.get("cert") or "")
    if pem and identity.service_cert_pem and pem != identity.service_cert_pem:
        try:
            same_key = certs.load_cert(pem).public_key() == identity.service_cert.public_key()
        except LedgerError:
            same_key = False
        if same_key:
            identity.service_cert_pem = pem
            LOG.info("event=service_cert_adopted")
    raw = tx.get(gt.NODES_ENDORSED_CERTIFICATES, gt.id_key(identity.node_id))
    if raw is None or not identity.node_cert_pem or raw.decode() == identity.node_cert_pem:
        return
    try:
        cert = certs.load_cert(raw)
    except LedgerError:
        LOG.error("event=node_cert_refused reason=unreadable")
        return
    if cert.public_key() != identity.node_key.public_key():
        LOG.error("event=node_cert_refused reason=other_key")
        return
    identity.node_cert_pem = raw.decode()
    core.tls.set_identity(identity.node_cert_pem, certs.key_pem(identity.node_key))
    LOG.info("event=node_cert_adopted not_after=%s", cert.not_valid_after_utc.isoformat())
