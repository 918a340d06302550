"""The node config: the operator's JSON file, validated (pydantic) and with absolute paths."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from charter.enclave_app.interface.errors import InterfaceError
from charter.enclave_app.interface.limits import ENDORSEMENTS_SERVERS_MAX, MAX_CONFIG_BYTES
from charter.ledger.signatures import check_cose_issuer, check_cose_subject


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


def _check_address(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected 'host:port' with a port in 0..65535, got {v!r}")
    return v


Address = Annotated[str, pydantic.AfterValidator(_check_address)]

# A node certificate's subject alternative names, in CCF's notation.
SAN_COUNT_MAX = 64
SAN_BYTES_MAX = 253  # the longest DNS name
_SAN_KINDS = ("dNSName", "iPAddress")
_UNSPECIFIED_HOSTS = frozenset({"0.0.0.0", "::", ""})


def address_host(address: str) -> str:
    """The host part of 'host:port' ('[v6]:port' without its brackets)."""
    host = address.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def parse_san(text: str) -> tuple[str, str]:
    """'dNSName:name' or 'iPAddress:addr' -> (kind, value); ValueError otherwise."""
    if len(text) > SAN_BYTES_MAX + len("iPAddress:"):
        raise ValueError(f"subject alternative name longer than {SAN_BYTES_MAX} bytes")
    kind, sep, value = text.partition(":")
    if not sep or kind not in _SAN_KINDS or not value:
        raise ValueError(f"expected 'dNSName:NAME' or 'iPAddress:ADDRESS', got {text!r}")
    if kind == "iPAddress":
        try:
            parsed = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
        if parsed.is_unspecified:
            raise ValueError(f"{value!r} names no host and cannot be a certificate's name")
        return kind, str(parsed)
    labels = value.rstrip(".").split(".")
    if labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]  # a wildcard names the labels below it
    if not all(0 < len(label) <= 63 and label.replace("-", "").isalnum() for label in labels):
        raise ValueError(f"{value!r} is not a DNS name")
    return kind, value


def host_san(host: str) -> str:
    """The SAN naming `host`: an IP address or a DNS name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"dNSName:{host}"
    return f"iPAddress:{host}"


def _check_sans(values: list[str]) -> list[str]:
    return [":".join(parse_san(v)) for v in values]


def _resolve_path(v: Path, info: pydantic.ValidationInfo) -> Path:
    # load_config passes the config file's directory: relative paths are relative to it.
    base = (info.context or {}).get("base_dir")
    return v if base is None or v.is_absolute() else Path(base) / v


ConfigPath = Annotated[Path, pydantic.AfterValidator(_resolve_path)]


_SIZE = re.compile(r"\s*([0-9]{1,15})\s*(B|KB|MB|GB)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
# A cache smaller than this could not hold one largest entry's state.
HISTORICAL_CACHE_BYTES_MIN = 1024 * 1024


def _size_bytes(value: object) -> int:
    """A size as CCF writes it ("512MB", "1GB", "64KB") or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string such as '512MB'")
    if isinstance(value, str):
        found = _SIZE.fullmatch(value)
        if found is None:
            raise ValueError(f"not a size: {value[:32]!r} (e.g. '512MB')")
        value = int(found.group(1)) * _SIZE_UNITS[(found.group(2) or "").upper()]
    if not isinstance(value, int) or value < HISTORICAL_CACHE_BYTES_MIN:
        raise ValueError(f"a size of at least {HISTORICAL_CACHE_BYTES_MIN} bytes")
    return value


class SignaturesConfig(_Model):
    """When the primary signs: after `tx_count` writes, or `delay_ms` after the last
    signature while writes wait unsigned. While the node is not queueing writes (its turns
    serve a few writes each, see `Replication.end_turn`), `light_load_delay_ms` takes the
    place of `delay_ms` when shorter: a signature costs CPU the node then has to spare, and
    commits come sooner. 0 turns that off."""

    tx_count: int = pydantic.Field(default=100, ge=1)
    delay_ms: int = pydantic.Field(default=50, ge=1)
    light_load_delay_ms: int = pydantic.Field(default=5, ge=0)

    @pydantic.model_validator(mode="after")
    def _light_load_shorter(self) -> SignaturesConfig:
        if "light_load_delay_ms" in self.model_fields_set and (
            self.light_load_delay_ms > self.delay_ms
        ):
            raise ValueError("light_load_delay_ms must not exceed delay_ms (0 turns it off)")
        return self


class MemoryConfig(_Model):
    """What the enclave keeps in memory; older data is read back from the ledger files."""

    raft_log_entries: int = pydantic.Field(default=20_000, ge=10)
    receipt_transactions: int = pydantic.Field(default=200_000, ge=10)


class IndexingConfig(_Model):
    """The app's index strategies (`App.install_index`): how much of them the enclave keeps."""

    # Completed buckets each strategy keeps in memory (besides the one being filled); older
    # ones are sealed and handed to the host, and fetched back when a query needs them. It
    # is also the widest range one query may span, in buckets.
    buckets_in_memory: int = pydantic.Field(default=64, ge=1, le=65_536)


class SnapshotsConfig(_Model):
    tx_count: int = pydantic.Field(default=10_000, ge=1)


class FilesCleanupConfig(_Model):
    """CCF's `files_cleanup`: what the host may delete, so that the disk stays bounded.

    Nothing is deleted by default. Snapshots: only committed ones beyond the newest
    `max_snapshots`. Ledger chunks: only committed ones that end before the latest committed
    snapshot (so the snapshot, its evidence and everything after it stay here for a restart
    or a joiner) and of which `ledger_archive_dir` holds a file of the same name whose
    SHA-256, read back from the archive, is that of the local file.
    """

    max_snapshots: int | None = pydantic.Field(default=None, ge=1)
    ledger_archive_dir: ConfigPath | None = None
    # How often, at most, the host looks for files to delete (after a commit).
    interval_ms: int = pydantic.Field(default=1000, ge=10, le=3_600_000)


OperatorFeature = Literal["SnapshotRead", "LedgerChunkRead"]


class ConsensusConfig(_Model):
    election_timeout_ms: tuple[int, int] = (1000, 2000)
    heartbeat_ms: int = pydantic.Field(default=100, ge=1)
    # Backpressure (CCF's name): the primary answers writes with 503 while this many
    # transactions are uncommitted; 0 means no limit.
    max_uncommitted_tx_count: int = pydantic.Field(default=10_000, ge=0)

    @pydantic.model_validator(mode="after")
    def _timeouts(self) -> ConsensusConfig:
        low, high = self.election_timeout_ms
        if not 0 < low <= high:
            raise ValueError("election_timeout_ms must be [low, high] with 0 < low <= high")
        if self.heartbeat_ms >= low:
            raise ValueError("heartbeat_ms must be below the election timeout")
        return self


class RpcInterfaceConfig(_Model):
    """Limits of the client (RPC) interface; the session caps keep CCF's names and defaults."""

    # Past the soft cap a new session is answered 503 and closed; past the hard cap it is
    # closed at once, before any TLS.
    max_open_sessions_soft: int = pydantic.Field(default=1000, ge=1)
    max_open_sessions_hard: int = pydantic.Field(default=1010, ge=1)
    # A session that sends nothing for this long between requests is closed (CCF's
    # idle_connection_timeout).
    idle_connection_timeout_ms: int = pydantic.Field(default=60_000, ge=100)
    # The TLS handshake, and each request line with its headers from its first byte, must
    # arrive within this (against clients that trickle a byte at a time).
    request_header_timeout_ms: int = pydantic.Field(default=10_000, ge=100)
    # A request's whole body must arrive within this after its headers.
    request_read_timeout_ms: int = pydantic.Field(default=30_000, ge=100)
    # The node certificate's subject alternative names for this interface, CCF's notation
    # ("dNSName:node1.example.com", "iPAddress:10.0.0.1", "iPAddress:fd00::1"), and nothing
    # else. Empty: the one name of the published (else bound) address's host.
    subject_alt_names: Annotated[
        list[str], pydantic.Field(max_length=SAN_COUNT_MAX), pydantic.AfterValidator(_check_sans)
    ] = []
    # Operator features served on this interface (CCF's `enabled_operator_features`, per
    # interface as in CCF): "SnapshotRead" serves /node/snapshot[/{name}], "LedgerChunkRead"
    # /node/ledger-chunk[/{name}]. Elsewhere those endpoints answer 403.
    enabled_operator_features: list[OperatorFeature] = []

    @pydantic.model_validator(mode="after")
    def _caps(self) -> RpcInterfaceConfig:
        if self.max_open_sessions_hard < self.max_open_sessions_soft:
            raise ValueError("max_open_sessions_hard must be at least max_open_sessions_soft")
        return self


class ConsoleConfig(_Model):
    """The browser console served at /console on the node's RPC interface."""

    enabled: bool = True
    # Who may read ledger entries through the console's explorer (/node/ledger/entries):
    # callers with a registered user or member TLS certificate, or (with "anonymous") anyone.
    ledger_explorer: list[Literal["user_cert", "member_cert", "anonymous"]] = [
        "user_cert",
        "member_cert",
    ]


class JwtConfig(_Model):
    """JWT issuers' keys: how often the primary fetches those of auto-refreshed issuers."""

    # CCF's `jwt.key_refresh_interval_s` (default 30 minutes).
    key_refresh_interval_s: int = pydantic.Field(default=1800, ge=1, le=7 * 24 * 3600)


class MemberConfig(_Model):
    cert: ConfigPath
    encryption_key: ConfigPath | None = None
    data: Any = None


class JoinConfig(_Model):
    target: Address
    service_cert: ConfigPath
    # CCF's `join.fetch_recent_snapshot`: before joining, GET /node/snapshot from the target
    # (any trusted node whose interface enables SnapshotRead) and start from it once trusted,
    # if it verifies. Off by default: the join answer carries the primary's snapshot anyway.
    fetch_recent_snapshot: bool = False


class EndorsementsServer(_Model):
    """Where the host may fetch a VCEK chain (CCF's `attestation.snp_endorsements_servers`)."""

    # "AMD": AMD's Key Distribution Service paths (/vcek/v1/{product}/{hwid}?…SPL=…, and
    # /vcek/v1/{product}/cert_chain), at AMD or at a cache that mirrors them. "Azure": the
    # Azure attestation cache (/SevSnpVM/certificates/{chip id}/{tcb}, JSON answer).
    type: Literal["AMD", "Azure"] = "AMD"
    # host[:port] (HTTPS, as CCF), or a base URL with its scheme: http://127.0.0.1:8080.
    url: str = pydantic.Field(default="kdsintf.amd.com", min_length=1, max_length=512)
    # Further tries of this server after a connection failure, timeout or 5xx answer.
    max_retries_count: int = pydantic.Field(default=3, ge=0, le=10)
    # Each HTTP request to this server must complete within this.
    timeout_ms: int = pydantic.Field(default=10_000, ge=100, le=120_000)

    @pydantic.field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        scheme, sep, rest = v.partition("://")
        if sep and scheme not in ("http", "https"):
            raise ValueError("url scheme must be http or https")
        host = (rest if sep else v).split("/", 1)[0]
        if not host or any(c.isspace() for c in v) or "?" in v or "#" in v:
            raise ValueError(f"expected host[:port] or http(s)://host[:port][/path], got {v!r}")
        return v.rstrip("/")


class SnpConfig(_Model):
    """Settings of the `snp` platform (ignored on `virtual`)."""

    # PEM: the chip's VCEK, then AMD's ASK and ARK. Without it, the certificates the host
    # provisioned with the report (configfs-tsm's auxblob) are used, else the host fetches
    # them from `endorsements_servers`; the enclave verifies them up to AMD's pinned roots
    # whichever way they came.
    endorsements_file: str | None = pydantic.Field(default=None, max_length=4096)
    # Tried in order (the next one when one fails or serves endorsements the enclave refuses).
    endorsements_servers: list[EndorsementsServer] = pydantic.Field(
        default=[], max_length=ENDORSEMENTS_SERVERS_MAX
    )


class CoseSignaturesConfig(_Model):
    """CCF's `cose_signatures`: the CWT claims of the service's COSE root signatures, so of
    every COSE receipt. Both fields are required when the section is given, as in CCF."""

    issuer: Annotated[str, pydantic.AfterValidator(check_cose_issuer)]
    subject: Annotated[str, pydantic.AfterValidator(check_cose_subject)]


class StartConfig(_Model):
    mode: Literal["start", "join", "recover"] = "start"
    members: list[MemberConfig] = []
    constitution: ConfigPath | None = None
    service_config: dict[str, Any] = {}
    join: JoinConfig | None = None
    cose_signatures: CoseSignaturesConfig | None = None
    # Validity of the certificates the first node issues at genesis (CCF's
    # service_certificate_initial_validity_days and node_certificate.initial_validity_days);
    # each at most the service_config's maximum_*_certificate_validity_days (default 365).
    service_certificate_initial_validity_days: int = pydantic.Field(default=365, ge=1)
    node_certificate_initial_validity_days: int = pydantic.Field(default=365, ge=1)
    # mode 'recover' only (CCF's `previous_service_identity`): the PEM certificate of the
    # service whose ledger this node recovers. Every signature of the old ledger must chain
    # to it, and the new service identity endorses it.
    previous_service_identity: ConfigPath | None = None

    @pydantic.model_validator(mode="after")
    def _validity(self) -> StartConfig:
        for what in ("service", "node"):
            days = getattr(self, f"{what}_certificate_initial_validity_days")
            limit = self.service_config.get(f"maximum_{what}_certificate_validity_days", 365)
            if isinstance(limit, int) and days > limit:
                raise ValueError(
                    f"{what}_certificate_initial_validity_days {days} exceeds "
                    f"service_config.maximum_{what}_certificate_validity_days {limit}"
                )
        return self

    @pydantic.model_validator(mode="after")
    def _mode(self) -> StartConfig:
        if self.mode == "start" and not self.members:
            raise ValueError("mode 'start' needs at least one member")
        if self.mode == "join" and self.join is None:
            raise ValueError("mode 'join' needs a 'join' section (target, service_cert)")
        if self.mode == "join" and self.cose_signatures is not None:
            # A joining node signs with the service's setting, recorded when it started.
            raise ValueError("mode 'join' takes cose_signatures from the service; remove it")
        if self.mode == "recover" and self.previous_service_identity is None:
            raise ValueError(
                "mode 'recover' needs previous_service_identity (the old service certificate)"
            )
        if self.mode != "recover" and self.previous_service_identity is not None:
            raise ValueError("previous_service_identity is only for mode 'recover'")
        return self


class NodeConfig(_Model):
    """The operator's node config. `load_config` makes every path absolute."""

    workspace: ConfigPath
    ledger_dir: ConfigPath | None = None
    snapshots_dir: ConfigPath | None = None
    rpc_address: Address = "127.0.0.1:0"
    published_rpc_address: Address | None = None
    rpc_interface: RpcInterfaceConfig = pydantic.Field(default_factory=RpcInterfaceConfig)
    # Processes that serve TLS and HTTP for the enclave (0: the enclave process itself).
    frontends: int = pydantic.Field(default=1, ge=0, le=64)
    node_to_node_address: Address = "127.0.0.1:0"
    # What peers dial (e.g. a relay in front of this node); defaults to node_to_node_address.
    published_node_to_node_address: Address | None = None
    app: str = "charter.enclave_app.samples.logging"
    platform: Literal["virtual", "snp"] = "virtual"
    snp: SnpConfig = pydantic.Field(default_factory=SnpConfig)
    tick_ms: int = pydantic.Field(default=10, ge=1, le=10_000)
    ledger_chunk_bytes: int = pydantic.Field(default=5_000_000, ge=1024)
    signatures: SignaturesConfig = pydantic.Field(default_factory=SignaturesConfig)
    snapshots: SnapshotsConfig = pydantic.Field(default_factory=SnapshotsConfig)
    memory: MemoryConfig = pydantic.Field(default_factory=MemoryConfig)
    # CCF's name: the soft byte limit of the historical query cache ("512MB" or bytes).
    historical_cache_soft_limit: Annotated[int, pydantic.BeforeValidator(_size_bytes)] = (
        512 * 1024 * 1024
    )
    indexing: IndexingConfig = pydantic.Field(default_factory=IndexingConfig)
    consensus: ConsensusConfig = pydantic.Field(default_factory=ConsensusConfig)
    # Older spelling of rpc_interface.enabled_operator_features (merged into it).
    enabled_operator_features: list[OperatorFeature] = []
    # Directories of committed ledger chunks this node only reads (CCF's
    # `ledger.read_only_directories`): catch-up and historical reads look there (and in
    # files_cleanup.ledger_archive_dir) for entries the ledger directory does not hold.
    ledger_read_only_dirs: list[ConfigPath] = pydantic.Field(default=[], max_length=16)
    files_cleanup: FilesCleanupConfig = pydantic.Field(default_factory=FilesCleanupConfig)
    console: ConsoleConfig = pydantic.Field(default_factory=ConsoleConfig)
    jwt: JwtConfig = pydantic.Field(default_factory=JwtConfig)
    start: StartConfig

    @pydantic.model_validator(mode="after")
    def _defaults(self) -> NodeConfig:
        # Frozen model: fill the defaulted directories in place, once, at validation.
        if self.ledger_dir is None:
            object.__setattr__(self, "ledger_dir", self.workspace / "ledger")
        if self.snapshots_dir is None:
            object.__setattr__(self, "snapshots_dir", self.workspace / "snapshots")
        if self.enabled_operator_features:
            merged = list(self.rpc_interface.enabled_operator_features)
            merged += [f for f in self.enabled_operator_features if f not in merged]
            object.__setattr__(
                self,
                "rpc_interface",
                self.rpc_interface.model_copy(update={"enabled_operator_features": merged}),
            )
        return self

    @pydantic.model_validator(mode="after")
    def _archive_apart(self) -> NodeConfig:
        # The archive must be another directory: deleting a chunk "because the archive holds
        # it" would otherwise delete the archive's only copy.
        archive = self.files_cleanup.ledger_archive_dir
        ledger = self.ledger_dir
        if archive is not None and ledger is not None and archive.resolve() == ledger.resolve():
            raise ValueError("files_cleanup.ledger_archive_dir must not be the ledger_dir")
        return self

    def operator_features(self) -> frozenset[str]:
        """The operator features enabled on the (one) RPC interface."""
        return frozenset(self.rpc_interface.enabled_operator_features)

    @pydantic.model_validator(mode="after")
    def _named_rpc_host(self) -> NodeConfig:
        # A certificate cannot name 0.0.0.0: a node bound to every address must say which
        # address clients use (and its certificate names).
        published = self.published_rpc_address or self.rpc_address
        if address_host(published) in _UNSPECIFIED_HOSTS:
            raise ValueError(
                f"rpc_address {self.rpc_address} binds every address: set published_rpc_address"
                " to the address clients use"
            )
        return self

    def rpc_subject_alt_names(self) -> list[str]:
        """The node certificate's names for the RPC interface (see RpcInterfaceConfig)."""
        if self.rpc_interface.subject_alt_names:
            return list(self.rpc_interface.subject_alt_names)
        return [host_san(address_host(self.published_rpc_address or self.rpc_address))]


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate a JSON node config; relative paths are relative to the file."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise InterfaceError(f"cannot read config {p}: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise InterfaceError(f"config {p} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InterfaceError(f"config {p} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InterfaceError(f"config {p} must be a JSON object")
    try:
        return NodeConfig.model_validate(data, context={"base_dir": p.resolve().parent})
    except pydantic.ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()
        )
        raise InterfaceError(f"invalid config {p}: {problems}") from None
