"""Control-channel frames and their codec: the messages of the host ⇄ enclave contract.

Wire format: each frame is `u32 big-endian length` + msgpack `[PROTOCOL_VERSION, tag,
{field: value}]`. `encode_frame`/`decode_frame` work on the msgpack body only; the channel
(`channel.py`) adds and strips the length prefix. A frame whose class declares `FD_COUNT > 0`
(`ClientConnection`) travels with that many file descriptors passed with SCM_RIGHTS. Both
processes validate every frame they receive with `decode_frame`, so neither trusts the other's
bytes.

Semantics the host implements (see host/):
- `Start` is the first frame; its `config` is `NodeConfig.model_dump(mode="json")` with every
  path absolute and `rpc_address` / `node_to_node_address` replaced by the addresses the host
  actually bound (port 0 resolved), `published_rpc_address` defaulting to `rpc_address`.
- `Tick.now_ms` is the host's wall clock in ms since the Unix epoch: untrusted, may jump.
- `ClientConnection` frames may follow `Start` at once, before the enclave sent `Started`;
  the host closes its copy of the socket as soon as the frame is queued.
- `Started(node_id, status, info)`: `info` is free-form plain data for the operator; the host
  logs it and adds `node_id` to `<workspace>/ports.json`.
- `WriteEntries` is appended in order; after the next group fsync the host answers
  `Durable(highest durable seqno)`. `Truncate(seqno)` drops entries > seqno (refused below
  the committed seqno) and is not answered. `CommitUpTo(seqno)` marks complete chunks
  ending at or below min(seqno, durable seqno) committed. A write that does not follow the
  ledger's last seqno stops the node.
- `ReadEntries(request_id, from, to)` is answered by `EntriesRead` holding the entries
  `first_seqno..` in order; it may hold fewer than asked (frame size cap, end of ledger) and
  is empty when none are available.
- `WriteSnapshot` writes `snapshot_<seqno>_<evidence_seqno>[.committed]` atomically; with
  `committed=True` and empty `data` it instead marks the existing uncommitted file committed.
  `ReadLatestSnapshot` is answered by `SnapshotRead` (the highest committed snapshot; `name`
  and `data` are None when there is none).
- `IndexBlobStore(strategy, bucket, blob)` keeps an index bucket's sealed blob (CCF's LFS)
  in `<workspace>/index_blobs/<strategy>/<bucket>.blob`, replacing any earlier one; it is
  not answered. `IndexBlobFetch(request_id, strategy, bucket)` is answered by one
  `IndexBlobFetched` carrying the stored bytes, or `blob=None` when there is no such file.
  The host cannot read the blobs (AES-GCM under a key that never leaves the enclave) and
  the enclave refuses any it did not write for that bucket at that version. The host
  empties the folder when it starts: a restarted enclave rebuilds its indexes.
- `FetchEndorsements` is answered by one `EndorsementsFetched`, from a task of the host's own
  (the frame loop goes on meanwhile): what the first of `snp.endorsements_servers` from
  `first_server` on served, unchecked, or `error` naming every server's failure.
- `ReadOperatorFile` is answered by one `OperatorFileRead` (see the frames; host/storage.py).
  `ReadEntries` looks in the ledger directory, then the read-only ledger directories, then
  the archive (committed chunks only outside the ledger directory).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from charter.enclave_app.interface.errors import InterfaceError
from charter.enclave_app.interface.limits import (
    ENDORSEMENT_PART_MAX_BYTES,
    ENDORSEMENTS_ERROR_MAX_CHARS,
    ENDORSEMENTS_SERVERS_MAX,
    ENDORSEMENTS_URL_MAX_CHARS,
    INDEX_BLOB_BYTES_MAX,
    INDEX_STRATEGY_NAME_CHARS_MAX,
    MAX_FRAME_BYTES,
    MAX_STRING_CHARS,
    PROTOCOL_VERSION,
    SNP_CHIP_ID_BYTES,
    SNP_PRODUCTS,
)

_MAX_DATA_DEPTH = 32
_MAX_U64 = 2**64 - 1

# Field validators: each takes a decoded msgpack value and returns the typed value or raises.


def _check_int(v: object) -> int:
    if type(v) is not int or not 0 <= v <= _MAX_U64:
        raise InterfaceError("expected an unsigned 64-bit int")
    return v


def _check_bool(v: object) -> bool:
    if type(v) is not bool:
        raise InterfaceError("expected a bool")
    return v


def _check_str(v: object) -> str:
    if type(v) is not str or len(v) > MAX_STRING_CHARS:
        raise InterfaceError(f"expected a str of at most {MAX_STRING_CHARS} chars")
    return v


def _check_bytes(v: object) -> bytes:
    if type(v) is not bytes:
        raise InterfaceError("expected bytes")
    return v


def _optional(check: Callable[[object], Any]) -> Callable[[object], Any]:
    def check_optional(v: object) -> Any:
        return None if v is None else check(v)

    return check_optional


def _check_data(v: object, depth: int = 0) -> Any:
    """Plain JSON-like data (the config): no ext types, str keys, bounded depth."""
    if depth > _MAX_DATA_DEPTH:
        raise InterfaceError("data nested too deeply")
    t = type(v)
    if v is None or t in (bool, int, float, str, bytes):
        return v
    if t is list:
        return [_check_data(x, depth + 1) for x in v]  # type: ignore[attr-defined]
    if t is dict:
        out = {}
        for k, x in v.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                raise InterfaceError("data map keys must be str")
            out[k] = _check_data(x, depth + 1)
        return out
    raise InterfaceError("unsupported data type")


def _check_dict(v: object) -> dict[str, Any]:
    if type(v) is not dict:
        raise InterfaceError("expected a map")
    out: dict[str, Any] = _check_data(v)
    return out


def _check_bytes_list(v: object) -> list[bytes]:
    if type(v) is not list:
        raise InterfaceError("expected a list of bytes")
    for x in v:
        if type(x) is not bytes:
            raise InterfaceError("expected a list of bytes")
    return v


def _check_entries(v: object) -> list[tuple[int, bytes]]:
    if type(v) not in (list, tuple):
        raise InterfaceError("expected a list of [seqno, entry]")
    out = []
    for x in v:  # type: ignore[attr-defined]
        if type(x) not in (list, tuple) or len(x) != 2 or type(x[1]) is not bytes:
            raise InterfaceError("expected a list of [seqno, entry]")
        out.append((_check_int(x[0]), x[1]))
    return out


_CHECKS: dict[str, Callable[[object], Any]] = {
    "int": _check_int,
    "bool": _check_bool,
    "str": _check_str,
    "bytes": _check_bytes,
    "str | None": _optional(_check_str),
    "bytes | None": _optional(_check_bytes),
    "dict[str, Any]": _check_dict,
    "list[bytes]": _check_bytes_list,
    "list[tuple[int, bytes]]": _check_entries,
}


def check_strategy_name(name: str) -> str:
    """An index strategy's name: it names a host folder, so only [a-z0-9_.-], not dots alone."""
    if (
        not 0 < len(name) <= INDEX_STRATEGY_NAME_CHARS_MAX
        or name.strip(".") == ""
        or any(c not in _STRATEGY_NAME_CHARS for c in name)
    ):
        raise InterfaceError(
            f"index strategy name must be 1-{INDEX_STRATEGY_NAME_CHARS_MAX} chars of a-z0-9_.-"
        )
    return name


_STRATEGY_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def _check_blob(blob: bytes | None) -> None:
    if blob is not None and len(blob) > INDEX_BLOB_BYTES_MAX:
        raise InterfaceError(f"index blob over {INDEX_BLOB_BYTES_MAX} bytes")


# ---------------------------------------------------------------------------------------------
# Frames. Field annotations (as strings) select the validators above.


@dataclass(frozen=True, slots=True)
class Frame:
    """Base of every frame. `FD_COUNT` = number of fds that travel with the frame."""

    FD_COUNT: ClassVar[int] = 0


_FRAME_TYPES: dict[str, type[Frame]] = {}
_FRAME_FIELDS: dict[type[Frame], tuple[tuple[str, Callable[[object], Any]], ...]] = {}


def _frame(cls: type[Frame]) -> type[Frame]:
    fields = tuple((f.name, _CHECKS[str(f.type)]) for f in dataclasses.fields(cls))
    _FRAME_TYPES[cls.__name__] = cls
    _FRAME_FIELDS[cls] = fields
    return cls


# Host → enclave


@_frame
@dataclass(frozen=True, slots=True)
class Start(Frame):
    config: dict[str, Any]
    sealed: bytes | None
    ledger_last_seqno: int


@_frame
@dataclass(frozen=True, slots=True)
class Tick(Frame):
    now_ms: int


@_frame
@dataclass(frozen=True, slots=True)
class ClientConnection(Frame):
    """An accepted client TCP socket; its fd travels with the frame (SCM_RIGHTS)."""

    FD_COUNT: ClassVar[int] = 1
    conn_id: int
    peer: str


@_frame
@dataclass(frozen=True, slots=True)
class Durable(Frame):
    """Entries up to `seqno` are on disk; `view` is the view of the entry at `seqno` (0 when
    unknown), so a report overtaken by a truncation cannot vouch for replacement entries."""

    seqno: int
    view: int = 0


@_frame
@dataclass(frozen=True, slots=True)
class EntriesRead(Frame):
    request_id: int
    entries: list[bytes]
    first_seqno: int


@_frame
@dataclass(frozen=True, slots=True)
class SnapshotRead(Frame):
    request_id: int
    name: str | None
    data: bytes | None


@_frame
@dataclass(frozen=True, slots=True)
class NodeMessage(Frame):
    """A sealed node-to-node frame from a peer; `from_address` is the peer's claim, untrusted."""

    from_address: str
    payload: bytes


@_frame
@dataclass(frozen=True, slots=True)
class Shutdown(Frame):
    pass


# The product lines whose endorsements the host may be asked for (`charter.ledger.snp`).


@_frame
@dataclass(frozen=True, slots=True)
class EndorsementsFetched(Frame):
    """The host's answer to `FetchEndorsements`: what server `server` (an index into
    `snp.endorsements_servers`) served at `url`, unchecked; or `error` when no server from
    the requested one on answered (then `vcek` and `chain` are empty)."""

    request_id: int
    server: int
    url: str
    vcek: bytes
    chain: bytes
    error: str | None

    def __post_init__(self) -> None:
        if len(self.vcek) > ENDORSEMENT_PART_MAX_BYTES or len(self.chain) > (
            ENDORSEMENT_PART_MAX_BYTES
        ):
            raise InterfaceError(f"endorsements over {ENDORSEMENT_PART_MAX_BYTES} bytes")
        if len(self.url) > ENDORSEMENTS_URL_MAX_CHARS:
            raise InterfaceError(f"url over {ENDORSEMENTS_URL_MAX_CHARS} chars")
        if self.error is not None and len(self.error) > ENDORSEMENTS_ERROR_MAX_CHARS:
            raise InterfaceError(f"error over {ENDORSEMENTS_ERROR_MAX_CHARS} chars")
        if self.server > ENDORSEMENTS_SERVERS_MAX:
            raise InterfaceError(f"server index over {ENDORSEMENTS_SERVERS_MAX}")


@_frame
@dataclass(frozen=True, slots=True)
class IndexBlobFetched(Frame):
    """The host's answer to `IndexBlobFetch`: the stored blob, or None when it has none."""

    request_id: int
    strategy: str
    bucket: int
    blob: bytes | None

    def __post_init__(self) -> None:
        check_strategy_name(self.strategy)
        _check_blob(self.blob)


# Enclave → host


@_frame
@dataclass(frozen=True, slots=True)
class Started(Frame):
    node_id: str
    status: str
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@_frame
@dataclass(frozen=True, slots=True)
class WriteEntries(Frame):
    entries: list[tuple[int, bytes]]


@_frame
@dataclass(frozen=True, slots=True)
class Truncate(Frame):
    seqno: int


@_frame
@dataclass(frozen=True, slots=True)
class CommitUpTo(Frame):
    seqno: int


@_frame
@dataclass(frozen=True, slots=True)
class ReadEntries(Frame):
    request_id: int
    from_seqno: int
    to_seqno: int


@_frame
@dataclass(frozen=True, slots=True)
class WriteSnapshot(Frame):
    seqno: int
    evidence_seqno: int
    data: bytes
    committed: bool


@_frame
@dataclass(frozen=True, slots=True)
class ReadLatestSnapshot(Frame):
    request_id: int


@_frame
@dataclass(frozen=True, slots=True)
class StoreSealed(Frame):
    blob: bytes


@_frame
@dataclass(frozen=True, slots=True)
class SendToNode(Frame):
    node_id: str
    address: str
    payload: bytes


@_frame
@dataclass(frozen=True, slots=True)
class SendWhenDurable(Frame):
    """A `SendToNode` the host sends once its ledger is durable up to `seqno`, and drops if
    the ledger is truncated below `seqno` first: a backup's answer to entries it received,
    which then leaves right after the host's fsync."""

    seqno: int
    node_id: str
    address: str
    payload: bytes


@_frame
@dataclass(frozen=True, slots=True)
class Log(Frame):
    level: int
    message: str


@_frame
@dataclass(frozen=True, slots=True)
class Fatal(Frame):
    reason: str


@_frame
@dataclass(frozen=True, slots=True)
class FetchEndorsements(Frame):
    """Ask the host for the VCEK (and AMD's chain) of an SEV-SNP chip at a TCB, from the
    configured `snp.endorsements_servers`, trying them in order from index `first_server`.
    The host is not trusted with the answer: the enclave verifies it up to AMD's roots."""

    request_id: int
    product: str
    chip_id: bytes
    reported_tcb: int
    first_server: int

    def __post_init__(self) -> None:
        if self.product not in SNP_PRODUCTS:
            raise InterfaceError(f"product must be one of {', '.join(SNP_PRODUCTS)}")
        if len(self.chip_id) != SNP_CHIP_ID_BYTES:
            raise InterfaceError(f"chip_id must be {SNP_CHIP_ID_BYTES} bytes")
        if self.first_server >= ENDORSEMENTS_SERVERS_MAX:
            raise InterfaceError(f"first_server must be below {ENDORSEMENTS_SERVERS_MAX}")


# Operator files (issue 15, the bounded disk): the download endpoints ask the host to find and
# read committed ledger chunks and snapshots; the enclave decides what is served.
OPERATOR_FILE_KINDS = ("ledger_chunk", "snapshot")
OPERATOR_FILE_NAME_CHARS_MAX = 255


@_frame
@dataclass(frozen=True, slots=True)
class IndexBlobStore(Frame):
    """Keep this sealed index bucket (CCF's LFS `store`); replaces an earlier blob."""

    strategy: str
    bucket: int
    blob: bytes

    def __post_init__(self) -> None:
        check_strategy_name(self.strategy)
        _check_blob(self.blob)


@_frame
@dataclass(frozen=True, slots=True)
class ReadOperatorFile(Frame):
    """With `name` empty: which committed file of `kind` holds seqno `since` (a ledger chunk)
    or is the latest at or after `since` (a snapshot); with `name`: that file's bytes. The host
    answers one `OperatorFileRead`; only committed files are ever found or read."""

    request_id: int
    kind: str
    name: str
    since: int

    def __post_init__(self) -> None:
        if self.kind not in OPERATOR_FILE_KINDS:
            raise InterfaceError(f"kind must be one of {', '.join(OPERATOR_FILE_KINDS)}")
        if len(self.name) > OPERATOR_FILE_NAME_CHARS_MAX:
            raise InterfaceError(f"name longer than {OPERATOR_FILE_NAME_CHARS_MAX} chars")


@_frame
@dataclass(frozen=True, slots=True)
class OperatorFileRead(Frame):
    """`name` None: no such committed file. `data` None for a lookup, or when the file is
    larger than one frame carries (`size_bytes` says how large it is)."""

    request_id: int
    name: str | None
    data: bytes | None
    size_bytes: int

    def __post_init__(self) -> None:
        if self.name is not None and len(self.name) > OPERATOR_FILE_NAME_CHARS_MAX:
            raise InterfaceError(f"name longer than {OPERATOR_FILE_NAME_CHARS_MAX} chars")


@_frame
@dataclass(frozen=True, slots=True)
class IndexBlobFetch(Frame):
    """Send back the blob stored for this bucket (CCF's LFS `fetch`)."""

    request_id: int
    strategy: str
    bucket: int

    def __post_init__(self) -> None:
        check_strategy_name(self.strategy)


HOST_TO_ENCLAVE = (
    Start,
    Tick,
    ClientConnection,
    Durable,
    EntriesRead,
    SnapshotRead,
    NodeMessage,
    Shutdown,
    EndorsementsFetched,
    OperatorFileRead,
    IndexBlobFetched,
)
ENCLAVE_TO_HOST = (
    Started,
    WriteEntries,
    Truncate,
    CommitUpTo,
    ReadEntries,
    WriteSnapshot,
    ReadLatestSnapshot,
    StoreSealed,
    SendToNode,
    SendWhenDurable,
    Log,
    Fatal,
    FetchEndorsements,
    ReadOperatorFile,
    IndexBlobStore,
    IndexBlobFetch,
)


# ---------------------------------------------------------------------------------------------
# Codec


def encode_frame(frame: Frame) -> bytes:
    """The msgpack body of `frame` (no length prefix). Fields are validated as on receipt."""
    cls = type(frame)
    fields = _FRAME_FIELDS.get(cls)
    if fields is None:
        raise InterfaceError(f"not a frame type: {cls.__name__}")
    body: dict[str, Any] = {}
    for name, check in fields:
        try:
            body[name] = check(getattr(frame, name))
        except InterfaceError as e:
            raise InterfaceError(f"{cls.__name__}.{name}: {e}") from None
    try:
        data: bytes = msgpack.packb([PROTOCOL_VERSION, cls.__name__, body], use_bin_type=True)
    except (ValueError, OverflowError, TypeError) as e:
        raise InterfaceError(f"{cls.__name__}: cannot encode: {type(e).__name__}") from None
    if len(data) > MAX_FRAME_BYTES:
        raise InterfaceError(f"{cls.__name__} frame of {len(data)} bytes exceeds MAX_FRAME_BYTES")
    return data


def _unpack(data: bytes) -> tuple[type[Frame], dict[Any, Any]]:
    if len(data) > MAX_FRAME_BYTES:
        raise InterfaceError(f"frame of {len(data)} bytes exceeds MAX_FRAME_BYTES")
    try:
        obj = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise InterfaceError(f"not msgpack: {type(e).__name__}") from None
    if type(obj) is not list or len(obj) != 3:
        raise InterfaceError("frame is not [version, tag, fields]")
    version, tag, fields = obj
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise InterfaceError(f"unsupported protocol version (expected {PROTOCOL_VERSION})")
    cls = _FRAME_TYPES.get(tag) if type(tag) is str else None
    if cls is None:
        raise InterfaceError("unknown frame tag")
    if type(fields) is not dict:
        raise InterfaceError(f"{tag}: fields are not a map")
    return cls, fields


def _build(cls: type[Frame], fields: dict[Any, Any]) -> Frame:
    spec = _FRAME_FIELDS[cls]
    if len(fields) != len(spec):
        raise InterfaceError(f"{cls.__name__}: expected {len(spec)} fields, got {len(fields)}")
    values = {}
    for name, check in spec:
        if name not in fields:
            raise InterfaceError(f"{cls.__name__}: missing field {name}")
        try:
            values[name] = check(fields[name])
        except InterfaceError as e:
            raise InterfaceError(f"{cls.__name__}.{name}: {e}") from None
    return cls(**values)


def decode_frame(data: bytes) -> Frame:
    """Parse and validate one msgpack frame body; raises `InterfaceError` only."""
    if type(data) is not bytes:
        raise InterfaceError("frame data must be bytes")
    cls, fields = _unpack(data)
    return _build(cls, fields)


# ---------------------------------------------------------------------------------------------
# Control channel
