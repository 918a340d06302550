"""`charter ledger audit --report FILE`: a self-contained HTML report of an offline audit.

The verdict and totals are the audit's own result (`AuditReport`, or the failure it raised);
the timelines come from one more read of the same ledger's public domains: which node signed
when (the COSE signatures' `iat`), transactions per second between signatures, governance
proposals and their outcomes, ledger rekeys and service recoveries. The page has no script
and loads nothing: charts are inline SVG, styles are inline, so it opens anywhere offline.
"""

from __future__ import annotations

import datetime
import html
import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charter.ledger import service_state as ss
from charter.ledger.audit import AuditReport
from charter.ledger.chunks import LedgerReader
from charter.ledger.cose import HEADER_CWT_CLAIMS, decode_sign1
from charter.ledger.entry import decode_entry
from charter.ledger.errors import LedgerError
from charter.ledger.signatures import (
    COSE_SIGNATURES_TABLE,
    SIGNATURES_TABLE,
    parse_cose_signature,
    parse_signature,
)

CWT_IAT = 6
PROPOSALS = ss.PROPOSALS
PROPOSALS_INFO = ss.PROPOSALS_INFO
SERVICE_INFO = ss.SERVICE_INFO
# Rows of a timeline table kept in the report; a longer ledger says how many were left out.
TIMELINE_ROWS_MAX = 500
# Points of a chart; longer series are merged into this many buckets.
CHART_POINTS_MAX = 300


@dataclass(slots=True)
class Timeline:
    """What the report's charts and tables show, gathered from the ledger's public domains."""

    signatures: list[tuple[int, str, int | None]] = field(default_factory=list)  # seqno, node, iat
    governance: list[tuple[int, str, str, str]] = field(
        default_factory=list
    )  # seqno, id, state, actions
    rekeys: list[tuple[int, str]] = field(default_factory=list)
    recoveries: list[tuple[int, str]] = field(default_factory=list)
    service_statuses: list[tuple[int, str]] = field(default_factory=list)


def _iat(cose_value: bytes) -> int | None:
    try:
        claims = decode_sign1(parse_cose_signature(cose_value)).protected.get(HEADER_CWT_CLAIMS)
    except LedgerError:
        return None
    iat = claims.get(CWT_IAT) if isinstance(claims, dict) else None
    return iat if isinstance(iat, int) else None


def _json(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None


def gather(
    directory: Path, *, committed_only: bool = True, last_seqno: int | None = None
) -> Timeline:
    """Read the ledger's public domains once for the report's timelines."""
    timeline = Timeline()
    actions_by_proposal: dict[str, str] = {}
    reader = LedgerReader(str(directory), committed_only=committed_only)
    for seqno, raw in reader.entries():
        if last_seqno is not None and seqno > last_seqno:
            break
        entry, _ = decode_entry(raw)
        public = entry.public
        if SIGNATURES_TABLE in public:
            for value in public[SIGNATURES_TABLE].values():
                if value is not None:
                    signature = parse_signature(value)
                    cose = next(iter(public.get(COSE_SIGNATURES_TABLE, {}).values()), None)
                    timeline.signatures.append(
                        (seqno, signature.node_id, _iat(cose) if cose else None)
                    )
        for key, value in public.get(PROPOSALS, {}).items():
            doc = _json(value)
            if isinstance(doc, dict) and isinstance(doc.get("actions"), list):
                names = [str(a.get("name")) for a in doc["actions"] if isinstance(a, dict)]
                actions_by_proposal[key.decode(errors="replace")] = ", ".join(names)
        for key, value in public.get(PROPOSALS_INFO, {}).items():
            info = _json(value)
            if not isinstance(info, dict):
                continue
            proposal_id = key.decode(errors="replace")
            state = str(info.get("state", "?"))
            actions = actions_by_proposal.get(proposal_id, "")
            if state == "Open" and any(
                row[1] == proposal_id and row[2] == "Open" for row in timeline.governance[-20:]
            ):
                continue  # a ballot on an open proposal: not a new event of the timeline
            timeline.governance.append((seqno, proposal_id, state, actions))
            if state == "Accepted" and "rekey" in actions:
                timeline.rekeys.append((seqno, f"proposal {proposal_id[:12]}… ({actions})"))
        for table in public:
            if "ledger_secret" in table:
                timeline.rekeys.append((seqno, f"{table} written"))
        for value in public.get(SERVICE_INFO, {}).values():
            info = _json(value)
            if isinstance(info, dict):
                status = str(info.get("status"))
                if not timeline.service_statuses or timeline.service_statuses[-1][1] != status:
                    timeline.service_statuses.append((seqno, status))
                if status == ss.ServiceStatus.RECOVERING or info.get(
                    "previous_service_identity_version"
                ):
                    timeline.recoveries.append((seqno, f"service {status}"))
    return timeline


# ---------------------------------------------------------------------------------------------
# HTML


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _time(iat: int | None) -> str:
    if iat is None:
        return "—"
    return datetime.datetime.fromtimestamp(iat, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _bars(title: str, counts: dict[str, int]) -> str:
    if not counts:
        return f"<p>No {_e(title.lower())}.</p>"
    width, row = 640, 26
    top = max(counts.values())
    rows = []
    for i, (label, count) in enumerate(sorted(counts.items())):
        length = int((count / top) * (width - 260))
        y = i * row
        rows.append(
            f'<text x="0" y="{y + 17}" class="mono">{_e(label[:16])}…</text>'
            f'<rect x="180" y="{y + 4}" width="{max(length, 1)}" height="{row - 8}"></rect>'
            f'<text x="{186 + length}" y="{y + 17}">{count}</text>'
        )
    height = row * len(counts)
    return (
        f'<svg role="img" aria-label="{_e(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}"><title>{_e(title)}</title>{"".join(rows)}</svg>'
    )


def _rate_series(signatures: list[tuple[int, str, int | None]]) -> list[tuple[int, float]]:
    """(iat, tx/s) between consecutive timed signatures, merged to at most CHART_POINTS_MAX."""
    timed = [(seqno, iat) for seqno, _, iat in signatures if iat is not None]
    series = []
    for (s0, t0), (s1, t1) in itertools.pairwise(timed):
        if t1 > t0:
            series.append((t1, (s1 - s0) / (t1 - t0)))
    if len(series) > CHART_POINTS_MAX:
        step = -(-len(series) // CHART_POINTS_MAX)
        series = [
            (series[i][0], sum(r for _, r in series[i : i + step]) / len(series[i : i + step]))
            for i in range(0, len(series), step)
        ]
    return series


def _line(title: str, series: list[tuple[int, float]]) -> str:
    if len(series) < 2:
        return "<p>Too few timed signatures to chart a rate.</p>"
    width, height = 640, 180
    t0, t1 = series[0][0], series[-1][0]
    top = max(r for _, r in series) or 1.0
    points = " ".join(
        f"{40 + (t - t0) / max(t1 - t0, 1) * (width - 50):.1f},"
        f"{height - 20 - r / top * (height - 40):.1f}"
        for t, r in series
    )
    return (
        f'<svg role="img" aria-label="{_e(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}"><title>{_e(title)}</title>'
        f'<line x1="40" y1="{height - 20}" x2="{width}" y2="{height - 20}" class="axis"></line>'
        f'<line x1="40" y1="10" x2="40" y2="{height - 20}" class="axis"></line>'
        f'<text x="0" y="20">{top:.1f}</text><text x="0" y="{height - 20}">0</text>'
        f'<text x="40" y="{height - 4}">{_e(_time(t0))}</text>'
        f'<text x="{width - 200}" y="{height - 4}">{_e(_time(t1))}</text>'
        f'<polyline points="{points}" class="line"></polyline></svg>'
    )


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "<p>None.</p>"
    shown = rows[:TIMELINE_ROWS_MAX]
    head = "".join(f'<th scope="col">{_e(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in shown)
    more = f"<p>{len(rows) - len(shown)} more rows not shown.</p>" if len(rows) > len(shown) else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


_STYLE = """
body{font-family:system-ui,sans-serif;color:#1b1f24;margin:2rem auto;max-width:1000px;padding:0 1rem}
h1{margin-bottom:.2rem}.muted{color:#4d5866}.mono,td.mono{font-family:monospace}
.verdict{border:2px solid;border-radius:6px;padding:.6rem 1rem}
.valid{border-color:#126b2f;background:#edf7f0}.invalid{border-color:#a1121f;background:#fbeeee}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}
th,td{text-align:left;border-bottom:1px solid #c9d1db;padding:.3rem .5rem;font-size:.92rem}
th{background:#f3f5f8}svg{background:#f3f5f8;border:1px solid #c9d1db;border-radius:6px}
svg rect{fill:#0b5cad}svg .line{fill:none;stroke:#0b5cad;stroke-width:2}
svg .axis{stroke:#8a96a3}svg text{font-size:11px;fill:#4d5866}
"""


def render(
    directory: Path,
    report: AuditReport | None,
    timeline: Timeline,
    *,
    failure: tuple[int | None, str] | None = None,
) -> str:
    """The report page for an audit that returned `report` or failed with `failure`."""
    assert (report is None) != (failure is None)
    if report is not None:
        verdict = (
            '<div class="verdict valid" data-verdict="valid"><h2>Valid</h2>'
            "<p>Every entry, Merkle root and signature checked out.</p></div>"
        )
        summary = {
            "transactions": report.transactions,
            "signatures": report.signatures,
            "cose_signatures": report.cose_signatures,
            "last_txid": f"{report.last_view}.{report.last_seqno}",
            "last_signed_txid": report.last_signed_txid,
            "unsigned_transactions": report.unsigned_transactions,
            "service_status": report.service_status,
            "chunks": report.chunks,
            "root": report.root.hex(),
        }
    else:
        assert failure is not None
        seqno, message = failure
        verdict = (
            '<div class="verdict invalid" data-verdict="invalid"><h2>Invalid</h2>'
            f'<p>First bad seqno: <span data-field="first_bad_seqno">{_e(seqno)}</span>. '
            f"{_e(message)}</p></div>"
        )
        summary = {}
    rows = "".join(
        f'<tr><th scope="row">{_e(k)}</th><td data-field="{_e(k)}" class="mono">{_e(v)}</td></tr>'
        for k, v in summary.items()
    )
    per_node = Counter(node for _, node, _ in timeline.signatures)
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Ledger audit report: {_e(directory.name)}</title><style>{_STYLE}</style></head>
<body>
<h1>Ledger audit report</h1>
<p class="muted">{_e(directory)} · generated {_e(generated)} by charter ledger audit</p>
{verdict}
<h2>Summary</h2>
<table><tbody>{rows}</tbody></table>
<h2>Signatures per node</h2>
{_bars("Signature transactions per node", dict(per_node))}
<h2>Transactions per second over the ledger's life</h2>
<p class="muted">Seqnos between consecutive signatures over the time between them (their COSE iat).</p>
{_line("Transactions per second", _rate_series(timeline.signatures))}
<h2>Governance timeline</h2>
{_table(["seqno", "proposal", "state", "actions"], [list(r) for r in timeline.governance])}
<h2>Service status changes</h2>
{_table(["seqno", "status"], [list(r) for r in timeline.service_statuses])}
<h2>Ledger rekeys</h2>
{_table(["seqno", "what"], [list(r) for r in timeline.rekeys])}
<h2>Recoveries</h2>
{_table(["seqno", "what"], [list(r) for r in timeline.recoveries])}
</body></html>
"""


def write_report(
    path: Path,
    directory: Path,
    report: AuditReport | None,
    *,
    include_uncommitted: bool = False,
    failure: tuple[int | None, str] | None = None,
) -> None:
    """Write the HTML report of an audit of `directory` to `path`."""
    last = report.last_seqno if report is not None else None
    try:
        timeline = gather(directory, committed_only=not include_uncommitted, last_seqno=last)
    except LedgerError:
        # A ledger the audit refused may not even read: the report still gives the verdict.
        timeline = Timeline()
    path.write_text(render(directory, report, timeline, failure=failure), encoding="utf-8")
