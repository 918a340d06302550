"""A readable view of ledger entries, with governance history (for `charter ledger read`).

Pure functions over decoded entries; reading and decoding is charter.ledger.chunks / ledger.entry.
Private domains stay encrypted: an auditor without the ledger secret sees their size only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter.ledger import service_state as ss

log = logging.getLogger(__name__)

# Values are shown in full in --json output; on a terminal long ones are cut.
TEXT_VALUE_CHARS_MAX = 160
SINGLE_VALUE_KEY = ss.SINGLETON_KEY
GOV_PREFIX = ss.GOV_TABLE_PREFIX
SIGNATURES_TABLE = ss.SIGNATURES


def decode_key(key: bytes) -> str:
    if key == SINGLE_VALUE_KEY:
        return "(value)"
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + key.hex()
    return text if text.isprintable() else "0x" + key.hex()


def decode_value(value: bytes | None) -> Any:
    """JSON if it parses, else printable text (e.g. PEM), else hex."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + value.hex()
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return text
    return "0x" + value.hex()


@dataclass(frozen=True, slots=True)
class EntryView:
    seqno: int
    view: int
    entry_type: int
    size_bytes: int
    private_bytes: int
    tables: dict[str, dict[str, Any]]
    events: tuple[str, ...]

    @property
    def txid(self) -> str:
        return f"{self.view}.{self.seqno}"

    @property
    def is_signature(self) -> bool:
        return SIGNATURES_TABLE in self.tables

    def to_json(self) -> dict[str, Any]:
        return {
            "txid": self.txid,
            "seqno": self.seqno,
            "view": self.view,
            "entry_type": self.entry_type,
            "size_bytes": self.size_bytes,
            "private_bytes": self.private_bytes,
            "signature": self.is_signature,
            "tables": self.tables,
            "governance": list(self.events),
        }


def _short(ident: str) -> str:
    return ident[:12] + "…" if len(ident) > 16 else ident


def _action_names(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("actions"), list):
        names = [str(a.get("name")) for a in body["actions"] if isinstance(a, dict)]
        return ", ".join(names) or "(no actions)"
    return "(unreadable body)"


def governance_events(tables: dict[str, dict[str, Any]]) -> list[str]:
    """One line per governance fact this transaction records, in CCF's table vocabulary."""
    events: list[str] = []
    for key, value in tables.get(GOV_PREFIX + "proposals", {}).items():
        if value is not None:
            events.append(f"proposal {_short(key)} submitted: {_action_names(value)}")
    for key, value in tables.get(GOV_PREFIX + "proposals_info", {}).items():
        if isinstance(value, dict):
            ballots = value.get("ballots")
            n = len(ballots) if isinstance(ballots, dict) else 0
            who = value.get("proposer_id")
            by = f" by {_short(who)}" if isinstance(who, str) else ""
            events.append(f"proposal {_short(key)}{by} is {value.get('state')} ({n} ballot(s))")
        elif value is None:
            events.append(f"proposal {_short(key)} purged")
    for table, noun in (("members.info", "member"), ("users.certs", "user")):
        for key, value in tables.get(GOV_PREFIX + table, {}).items():
            if value is None:
                events.append(f"{noun} {_short(key)} removed")
            elif isinstance(value, dict) and "status" in value:
                events.append(f"{noun} {_short(key)} is {value['status']}")
            else:
                events.append(f"{noun} {_short(key)} registered")
    for key, value in tables.get(GOV_PREFIX + "members.acks", {}).items():
        if isinstance(value, dict) and ("signed_req" in value or "cose_sign1_req" in value):
            events.append(f"member {_short(key)} acknowledged the state digest")
        elif isinstance(value, dict):
            events.append(f"member {_short(key)} has a new state digest to acknowledge")
    for key, value in tables.get(GOV_PREFIX + "nodes.info", {}).items():
        if value is None:
            events.append(f"node {_short(key)} removed")
        elif isinstance(value, dict):
            events.append(f"node {_short(key)} is {value.get('status')}")
    info = tables.get(GOV_PREFIX + "service.info", {}).get("(value)")
    if isinstance(info, dict):
        events.append(f"service is {info.get('status')}")
    if GOV_PREFIX + "constitution" in tables:
        events.append("constitution set")
    return events


def view_entry(entry: Any) -> EntryView:
    """Turn a ledger.entry.Entry into its readable form."""
    tables: dict[str, dict[str, Any]] = {}
    for name in sorted(entry.public):
        tables[name] = {decode_key(k): decode_value(v) for k, v in entry.public[name].items()}
    return EntryView(
        seqno=entry.seqno,
        view=entry.view,
        entry_type=entry.entry_type,
        size_bytes=len(entry.raw),
        private_bytes=len(entry.private_ciphertext),
        tables=tables,
        events=tuple(governance_events(tables)),
    )


def read_entries(directory: Path, start: int = 1, end: int | None = None) -> Iterator[EntryView]:
    """Decode entries start..end (inclusive) of a ledger directory."""
    from charter.ledger.chunks import LedgerReader
    from charter.ledger.entry import decode_entry

    reader = LedgerReader(str(directory))
    for seqno, raw in reader.entries(start, end):
        entry, _ = decode_entry(raw)
        assert entry.seqno == seqno, "ledger reader and entry agree on the seqno"
        yield view_entry(entry)


def clip(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    text = " ".join(text.split())
    return text if len(text) <= TEXT_VALUE_CHARS_MAX else text[:TEXT_VALUE_CHARS_MAX] + "…"
