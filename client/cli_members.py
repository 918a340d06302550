"""How the command line names members and summarises a dry run, for people rather than scripts.

Listings show a member's number in the --network file (what `--member N` takes) and its
certificate's common name beside the 64-hex id; `--json` output keeps the service's fields.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.x509.oid import NameOID

from charter.errors import CharterError
from charter.identity import Network, load_cert_pem
from charter.ledger import certs
from charter.ledger.errors import LedgerError

# A dry run can list many KV writes (a constitution, certificates); the summary shows this
# many and counts the rest (`--json` has them all).
SUMMARY_CHANGES_MAX = 20
SUMMARY_VALUE_CHARS_MAX = 60


def short_id(ident: str | None, n: int = 12) -> str:
    return "-" if not ident else (ident[:n] + "…" if len(ident) > n else ident)


@dataclass(frozen=True, slots=True)
class MemberLabel:
    """What a person recognises a member by, beside its 64-hex id."""

    number: int | None  # index in the --network file, i.e. what `--member N` takes
    name: str | None  # the common name of the member's certificate

    def __str__(self) -> str:
        parts = [f"#{self.number}" if self.number is not None else "", self.name or ""]
        return " ".join(p for p in parts if p) or "-"


def common_name(cert_pem: object) -> str | None:
    if not isinstance(cert_pem, str):
        return None
    try:
        cert = certs.load_cert(cert_pem)
    except LedgerError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def member_labels(items: list[dict[str, Any]], network: Path | None) -> dict[str, MemberLabel]:
    """member id -> number in the network file (if given) and certificate common name."""
    numbers: dict[str, int] = {}
    if network is not None:
        for i, (cert_path, _) in enumerate(Network.load(network).members):
            with contextlib.suppress(CharterError, LedgerError):
                numbers[certs.cert_id(load_cert_pem(cert_path, "member cert"))] = i
    labels = {}
    for m in items:
        mid = m.get("memberId")
        if isinstance(mid, str):
            labels[mid] = MemberLabel(numbers.get(mid), common_name(m.get("certificate")))
    return labels


def who(member_id: str | None, labels: dict[str, MemberLabel], n: int = 12) -> str:
    label = labels.get(member_id or "")
    return f"{label} ({short_id(member_id, n)})" if label is not None else short_id(member_id, n)


def _clip(text: object) -> str:
    shown = " ".join(str(text).split())
    if len(shown) > SUMMARY_VALUE_CHARS_MAX:
        return shown[:SUMMARY_VALUE_CHARS_MAX] + "…"
    return shown


def dry_run_summary(result: dict[str, Any]) -> str:
    """A few readable lines for `charter propose --dry-run` (the service's report, shortened)."""
    valid = result.get("valid") is True
    lines = [
        "dry run: the proposal is "
        + ("valid" if valid else "NOT valid")
        + " (nothing was stored; --json shows the full report)"
    ]
    for err in result.get("errors") or []:
        if isinstance(err, dict):
            lines.append(f"  error    {err.get('code')}: {err.get('message')}")
    votes = result.get("votes")
    if isinstance(votes, dict) and votes.get("acceptedBy"):
        lines.append(f"  accepted by {votes['acceptedBy']}")
    changes = [c for c in result.get("changes") or [] if isinstance(c, dict)]
    if changes:
        lines.append(f"  {len(changes)} change(s) if accepted now:")
        for c in changes[:SUMMARY_CHANGES_MAX]:
            value = "" if c.get("op") == "remove" else f" = {_clip(c.get('value'))}"
            lines.append(f"    {c.get('op')} {c.get('map')}[{_clip(c.get('key'))}]{value}")
        if len(changes) > SUMMARY_CHANGES_MAX:
            lines.append(f"    … and {len(changes) - SUMMARY_CHANGES_MAX} more")
    effects = result.get("effects")
    if isinstance(effects, dict):
        done = [name for name, value in sorted(effects.items()) if value]
        if done:
            lines.append("  effects  " + ", ".join(done))
    return "\n".join(lines)
