"""Identities, transaction ids and sandbox network files, as the client reads them.

Everything here reads files the user points at; each reader turns a missing, oversized or
malformed file into an `IdentityError` with one clear sentence, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, ValidationError

from charter.errors import IdentityError

log = logging.getLogger(__name__)

# PEM keys and certificates are a few KB; a network file a few tens of KB. Anything much
# larger is not what the user meant to pass.
PEM_FILE_BYTES_MAX = 64 * 1024
JSON_FILE_BYTES_MAX = 4 * 1024 * 1024

_TXID_RE = re.compile(r"^([0-9]{1,19})\.([0-9]{1,19})$")


@dataclass(frozen=True, slots=True)
class TxId:
    """A transaction id `view.seqno` (view = Raft term), as in `x-ms-ccf-transaction-id`."""

    view: int
    seqno: int

    def __post_init__(self) -> None:
        assert self.view >= 0 and self.seqno >= 0, "view and seqno are non-negative"

    @classmethod
    def parse(cls, text: str) -> TxId:
        match = _TXID_RE.match(text.strip())
        if match is None:
            raise ValueError(f"not a transaction id (expected VIEW.SEQNO, e.g. 2.15): {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.view}.{self.seqno}"


def read_bounded(path: Path, limit_bytes: int, what: str) -> bytes:
    """Read a whole file no larger than `limit_bytes`, with a clear error otherwise."""
    try:
        with path.open("rb") as f:
            data = f.read(limit_bytes + 1)
    except FileNotFoundError:
        raise IdentityError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise IdentityError(f"{what} is a directory, expected a file: {path}") from None
    except OSError as e:
        raise IdentityError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > limit_bytes:
        raise IdentityError(f"{what} {path} is larger than {limit_bytes} bytes")
    return data


def load_cert_pem(path: Path, what: str = "certificate") -> str:
    """Read a PEM certificate file and check that it parses; returns the PEM text."""
    data = read_bounded(path, PEM_FILE_BYTES_MAX, what)
    try:
        x509.load_pem_x509_certificate(data)
    except ValueError:
        raise IdentityError(f"{what} {path} is not a PEM X.509 certificate") from None
    return data.decode("ascii")


def load_private_key(path: Path, what: str = "private key") -> ec.EllipticCurvePrivateKey:
    """Read an unencrypted PEM EC private key (members and users sign with ECDSA)."""
    data = read_bounded(path, PEM_FILE_BYTES_MAX, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise IdentityError(f"{what} {path} is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise IdentityError(f"{what} {path} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "")
        raise IdentityError(
            f"{what} {path} is not an EC key ({kind or 'unknown type'}); members and users "
            "sign with ECDSA P-384/P-256 keys, e.g. from `charter keygen`"
        )
    return key


def cert_id_of_pem(cert_pem: str) -> str:
    """Member/user id: lowercase hex SHA-256 of the certificate's DER (FORMATS §4.1)."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True, slots=True)
class Identity:
    """A member's or user's certificate and private key, checked to belong together."""

    cert_pem: str
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    @property
    def id(self) -> str:
        return cert_id_of_pem(self.cert_pem)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> Identity:
        cert_pem = load_cert_pem(cert_path)
        key = load_private_key(key_path)
        cert_public = x509.load_pem_x509_certificate(cert_pem.encode("ascii")).public_key()
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if key.public_key().public_bytes(der, spki) != cert_public.public_bytes(der, spki):
            raise IdentityError(f"private key {key_path} does not match certificate {cert_path}")
        return cls(cert_pem=cert_pem, key=key, cert_path=cert_path, key_path=key_path)


def load_json_file(path: Path, what: str = "JSON file") -> Any:
    """Read a JSON document with a size limit; bad JSON is an `IdentityError` naming the line."""
    data = read_bounded(path, JSON_FILE_BYTES_MAX, what)
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise IdentityError(f"{what} {path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise IdentityError(
            f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno}"
        ) from None


# --- sandbox network.json ---------------------------------------------------------------------


class NetworkNode(BaseModel):
    model_config = ConfigDict(extra="allow")
    rpc_address: str


class NetworkParticipant(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    cert: str
    key: str
    encryption_key: str | None = None


class NetworkFile(BaseModel):
    """The sandbox's description of a running network (paths relative to the file)."""

    model_config = ConfigDict(extra="allow")
    service_cert: str
    nodes: list[NetworkNode] = []
    members: list[NetworkParticipant] = []
    users: list[NetworkParticipant] = []


@dataclass(frozen=True, slots=True)
class Network:
    """A loaded network.json with every path made absolute."""

    path: Path
    service_cert: Path
    urls: tuple[str, ...]
    members: tuple[tuple[Path, Path], ...]
    users: tuple[tuple[Path, Path], ...]
    # Each member's RSA encryption private key, where the file names one.
    member_encryption_keys: tuple[Path | None, ...] = ()

    @classmethod
    def load(cls, path: Path) -> Network:
        raw = load_json_file(path, "network file")
        try:
            doc = NetworkFile.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "document"
            raise IdentityError(f"network file {path}: {where}: {first['msg']}") from None
        base = path.parent

        def rel(p: str) -> Path:
            q = Path(p)
            return q if q.is_absolute() else base / q

        def url(address: str) -> str:
            return address if "://" in address else f"https://{address}"

        return cls(
            path=path,
            service_cert=rel(doc.service_cert),
            urls=tuple(url(n.rpc_address) for n in doc.nodes),
            members=tuple((rel(m.cert), rel(m.key)) for m in doc.members),
            users=tuple((rel(u.cert), rel(u.key)) for u in doc.users),
            member_encryption_keys=tuple(
                rel(m.encryption_key) if m.encryption_key else None for m in doc.members
            ),
        )

    def member(self, index: int) -> tuple[Path, Path]:
        if not 0 <= index < len(self.members):
            raise IdentityError(
                f"network file {self.path} has {len(self.members)} member(s); no member {index}"
            )
        return self.members[index]

    def member_encryption_key(self, index: int) -> Path:
        self.member(index)
        path = (
            self.member_encryption_keys[index] if index < len(self.member_encryption_keys) else None
        )
        if path is None:
            raise IdentityError(
                f"network file {self.path}: member {index} has no encryption_key; give --enc-key"
            )
        return path

    def user(self, index: int) -> tuple[Path, Path]:
        if not 0 <= index < len(self.users):
            raise IdentityError(
                f"network file {self.path} has {len(self.users)} user(s); no user {index}"
            )
        return self.users[index]
