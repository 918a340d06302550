"""The host ⇄ enclave boundary: what an EDL file is to an SGX enclave.

The only part of `charter.enclave_app` that `charter.host` imports. Its modules:
- `limits`: every size limit of the boundary, derived from the ledger entry limit and asserted;
- `errors`: `InterfaceError(message, *, code)` and `ChannelClosed`;
- `frames`: the typed frames, their validating msgpack codec and the host's duties for each;
- `channel`: `ControlChannel`, frames and passed fds over a Unix socket, on asyncio;
- `config`: `NodeConfig` (pydantic) and `load_config`, the operator's JSON file.

May import: `charter.ledger` and `charter.consensus` (for their size limits) only; never
another module of `charter.enclave_app`, so the host does not load the enclave's code.
`from charter.enclave_app import interface as itf` reaches every name below.
"""

from charter.enclave_app.interface.channel import ControlChannel
from charter.enclave_app.interface.config import (
    Address,
    ConfigPath,
    ConsensusConfig,
    ConsoleConfig,
    CoseSignaturesConfig,
    EndorsementsServer,
    JoinConfig,
    MemberConfig,
    MemoryConfig,
    NodeConfig,
    RpcInterfaceConfig,
    SignaturesConfig,
    SnapshotsConfig,
    SnpConfig,
    StartConfig,
    load_config,
)
from charter.enclave_app.interface.errors import ChannelClosed, InterfaceError
from charter.enclave_app.interface.frames import (
    ENCLAVE_TO_HOST,
    HOST_TO_ENCLAVE,
    ClientConnection,
    CommitUpTo,
    Durable,
    EndorsementsFetched,
    EntriesRead,
    Fatal,
    FetchEndorsements,
    Frame,
    Log,
    NodeMessage,
    ReadEntries,
    ReadLatestSnapshot,
    SendToNode,
    Shutdown,
    SnapshotRead,
    Start,
    Started,
    StoreSealed,
    Tick,
    Truncate,
    WriteEntries,
    WriteSnapshot,
    decode_frame,
    encode_frame,
)
from charter.enclave_app.interface.limits import (
    ENDORSEMENT_PART_MAX_BYTES,
    ENDORSEMENTS_ERROR_MAX_CHARS,
    ENDORSEMENTS_SERVERS_MAX,
    ENDORSEMENTS_URL_MAX_CHARS,
    FRAME_ENVELOPE_BYTES,
    LENGTH_PREFIX,
    MAX_CONFIG_BYTES,
    MAX_FDS_PER_FRAME,
    MAX_FRAME_BYTES,
    MAX_QUEUED_FDS,
    MAX_STRING_CHARS,
    NODE_FRAME_BYTES_MAX,
    NODE_FRAME_ENVELOPE_BYTES,
    PROTOCOL_VERSION,
    READ_REPLY_BYTES_MAX,
    REPLY_ENTRY_OVERHEAD_BYTES,
    SNAPSHOT_READ_BYTES_MAX,
    SNP_CHIP_ID_BYTES,
    SNP_PRODUCTS,
)

# Snapshot file names: one definition, shared with auditors (`charter.ledger.snapshot`).
from charter.ledger.snapshot import parse_snapshot_file_name
from charter.ledger.snapshot import snapshot_file_name as snapshot_file_name

parse_snapshot_name = parse_snapshot_file_name

__all__ = [
    "ENCLAVE_TO_HOST",
    "ENDORSEMENTS_ERROR_MAX_CHARS",
    "ENDORSEMENTS_SERVERS_MAX",
    "ENDORSEMENTS_URL_MAX_CHARS",
    "ENDORSEMENT_PART_MAX_BYTES",
    "FRAME_ENVELOPE_BYTES",
    "HOST_TO_ENCLAVE",
    "LENGTH_PREFIX",
    "MAX_CONFIG_BYTES",
    "MAX_FDS_PER_FRAME",
    "MAX_FRAME_BYTES",
    "MAX_QUEUED_FDS",
    "MAX_STRING_CHARS",
    "NODE_FRAME_BYTES_MAX",
    "NODE_FRAME_ENVELOPE_BYTES",
    "PROTOCOL_VERSION",
    "READ_REPLY_BYTES_MAX",
    "REPLY_ENTRY_OVERHEAD_BYTES",
    "SNAPSHOT_READ_BYTES_MAX",
    "SNP_CHIP_ID_BYTES",
    "SNP_PRODUCTS",
    "Address",
    "ChannelClosed",
    "ClientConnection",
    "CommitUpTo",
    "ConfigPath",
    "ConsensusConfig",
    "ConsoleConfig",
    "ControlChannel",
    "CoseSignaturesConfig",
    "Durable",
    "EndorsementsFetched",
    "EndorsementsServer",
    "EntriesRead",
    "Fatal",
    "FetchEndorsements",
    "Frame",
    "InterfaceError",
    "JoinConfig",
    "Log",
    "MemberConfig",
    "MemoryConfig",
    "NodeConfig",
    "NodeMessage",
    "ReadEntries",
    "ReadLatestSnapshot",
    "RpcInterfaceConfig",
    "SendToNode",
    "Shutdown",
    "SignaturesConfig",
    "SnapshotRead",
    "SnapshotsConfig",
    "SnpConfig",
    "Start",
    "StartConfig",
    "Started",
    "StoreSealed",
    "Tick",
    "Truncate",
    "WriteEntries",
    "WriteSnapshot",
    "decode_frame",
    "encode_frame",
    "load_config",
    "parse_snapshot_file_name",
    "parse_snapshot_name",
    "snapshot_file_name",
]
