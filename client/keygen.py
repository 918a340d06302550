"""Member and user identities, made client-side (as CCF's keygenerator.sh does).

`<name>_privk.pem` (P-384 key, PKCS#8, mode 0600) and `<name>_cert.pem` (self-signed); for
members who take part in recovery, also `<name>_enc_privk.pem` (RSA, 0600) and
`<name>_enc_pubk.pem`, the RSA-OAEP key the service encrypts recovery shares to.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from charter.errors import IdentityError
from charter.identity import cert_id_of_pem
from charter.ledger.certs import (
    cert_pem,
    key_pem,
    new_key,
    new_rsa_encryption_key,
    public_key_pem,
    self_signed_cert,
)

log = logging.getLogger(__name__)

RSA_KEY_BITS_MIN = 2048
CERT_VALIDITY_DAYS_DEFAULT = 365
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class KeygenResult:
    name: str
    id: str
    cert_path: Path
    key_path: Path
    enc_priv_path: Path | None
    enc_pub_path: Path | None


def _write(path: Path, data: bytes, *, private: bool, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    # Private keys are created 0600 from the start, never readable by others even briefly.
    mode = 0o600 if private else 0o644
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise IdentityError(f"{path} already exists (use --force to overwrite)") from None
    except OSError as e:
        raise IdentityError(f"cannot write {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if private:
        os.chmod(path, 0o600)  # O_TRUNC on an existing file keeps its old mode


def generate_identity(
    name: str,
    directory: str | Path = ".",
    *,
    encryption_key: bool = False,
    rsa_bits: int = RSA_KEY_BITS_MIN,
    days: int = CERT_VALIDITY_DAYS_DEFAULT,
    overwrite: bool = False,
) -> KeygenResult:
    """Write a P-384 key and self-signed cert (and optionally an RSA-OAEP key pair) into
    `directory`, which is created if missing."""
    if not _NAME_RE.match(name):
        raise IdentityError(f"name must be 1-64 letters, digits, '_', '.', '-': {name!r}")
    if rsa_bits < RSA_KEY_BITS_MIN:
        raise IdentityError(f"RSA encryption keys must be at least {RSA_KEY_BITS_MIN} bits")
    if days <= 0:
        raise IdentityError("certificate validity must be at least one day")
    out = Path(directory)
    try:
        # `charter keygen user1 --dir workspace/new` should just work: make the folder.
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise IdentityError(f"output path exists and is not a directory: {out}") from None
    except OSError as e:
        raise IdentityError(f"cannot create output directory {out}: {e.strerror or e}") from None
    key = new_key()
    cert_pem_text = cert_pem(self_signed_cert(key, name, ca=False, days=days))
    cert_path = out / f"{name}_cert.pem"
    key_path = out / f"{name}_privk.pem"
    enc_priv_path = out / f"{name}_enc_privk.pem" if encryption_key else None
    enc_pub_path = out / f"{name}_enc_pubk.pem" if encryption_key else None
    if not overwrite:
        for p in (cert_path, key_path, enc_priv_path, enc_pub_path):
            if p is not None and p.exists():
                raise IdentityError(f"{p} already exists (use --force to overwrite)")
    _write(key_path, key_pem(key).encode("ascii"), private=True, overwrite=overwrite)
    _write(cert_path, cert_pem_text.encode("ascii"), private=False, overwrite=overwrite)
    if enc_priv_path is not None and enc_pub_path is not None:
        rsa_key = new_rsa_encryption_key(rsa_bits)
        enc_priv = key_pem(rsa_key).encode("ascii")
        enc_pub = public_key_pem(rsa_key.public_key()).encode("ascii")
        _write(enc_priv_path, enc_priv, private=True, overwrite=overwrite)
        _write(enc_pub_path, enc_pub, private=False, overwrite=overwrite)
    ident = cert_id_of_pem(cert_pem_text)
    log.info("identity generated name=%s id=%s", name, ident)
    return KeygenResult(name, ident, cert_path, key_path, enc_priv_path, enc_pub_path)
