"""`python -m charter.ledger audit DIR`: validate a ledger directory offline and print a summary."""

from __future__ import annotations

import argparse
import sys
import time

from charter.ledger.audit import audit
from charter.ledger.errors import AuditError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m charter.ledger", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    audit_cmd = commands.add_parser("audit", help="validate every transaction of a ledger")
    audit_cmd.add_argument("directory")
    audit_cmd.add_argument("--service-cert", help="PEM file of the expected service identity")
    audit_cmd.add_argument(
        "--accept-deprecated", action="store_true", help="accept entry types 0/2/3 (old CCF)"
    )
    audit_cmd.add_argument(
        "--include-uncommitted", action="store_true", help="also read chunks not yet committed"
    )
    audit_cmd.add_argument("--workers", type=int, default=0, help="processes scanning chunks")
    args = parser.parse_args(argv)

    service_cert_pem = None
    if args.service_cert:
        with open(args.service_cert, encoding="ascii") as f:
            service_cert_pem = f.read(64 * 1024)
    started_s = time.perf_counter()
    try:
        report = audit(
            args.directory,
            service_cert_pem=service_cert_pem,
            accept_deprecated_entry_types=args.accept_deprecated,
            committed_only=not args.include_uncommitted,
            workers=args.workers,
        )
    except AuditError as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return 1
    elapsed_s = time.perf_counter() - started_s
    print(f"valid: {report.transactions} transactions in {report.chunks} chunks")
    print(f"signatures: {report.signatures} (COSE: {report.cose_signatures})")
    print(f"last signed txid: {report.last_signed_txid}")
    print(f"unsigned tail: {report.unsigned_transactions} transactions")
    print(f"service status: {report.service_status}")
    print(f"merkle root: {report.root.hex()}")
    rate = report.transactions / elapsed_s if elapsed_s > 0 else 0.0
    print(f"time: {elapsed_s:.3f} s ({rate:,.0f} tx/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
