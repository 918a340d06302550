"""Charter's consensus: Raft as a sans-IO state machine (DESIGN §6). Imports nothing of ours."""

from charter.consensus.codec import MAX_MESSAGE_BYTES, decode_message, encode_message
from charter.consensus.confchange import check_configuration_change
from charter.consensus.errors import (
    ConfigurationError,
    ConsensusError,
    DecodeError,
    NotPrimaryError,
)
from charter.consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Message,
    PreVote,
    PreVoteResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from charter.consensus.raft import Raft
from charter.consensus.ready import Ready
from charter.consensus.types import (
    Ack,
    ConsensusDetails,
    EntryRequest,
    HardState,
    LogEntry,
    RaftConfig,
    Role,
    StartState,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Ack",
    "AppendEntries",
    "AppendEntriesResponse",
    "ConfigurationError",
    "ConsensusDetails",
    "ConsensusError",
    "DecodeError",
    "EntryRequest",
    "HardState",
    "LogEntry",
    "Message",
    "NotPrimaryError",
    "PreVote",
    "PreVoteResponse",
    "Raft",
    "RaftConfig",
    "Ready",
    "RequestVote",
    "RequestVoteResponse",
    "Role",
    "StartState",
    "TimeoutNow",
    "check_configuration_change",
    "decode_message",
    "encode_message",
]
