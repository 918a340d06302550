"""TLS server contexts of the enclave: the node certificate, and client certificates.

Python's `ssl` cannot load a private key from memory, so the key and certificate chain are
written to a private (0700) directory of this process for the instant of loading and removed
at once; under a real TEE that directory is enclave memory (a tmpfs inside the TEE).

Python's `ssl` has no verify callback either, so it cannot accept an unknown self-signed
client certificate and decide later (as CCF does). The context's trust anchors are therefore
the registered user and member certificates; the runtime rebuilds the context whenever
governance changes them, and new connections take the new one (`ServerTls.context`).
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

LOG = logging.getLogger(__name__)


def server_context(cert_chain_pem: str, key_pem: str, client_cas_pem: str) -> ssl.SSLContext:
    """A server context for the node certificate chain and key, asking for (not requiring)
    a client certificate among `client_cas_pem` when there are any."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="charter-tls-") as tmp:
        os.chmod(tmp, 0o700)
        cert_path = Path(tmp) / "cert.pem"
        key_path = Path(tmp) / "key.pem"
        cert_path.write_text(cert_chain_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key_pem)
        ctx.load_cert_chain(cert_path, key_path)
    if client_cas_pem:
        ctx.load_verify_locations(cadata=client_cas_pem)
        # Registered identities are self-signed leaves: let them anchor themselves.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ServerTls:
    """The current server context; `update` swaps in a new one (old connections keep theirs)."""

    def __init__(self) -> None:
        self._context: ssl.SSLContext | None = None
        self._cert_chain_pem = ""
        self._key_pem = ""
        self._client_cas: tuple[str, ...] = ()
        # Counts rebuilds, so a frontend process can be sent each new bundle once.
        self.generation = 0

    @property
    def context(self) -> ssl.SSLContext:
        assert self._context is not None, "TLS identity not set yet"
        return self._context

    @property
    def ready(self) -> bool:
        return self._context is not None

    def bundle(self) -> tuple[str, str, str]:
        """(certificate chain, key, client CAs) in PEM: what a frontend process builds the
        same context from (never the ledger secrets or the service key)."""
        assert self._context is not None, "TLS identity not set yet"
        return self._cert_chain_pem, self._key_pem, "".join(self._client_cas)

    def set_identity(self, cert_chain_pem: str, key_pem: str) -> None:
        self._cert_chain_pem = cert_chain_pem
        self._key_pem = key_pem
        self._rebuild()

    def set_client_cas(self, pems: Iterable[str]) -> None:
        cas = tuple(sorted(set(pems)))
        if cas != self._client_cas:
            self._client_cas = cas
            if self._cert_chain_pem:
                self._rebuild()

    def _rebuild(self) -> None:
        self._context = server_context(
            self._cert_chain_pem, self._key_pem, "".join(self._client_cas)
        )
        self.generation += 1
        LOG.info("event=tls_context_rebuilt client_cas=%d", len(self._client_cas))
