"""The `Ready` result: what the Raft core produced since the caller last asked (etcd's Ready)."""

from __future__ import annotations

from dataclasses import dataclass, field

from charter.consensus.messages import Message
from charter.consensus.types import EntryRequest, HardState, LogEntry, Role


@dataclass(slots=True)
class Ready:
    """Everything the core produced since the previous `ready()` call, in the order the
    caller must act on it: persist `hard_state`, truncate the stored log to `truncate_to`
    (drop every entry above it), append `entries`, then send `messages`; apply up to
    `commit_index`. Report durability later with `Raft.durable()`.
    """

    messages: list[tuple[str, Message]] = field(default_factory=list)
    entries: list[LogEntry] = field(default_factory=list)
    truncate_to: int | None = None
    commit_index: int | None = None
    hard_state: HardState | None = None
    role: Role = Role.BACKUP
    role_changed: bool = False
    leader_id: str | None = None
    view: int = 0
    entry_requests: list[EntryRequest] = field(default_factory=list)
    # Removed peers the primary stopped replicating to because each said it committed its
    # removal (one that stayed silent long after is dropped without a word: it may be down).
    released: list[str] = field(default_factory=list)
    # (peer, message, index): send each once the stored log is durable up to `index`, after
    # acting on `entries` and `truncate_to` above; drop it if the stored log is truncated
    # below `index` before that (`RaftConfig.ack_released_on_durable`).
    durable_messages: list[tuple[str, Message, int]] = field(default_factory=list)

    @property
    def has_output(self) -> bool:
        return bool(
            self.messages
            or self.entries
            or self.truncate_to is not None
            or self.commit_index is not None
            or self.hard_state is not None
            or self.role_changed
            or self.entry_requests
            or self.released
            or self.durable_messages
        )
