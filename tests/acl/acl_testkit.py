"""Helpers for the ACL tests: real sandboxes serving the ACL app, and SDK clients.

The clients are the unmodified `azure-confidentialledger` SDK: a TLS client certificate
(`ConfidentialLedgerCertificateCredential`, a PEM holding the user's key and cert, as
`requests` wants it) and the service certificate as `ledger_certificate_path`, the only
trust anchor, with hostname checks against the URL.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from azure.confidentialledger import (
    ConfidentialLedgerCertificateCredential,
    ConfidentialLedgerClient,
)
from ccf import receipt as ccf_receipt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from charter.keygen import generate_identity
from charter.sandbox import Sandbox

ACL_APP = "charter.enclave_app.samples.acl"
# The SDK's client as tests use it. Its `begin_*` pollers and ItemPaged results come from
# modules it patches in at import time, which mypy does not see.
SdkClient = Any

# How often the SDK's pollers ask again (its default is 0.5 s).
POLL_S = 0.05


def start_sandbox(workspace: Path, nodes: int) -> Sandbox:
    sandbox = Sandbox(workspace, nodes=nodes, app=ACL_APP, signature_delay_ms=20)
    try:
        asyncio.run(sandbox.start())
    except BaseException:
        sandbox.stop()
        raise
    return sandbox


def credential_pem(sandbox: Sandbox, cert: Path, key: Path) -> Path:
    """The key and certificate in one PEM file (what `requests` takes as a client cert)."""
    combined = cert.parent / f"{cert.stem}_with_key.pem"
    if not combined.exists():
        combined.write_text(key.read_text() + cert.read_text())
    return combined


def sdk_client(
    sandbox: Sandbox,
    *,
    node: int = 0,
    identity: tuple[Path, Path] | None = None,
    host: str = "127.0.0.1",
) -> SdkClient:
    """An SDK client of node ``node`` as ``identity`` (cert, key; default user0)."""
    cert, key = identity or sandbox.user_paths(0)
    port = sandbox.nodes[node].rpc_address.rsplit(":", 1)[1]
    return ConfidentialLedgerClient(
        f"https://{host}:{port}",
        credential=ConfidentialLedgerCertificateCredential(str(credential_pem(sandbox, cert, key))),
        ledger_certificate_path=str(sandbox.service_cert_path),
    )


def anonymous_client(sandbox: Sandbox) -> SdkClient:
    """An SDK client presenting no client certificate (``connection_cert=None``)."""
    cert, key = sandbox.user_paths(0)
    port = sandbox.nodes[0].rpc_address.rsplit(":", 1)[1]
    return ConfidentialLedgerClient(
        f"https://127.0.0.1:{port}",
        credential=ConfidentialLedgerCertificateCredential(str(credential_pem(sandbox, cert, key))),
        ledger_certificate_path=str(sandbox.service_cert_path),
        connection_cert=None,
    )


def add_governance_user(sandbox: Sandbox, name: str) -> tuple[Path, Path]:
    """A new user registered by governance (proposal + ballots): it can open TLS sessions."""
    identity = generate_identity(name, sandbox.workspace / "users")

    async def propose() -> None:
        async with sandbox.client() as client:
            action = {"name": "set_user", "args": {"cert": identity.cert_path.read_text()}}
            await sandbox.pass_proposal(client, [action])

    asyncio.run(propose())
    return identity.cert_path, identity.key_path


def acl_user_id(cert: Path) -> str:
    """The id ACL gives a certificate user: its SHA-256 fingerprint, as `5F:23:…`."""
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def snake_receipt(acl_receipt: dict[str, Any]) -> dict[str, Any]:
    """ACL's camelCase receipt back in CCF's schema (the same values, CCF's key names)."""
    lc = acl_receipt["leafComponents"]
    return {
        "cert": acl_receipt["cert"],
        "is_signature_transaction": False,
        "leaf_components": {
            "claims_digest": lc["claimsDigest"],
            "commit_evidence": lc["commitEvidence"],
            "write_set_digest": lc["writeSetDigest"],
        },
        "node_id": acl_receipt["nodeId"],
        "proof": acl_receipt["proof"],
        "service_endorsements": acl_receipt.get("serviceEndorsements", []),
        "signature": acl_receipt["signature"],
    }


def ccf_verify(acl_receipt: dict[str, Any], service_pem: str) -> None:
    """CCF's own receipt helpers: leaf from its components, root from the proof, the node's
    signature over the root, and the node certificate's endorsement by the service."""
    lc = acl_receipt["leafComponents"]
    leaf = hashlib.sha256(
        bytes.fromhex(lc["writeSetDigest"])
        + hashlib.sha256(lc["commitEvidence"].encode()).digest()
        + bytes.fromhex(lc["claimsDigest"])
    ).hexdigest()
    root = ccf_receipt.root(leaf, acl_receipt["proof"])
    node_cert = x509.load_pem_x509_certificate(acl_receipt["cert"].encode())
    ccf_receipt.verify(root, acl_receipt["signature"], node_cert)
    service = x509.load_pem_x509_certificate(service_pem.encode())
    endorsements = [
        x509.load_pem_x509_certificate(pem.encode())
        for pem in acl_receipt.get("serviceEndorsements", [])
    ]
    ccf_receipt.check_endorsements(node_cert, service, endorsements)
