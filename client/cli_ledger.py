"""`charter receipt get|verify` and `charter ledger audit|read`."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
    return {
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
    as_json: JsonOpt = False,
    report_path: Annotated[
        Path | None,
        typer.Option("--report", help="Also write a self-contained HTML report to this file."),
    ] = None,
) -> None:
    """Validate a whole ledger offline: entries, Merkle roots, node and service signatures.

    Exits 1 and names the first bad seqno if anything fails.

    \b
    Example: charter ledger audit workspace/sandbox/node0/workspace/ledger --include-uncommitted --network workspace/sandbox/network.json
    """
    cert = _service_cert_offline(service_cert, network)
    if as_json:
        try:
            report = audit_ledger(
                directory,
                service_cert=cert,
                accept_deprecated_entry_types=accept_deprecated,
                include_uncommitted=include_uncommitted,
            )
        except LedgerAuditFailed as e:
            if report_path is not None:
                write_report(report_path, directory, None, failure=(e.seqno, e.message))
            print_json({"valid": False, "first_bad_seqno": e.seqno, "error": e.message})
            raise typer.Exit(1) from None
        if report_path is not None:
            write_report(report_path, directory, report, include_uncommitted=include_uncommitted)
        print_json({"valid": True, **_report_json(report)})
        return
    with Progress(
        TextColumn("auditing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("audit", total=None)

        def progress(seqno: int, total: int) -> None:
            bar.update(task, completed=seqno, total=total)

        try:
            report = audit_ledger(
                directory,
                service_cert=cert,
                progress=progress,
                accept_deprecated_entry_types=accept_deprecated,
                include_uncommitted=include_uncommitted,
            )
        except LedgerAuditFailed as e:
            if report_path is not None:
                write_report(report_path, directory, None, failure=(e.seqno, e.message))
            raise
    if report_path is not None:
        write_report(report_path, directory, report, include_uncommitted=include_uncommitted)
        stdout.print(f"  report written to {report_path}")
    summary = _report_json(report)
    stdout.print(f"OK: ledger {directory} is valid")
    stdout.print(
        f"  {summary['transactions']} transactions up to {summary['last_txid']}, "
        f"{report.signatures} signatures ({report.cose_signatures} COSE), "
        f"{report.chunks} chunk(s)"
    )
    stdout.print(
        f"  last signed {report.last_signed_txid}, {report.unsigned_transactions} unsigned after it"
    )
    stdout.print(f"  service {report.service_status}, {len(report.nodes)} node(s) seen")
    stdout.print(f"  root {summary['root']}")
    if cert is not None:
        stdout.print(f"  service identity matches {cert}")
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
