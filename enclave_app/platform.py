"""The attestation and sealing platform behind which the enclave runs.

Only the `virtual` platform exists today. It has the interface an SEV-SNP or SGX platform
implements (a code measurement, a report binding data chosen by the enclave, sealing bound to
the measurement) but no hardware root of trust: its reports are plain JSON anyone could write
and its sealing key is a file in the workspace. It protects nothing, and says so in every
report it produces.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from charter.enclave_app.entropy import SYSTEM_ENTROPY, Entropy
from charter.ledger import quote as ledger_quote
from charter.ledger.quote import VIRTUAL_FORMAT, Evidence
from charter.ledger.quote import VirtualReport as Report

__all__ = ["VIRTUAL_FORMAT", "Evidence", "Platform", "PlatformError", "Report", "VirtualPlatform"]

LOG = logging.getLogger(__name__)

# The packages whose code runs inside the enclave process: the measurement covers them all.
ENCLAVE_PACKAGES = ("enclave_app", "ledger", "consensus", "governance")
SEALED_MAX_BYTES = 1024 * 1024
SEAL_NONCE_BYTES = 12


class PlatformError(Exception):
    """A report or sealed blob that cannot be parsed or does not verify."""

    code = "InvalidAttestation"


def _app_sources(app_module: str, base: Path) -> list[tuple[str, Path]]:
    """The source files of an app module that lives outside the enclave's own packages.

    Named by module and path inside the module (not by absolute path), so the same code
    measures the same on every machine. An app that cannot be found measures as nothing
    here: loading it fails right after, with its own error.
    """
    try:
        spec = importlib.util.find_spec(app_module)
    except (ImportError, ValueError):
        return []
    if spec is None or spec.origin is None:
        return []
    origin = Path(spec.origin).resolve()
    if origin.is_relative_to(base):
        return []  # a sample inside the enclave packages, measured with them
    if spec.submodule_search_locations:
        root = origin.parent
        return [
            (f"app:{app_module}/{path.relative_to(root).as_posix()}", path)
            for path in sorted(root.rglob("*.py"))
        ]
    return [(f"app:{app_module}/{origin.name}", origin)]


def code_measurement(root: Path | None = None, *, app_module: str | None = None) -> str:
    """SHA-256 over the enclave's code files (path and content, in a stable order), and over
    the app module's when it lives outside the enclave packages, as hex."""
    base = root or Path(__file__).resolve().parent.parent
    files = [
        (path.relative_to(base).as_posix(), path)
        for package in ENCLAVE_PACKAGES
        for path in sorted((base / package).rglob("*.py"))
    ]
    if app_module is not None:
        files += _app_sources(app_module, base.resolve())
    digest = hashlib.sha256()
    for name, path in files:
        content = path.read_bytes()
        digest.update(len(name).to_bytes(8, "little") + name.encode())
        digest.update(len(content).to_bytes(8, "little") + content)
    return digest.hexdigest()


class Platform(Protocol):
    """What the node needs from the machine it runs on: its code's measurement, sealing, and
    whether any of it is backed by hardware (`/node/version` reports `unsafe` when not)."""

    name: str
    is_secure: bool

    @property
    def measurement(self) -> str: ...

    def evidence(self, public_key_der: bytes) -> Evidence:
        """A report binding the SHA-256 of this node's public key, with its endorsements."""
        ...

    def seal(self, plaintext: bytes) -> bytes: ...

    def unseal(self, blob: bytes) -> bytes: ...


class VirtualPlatform:
    """Attestation and sealing without a TEE. Never use it where confidentiality matters."""

    name = "virtual"
    is_secure = False

    def __init__(
        self,
        workspace: Path,
        measurement: str | None = None,
        *,
        app_module: str | None = None,
        entropy: Entropy = SYSTEM_ENTROPY,
    ) -> None:
        self.workspace = workspace
        self.measurement = measurement or code_measurement(app_module=app_module)
        # Sealing nonces and a new sealing key come from here (seeded in the simulator).
        self.entropy = entropy

    # -- attestation -------------------------------------------------------------------------
    def report(self, public_key_der: bytes) -> Report:
        """A report binding this code's measurement to the SHA-256 of a node public key."""
        return Report(
            format=VIRTUAL_FORMAT,
            measurement=self.measurement,
            report_data=hashlib.sha256(public_key_der).hexdigest(),
        )

    @staticmethod
    def verify_report(
        raw: bytes, *, public_key_der: bytes, accepted_measurements: set[str]
    ) -> Report:
        """Check a joining node's report: right format, accepted code, bound to its key."""
        try:
            return ledger_quote.verify_virtual_report(
                raw, public_key_der=public_key_der, accepted_measurements=accepted_measurements
            )
        except ledger_quote.QuoteError as exc:
            raise PlatformError(str(exc)) from None

    def evidence(self, public_key_der: bytes) -> Evidence:
        return Evidence(format=VIRTUAL_FORMAT, quote=self.report(public_key_der).to_bytes())

    # -- sealing -----------------------------------------------------------------------------
    def _sealing_key(self) -> bytes:
        path = self.workspace / "virtual_sealing_key.bin"
        if not path.exists():
            LOG.warning("event=sealing_key_created path=%s protects=nothing", path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(self.entropy.token_bytes(32))
        key = path.read_bytes()
        if len(key) != 32:
            raise PlatformError("virtual sealing key file is damaged")
        return key

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt for this platform and this code measurement only."""
        nonce = self.entropy.token_bytes(SEAL_NONCE_BYTES)
        sealed = AESGCM(self._sealing_key()).encrypt(nonce, plaintext, self.measurement.encode())
        return nonce + sealed

    def unseal(self, blob: bytes) -> bytes:
        if not SEAL_NONCE_BYTES + 16 <= len(blob) <= SEALED_MAX_BYTES:
            raise PlatformError("sealed blob has an impossible size")
        try:
            return AESGCM(self._sealing_key()).decrypt(
                blob[:SEAL_NONCE_BYTES], blob[SEAL_NONCE_BYTES:], self.measurement.encode()
            )
        except Exception:
            raise PlatformError(
                "cannot unseal: sealed by other code (measurement changed) or damaged"
            ) from None
