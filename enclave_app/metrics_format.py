"""`/node/metrics` in the Prometheus text exposition format (version 0.0.4), and the choice
between it and the JSON the console reads.

A Prometheus server scrapes with `Accept: application/openmetrics-text;…;q=0.5,
text/plain;version=0.0.4;q=0.4,*/*;q=0.1` (or similar), so a caller who prefers a text type
over JSON gets the text format; `?format=prometheus` or `?format=json` decide outright (for
scrapers that cannot set headers). Browsers and curl send `*/*` or `application/json` and
keep getting JSON. Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# An Accept header is bounded by the HTTP server's header limits already; we also look at no
# more than this many media ranges of it.
ACCEPT_RANGES_MAX = 32
_TEXT_TYPES = frozenset({"text/plain", "application/openmetrics-text"})
_JSON_TYPES = frozenset({"application/json"})

Format = Literal["json", "prometheus"]

# name -> (type, help). Counters end in _total, as Prometheus names them.
_COUNTERS: dict[str, tuple[str, str]] = {
    "requests": ("charter_requests_total", "Requests handled since the enclave started."),
    "writes": ("charter_writes_total", "Write transactions committed to the local store."),
    "errors": ("charter_errors_total", "Responses with a status of 400 or more."),
    "signatures": ("charter_signatures_total", "Signature transactions emitted."),
    "light_load_signatures": (
        "charter_light_load_signatures_total",
        "Signatures made due early by signatures.light_load_delay_ms (the node kept up).",
    ),
    "rollbacks": ("charter_rollbacks_total", "Rollbacks of uncommitted transactions."),
    "ready_turns": (
        "charter_ready_turns_total",
        "Raft Ready batches acted on (each persists, sends and applies what a turn produced).",
    ),
    "peer_messages_sent": ("charter_peer_messages_sent_total", "Messages sealed to other nodes."),
    "peer_messages_received": (
        "charter_peer_messages_received_total",
        "Messages from other nodes opened and accepted.",
    ),
    "peer_messages_dropped": (
        "charter_peer_messages_dropped_total",
        "Frames on the node-to-node port dropped: unopenable, malformed, or from a sender "
        "not allowed to send them.",
    ),
    "gc_collections": ("charter_gc_collections_total", "Garbage collector runs in the enclave."),
    "gc_pause_us": ("charter_gc_pause_microseconds_total", "Time the enclave spent collecting."),
    "historical_fetched_entries": (
        "charter_historical_fetched_entries_total",
        "Ledger entries read back from the host for historical queries and old receipts.",
    ),
    "historical_evicted": (
        "charter_historical_evicted_total",
        "Historical states evicted from the cache past its soft limit.",
    ),
    "historical_failed": (
        "charter_historical_failed_total",
        "Historical fetches that failed (entries missing on the host, or failing checks).",
    ),
}
_GAUGES: dict[str, tuple[str, str]] = {
    "commit_seqno": ("charter_commit_seqno", "Highest committed sequence number."),
    "last_seqno": ("charter_last_seqno", "Highest sequence number applied locally."),
    "uncommitted": ("charter_uncommitted_tx", "Transactions applied but not yet committed."),
    "current_view": ("charter_current_view", "Current Raft term (CCF's view)."),
    "is_primary": ("charter_is_primary", "1 on the node that is primary, else 0."),
    "gc_pause_max_us": ("charter_gc_pause_max_microseconds", "Longest collector pause so far."),
    "gc_frozen_objects": ("charter_gc_frozen_objects", "Start-up objects frozen out of the GC."),
}


def _q_of(params: list[str]) -> float:
    for param in params:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value)
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def choose_format(query_format: str | None, accept: str | None) -> Format:
    """JSON unless the query asks for Prometheus, or the Accept header prefers a text type
    (text/plain, OpenMetrics) to JSON. A wildcard counts for JSON, the default."""
    if query_format == "prometheus":
        return "prometheus"
    if query_format == "json" or not accept:
        return "json"
    text_q = 0.0
    json_q = 0.0
    for media_range in accept.split(",")[:ACCEPT_RANGES_MAX]:
        kind, *params = media_range.split(";")
        kind = kind.strip().lower()
        q = _q_of(params)
        if kind in _TEXT_TYPES:
            text_q = max(text_q, q)
        elif kind in _JSON_TYPES or kind in ("*/*", "application/*"):
            json_q = max(json_q, q)
    return "prometheus" if text_q > json_q else "json"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(values: Mapping[str, int], *, node_id: str, state: str) -> str:
    """The metrics as Prometheus text: one HELP and TYPE line per family, then its sample.
    `values` holds the JSON document's numbers; unknown names are not exported."""
    lines = [
        "# HELP charter_node_info This node's id and state (always 1).",
        "# TYPE charter_node_info gauge",
        f'charter_node_info{{node_id="{_label(node_id)}",state="{_label(state)}"}} 1',
    ]
    for table, kind in ((_COUNTERS, "counter"), (_GAUGES, "gauge")):
        for key, (name, help_text) in table.items():
            if key not in values:
                continue
            value = values[key]
            assert isinstance(value, int), f"metric {key} is not an integer"
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"
