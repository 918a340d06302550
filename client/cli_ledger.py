"""`charter receipt get|verify` and `charter ledger audit|read`."""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from charter.audit_report import write_report
from charter.auditor import audit_ledger
from charter.cli_common import (
    JsonOpt,
    NetworkOpt,
    NodeOpt,
    ServiceCertOpt,
    UrlOpt,
    fail,
    guarded,
    print_json,
    resolve_target,
    run_async,
    stdout,
)
from charter.errors import IdentityError, LedgerAuditFailed, ReceiptInvalid
from charter.identity import Network, TxId
from charter.ledger.audit import AuditReport
from charter.ledger.audit_checkpoint import AuditCheckpoint
from charter.ledger.errors import AuditInterrupted

log = logging.getLogger(__name__)

receipt_app = typer.Typer(
    help="Fetch and verify transaction receipts.", no_args_is_help=True, rich_markup_mode=None
)
ledger_app = typer.Typer(
    help="Audit and read ledger directories offline.", no_args_is_help=True, rich_markup_mode=None
)


def _service_cert_offline(service_cert: Path | None, network: Path | None) -> Path | None:
    if service_cert is not None:
        return service_cert
    if network is not None:
        return Network.load(network).service_cert
    return None


# --- receipts -----------------------------------------------------------------------------------


@receipt_app.command("get")
@guarded
def receipt_get(
    txid: Annotated[str, typer.Argument(help="Transaction id VIEW.SEQNO, e.g. 2.15.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the receipt to this file.")
    ] = None,
    cose: Annotated[bool, typer.Option("--cose", help="Fetch the COSE receipt (CBOR).")] = False,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Verify it against the service cert.")
    ] = True,
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for commit and the receipt.")
    ] = 30.0,
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    node: NodeOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Fetch the receipt of a committed transaction (waits while it is pending).

    \b
    Example: charter receipt get 2.15 --network workspace/sandbox/network.json -o r.json
    """
    tx = TxId.parse(txid)
    t = resolve_target(network=network, url=url, service_cert=service_cert, node=node)
    from charter.auditor import verify_receipt_bytes
    from charter.sdk import CharterClient

    async def go() -> dict[str, Any] | bytes:
        async with CharterClient(t.url, t.service_cert) as c:
            if cose:
                return await c.cose_receipt(tx, timeout_s=timeout_s)
            # Verified below (or not, with --no-verify), for COSE receipts too.
            return await c.receipt(tx, timeout_s=timeout_s, verify=False)

    receipt = run_async(go())
    data = receipt if isinstance(receipt, bytes) else json.dumps(receipt, indent=2).encode()
    check = None
    if verify:
        from charter.identity import load_cert_pem

        check = verify_receipt_bytes(data, load_cert_pem(t.service_cert, "service certificate"))
    if out is not None:
        out.write_bytes(data)
    if as_json:
        doc: dict[str, Any] = {"transaction_id": str(tx), "verified": check is not None}
        doc["receipt"] = receipt if isinstance(receipt, dict) else base64.b64encode(data).decode()
        if out is not None:
            doc["file"] = str(out)
        print_json(doc)
        return
    if out is None:
        if isinstance(receipt, bytes):
            stdout.print(base64.b64encode(receipt).decode())
        else:
            stdout.print_json(json.dumps(receipt))
    else:
        stdout.print(f"receipt for {tx} written to {out}")
    if check is not None:
        stdout.print(f"verified against {t.service_cert}")


@receipt_app.command("verify")
@guarded
def receipt_verify(
    file: Annotated[Path, typer.Argument(help="Receipt file (JSON or COSE).")],
    service_cert: ServiceCertOpt = None,
    network: NetworkOpt = None,
    claims_digest: Annotated[
        str | None,
        typer.Option("--claims-digest", help="COSE only: expected claims digest (hex)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a receipt offline against the service certificate (no network access).

    \b
    Example: charter receipt verify r.json --service-cert workspace/sandbox/service_cert.pem
    """
    from charter.auditor import verify_receipt_file

    cert = _service_cert_offline(service_cert, network)
    if cert is None:
        raise IdentityError("no service certificate: give --service-cert or --network")
    claims = None
    if claims_digest is not None:
        try:
            claims = bytes.fromhex(claims_digest)
        except ValueError:
            raise IdentityError("--claims-digest must be hex") from None
    try:
        check = verify_receipt_file(file, cert, claims_digest=claims)
    except ReceiptInvalid as e:
        if not as_json:
            raise
        # As `ledger audit --json`: a verdict on stdout for scripts, exit status 1.
        print_json({"valid": False, "reason": e.message})
        raise typer.Exit(1) from None
    if as_json:
        print_json(
            {
                "valid": True,
                "kind": check.kind,
                "root": check.root_hex,
                "transaction_id": check.txid,
                "node_id": check.node_id,
            }
        )
        return
    what = f"transaction {check.txid}" if check.txid else "receipt"
    stdout.print(f"OK: {check.kind} receipt for {what} is valid for service cert {cert}")


# --- ledgers ------------------------------------------------------------------------------------


def _report_json(report: AuditReport) -> dict[str, Any]:
    extension = report.extension
    return {
        "resumed_from": report.resumed_from,
        "consistency": None
        if extension is None
        else {
            "old_size": extension.old_size,
            "old_root": extension.old_root.hex(),
            "new_size": extension.new_size,
            "new_root": extension.new_root.hex(),
            "proof": [node.hex() for node in extension.proof],
        },
        "transactions": report.transactions,
        "signatures": report.signatures,
        "cose_signatures": report.cose_signatures,
        "last_txid": f"{report.last_view}.{report.last_seqno}",
        "last_signed_txid": report.last_signed_txid,
        "unsigned_transactions": report.unsigned_transactions,
        "service_status": report.service_status,
        "chunks": report.chunks,
        "deprecated_entries": report.deprecated_entries,
        "nodes": report.nodes,
        "root": report.root.hex(),
    }


class _RateColumn(ProgressColumn):
    """Transactions per second, from rich's own moving estimate."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text(f"{speed:,.0f} tx/s" if speed else "… tx/s", style="progress.data.speed")


class _JsonProgress:
    """One JSON line on stderr at most every `interval_s`: seqno, total, rate, time left."""

    def __init__(self, start_seqno: int, interval_s: float = 1.0) -> None:
        self.started = time.monotonic()
        self.start_seqno = start_seqno
        self.interval_s = interval_s
        self.last_s = 0.0
        self.seqno = start_seqno
        self.total = start_seqno

    def __call__(self, seqno: int, total: int) -> None:
        self.seqno, self.total = seqno, total
        now = time.monotonic()
        if now - self.last_s < self.interval_s and seqno < total:
            return
        self.last_s = now
        elapsed_s = now - self.started
        rate = (seqno - self.start_seqno) / elapsed_s if elapsed_s > 0 else 0.0
        line = {
            "event": "progress",
            "seqno": seqno,
            "total": total,
            "tx_per_s": round(rate),
            "eta_s": round((total - seqno) / rate, 1) if rate > 0 else None,
        }
        print(json.dumps(line), file=sys.stderr, flush=True)


def _write_checkpoint(path: Path, checkpoint: AuditCheckpoint) -> None:
    """Replace `path` atomically: a crash leaves the old checkpoint or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(checkpoint.dumps())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@ledger_app.command("audit")
@guarded
def ledger_audit(
    directory: Annotated[Path, typer.Argument(help="Ledger directory (ledger_*.committed).")],
    service_cert: ServiceCertOpt = None,
    network: NetworkOpt = None,
    accept_deprecated: Annotated[
        bool,
        typer.Option("--accept-deprecated", help="Accept CCF's deprecated entry types 0/2/3."),
    ] = False,
    include_uncommitted: Annotated[
        bool,
        typer.Option(
            "--include-uncommitted", help="Also read in-progress chunks (a running node's)."
        ),
    ] = False,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="Write a checkpoint of where the audit ended (last signature) to this file.",
        ),
    ] = None,
    since: Annotated[
        Path | None,
        typer.Option(
            "--since", help="Start from this checkpoint: audit only the entries after it."
        ),
    ] = None,
    snapshot: Annotated[
        Path | None,
        typer.Option(
            "--snapshot",
            help="For a ledger that starts after a snapshot: the snapshot file it started from.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=0, help="Verifier processes (default: from the CPUs; 0 = serial)."
        ),
    ] = None,
    check_attestation: Annotated[
        bool,
        typer.Option(
            "--check-attestation",
            help="Also check that every signing node was admitted with evidence (code "
            "measurement, SEV-SNP report) that the join policy of the time accepted.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    report_path: Annotated[
        Path | None,
        typer.Option("--report", help="Also write a self-contained HTML report to this file."),
    ] = None,
) -> None:
    """Validate a ledger offline: entries, Merkle roots, node and service signatures.

    Exits 1 and names the first bad seqno (its chunk file and offset) if anything fails.
    With --since, the checkpoint must match the ledger, and only what follows is audited.
    Ctrl-C stops cleanly (exit 130), says how far the audit got and, with --checkpoint,
    saves the checkpoint reached so far.

    \b
    Example: charter ledger audit workspace/sandbox/node0/workspace/ledger --include-uncommitted --network workspace/sandbox/network.json
    """
    cert = _service_cert_offline(service_cert, network)
    options: dict[str, Any] = {
        "service_cert": cert,
        "accept_deprecated_entry_types": accept_deprecated,
        "include_uncommitted": include_uncommitted,
        "since": since,
        "checkpoint": checkpoint is not None,
        "workers": workers,
        "snapshot": snapshot,
        "check_attestation": check_attestation,
    }
    try:
        if as_json:
            try:
                report = audit_ledger(directory, progress=_JsonProgress(0), **options)
            except LedgerAuditFailed as e:
                if report_path is not None:
                    write_report(report_path, directory, None, failure=(e.seqno, e.message))
                print_json({"valid": False, "first_bad_seqno": e.seqno, "error": e.message})
                raise typer.Exit(1) from None
        else:
            with Progress(
                TextColumn("auditing"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TimeRemainingColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            ) as bar:
                task = bar.add_task("audit", total=None)

                def progress(seqno: int, total: int) -> None:
                    bar.update(task, completed=seqno, total=total)

                try:
                    report = audit_ledger(directory, progress=progress, **options)
                except LedgerAuditFailed as e:
                    if report_path is not None:
                        write_report(report_path, directory, None, failure=(e.seqno, e.message))
                    raise
    except AuditInterrupted as stop:
        saved = ""
        if checkpoint is not None and isinstance(stop.checkpoint, AuditCheckpoint):
            _write_checkpoint(checkpoint, stop.checkpoint)
            saved = (
                f"; checkpoint at seqno {stop.checkpoint.seqno} saved to {checkpoint} "
                f"(resume with --since {checkpoint})"
            )
        if as_json:
            doc = {"event": "interrupted", "seqno": stop.seqno, "total": stop.total}
            print(json.dumps(doc), file=sys.stderr, flush=True)
        fail(f"interrupted: audited up to seqno {stop.seqno} of {stop.total}{saved}", 130)
    if checkpoint is not None and report.checkpoint is not None:
        _write_checkpoint(checkpoint, report.checkpoint)
    if report_path is not None:
        write_report(report_path, directory, report, include_uncommitted=include_uncommitted)
    summary = _report_json(report)
    if checkpoint is not None:
        summary["checkpoint"] = {
            "file": str(checkpoint),
            "seqno": report.checkpoint.seqno if report.checkpoint else None,
        }
    if as_json:
        print_json({"valid": True, **summary})
        return
    stdout.print(f"OK: ledger {directory} is valid")
    if report.resumed_from is not None:
        start = f"checkpoint at {report.resumed_from} ({since})"
        if snapshot is not None:
            start = f"snapshot at {report.resumed_from} ({snapshot}), matched by its evidence"
        stdout.print(
            f"  audited seqnos {report.resumed_from + 1}..{report.last_seqno} after the {start}"
        )
        if report.extension is not None:
            proof = report.extension
            stdout.print(
                f"  the signed root at {proof.new_size} extends the checkpoint's root at "
                f"{proof.old_size} (consistency proof of {len(proof.proof)} hashes)"
            )
    stdout.print(
        f"  {summary['transactions']} transactions up to {summary['last_txid']}, "
        f"{report.signatures} signatures ({report.cose_signatures} COSE), "
        f"{report.chunks} chunk(s)"
    )
    stdout.print(
        f"  last signed {report.last_signed_txid}, {report.unsigned_transactions} unsigned after it"
    )
    stdout.print(f"  service {report.service_status}, {len(report.nodes)} node(s) seen")
    if report_path is not None:
        stdout.print(f"  report written to {report_path}")
    stdout.print(f"  root {summary['root']}")
    if cert is not None:
        stdout.print(f"  service identity matches {cert}")
    if checkpoint is not None:
        if report.checkpoint is not None:
            stdout.print(f"  checkpoint at seqno {report.checkpoint.seqno} written to {checkpoint}")
        else:
            stdout.print("  no checkpoint written: the ledger has no signature yet")
    if not include_uncommitted:
        pending = [
            p.name
            for p in directory.iterdir()
            if p.name.startswith("ledger_") and not p.name.endswith((".committed", ".ignored"))
        ]
        if pending:
            stdout.print(
                f"  not read: {len(pending)} uncommitted chunk(s); add --include-uncommitted"
            )


@ledger_app.command("read")
@guarded
def ledger_read(
    directory: Annotated[Path, typer.Argument(help="Ledger directory.")],
    start: Annotated[int, typer.Option("--from", help="First seqno.", min=1)] = 1,
    end: Annotated[int | None, typer.Option("--to", help="Last seqno (inclusive).")] = None,
    governance: Annotated[
        bool, typer.Option("--governance", help="Only the governance history.")
    ] = False,
    tables: Annotated[bool, typer.Option("--tables/--no-tables", help="Show table writes.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Print a readable dump of ledger entries, with governance history decoded.

    Private (encrypted) domains show as their size.

    \b
    Example: charter ledger read workspace/sandbox/node0/workspace/ledger --from 1 --to 20
    """
    from charter.ledger_dump import clip, read_entries

    if not directory.is_dir():
        raise IdentityError(f"ledger directory not found: {directory}")
    if end is not None and end < start:
        fail("--to must not be below --from", 2)
    count = 0
    for e in read_entries(directory, start, end):
        count += 1
        if governance and not e.events:
            continue
        if as_json:
            # JSON Lines: one entry per line, streamable into jq.
            print(json.dumps(e.to_json(), sort_keys=True))
            continue
        kind = "signature" if e.is_signature else f"type {e.entry_type}"
        stdout.print(
            f"[bold]{e.txid}[/bold] {kind}, {e.size_bytes} bytes"
            + (f", {e.private_bytes} private bytes" if e.private_bytes else "")
        )
        for event in e.events:
            stdout.print(f"  [green]gov[/green] {escape(event)}")
        if tables and not governance:
            for name, writes in e.tables.items():
                for k, v in writes.items():
                    shown = "(removed)" if v is None else clip(v)
                    stdout.print(f"  {name}[{k}] = {shown}", markup=False)
    if count == 0:
        fail(f"no entries in {directory} from seqno {start}")
