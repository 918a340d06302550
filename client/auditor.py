"""Offline auditing: receipts and ledger directories, no network access.

An auditor holds the service certificate, receipts and ledger files, and trusts no node.
These functions wrap charter.ledger.receipt and charter.ledger.audit so that every failure is one typed
`CharterError` (ReceiptInvalid, LedgerAuditFailed, IdentityError).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from charter.errors import IdentityError, LedgerAuditFailed, ReceiptInvalid
from charter.identity import load_cert_pem, read_bounded
from charter.ledger.audit import AuditReport, ProgressCallback, audit
from charter.ledger.audit_checkpoint import CHECKPOINT_BYTES_MAX, AuditCheckpoint
from charter.ledger.errors import AuditError, AuditInterrupted, LedgerError
from charter.ledger.receipt import decode_cose_receipt, verify_cose_receipt
from charter.ledger.snapshot import SNAPSHOT_BYTES_MAX
from charter.sdk import verify_json_receipt

log = logging.getLogger(__name__)

# A JSON receipt is a few KB (a proof of ~log2(n) hashes plus two certificates); a COSE one
# is smaller. 1 MiB leaves room for long endorsement chains after many recoveries.
RECEIPT_FILE_BYTES_MAX = 1024 * 1024
# Tagged COSE_Sign1 starts with CBOR tag 18 = 0xd2.
COSE_SIGN1_TAG_BYTE = 0xD2
ZERO_CLAIMS_DIGEST = bytes(32)


@dataclass(frozen=True, slots=True)
class ReceiptCheck:
    """What a verified receipt proves: its kind, the signed Merkle root, the tx if known."""

    kind: str  # "json" or "cose"
    root_hex: str | None
    txid: str | None
    node_id: str | None


def _txid_from_evidence(evidence: object) -> str | None:
    # commit evidence is "ce:V.S:hex"; it names the transaction the receipt is for.
    if isinstance(evidence, str) and evidence.startswith("ce:"):
        parts = evidence.split(":")
        if len(parts) == 3:
            return parts[1]
    return None


def verify_receipt_bytes(
    data: bytes, service_cert_pem: str, *, claims_digest: bytes | None = None
) -> ReceiptCheck:
    """Verify a JSON or COSE receipt (detected from its first byte)."""
    if data[:1] == bytes([COSE_SIGN1_TAG_BYTE]):
        return _verify_cose(data, service_cert_pem, claims_digest)
    try:
        receipt = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReceiptInvalid(f"receipt is neither JSON nor COSE: {e}") from None
    if not isinstance(receipt, dict):
        raise ReceiptInvalid("a JSON receipt must be an object")
    root = verify_json_receipt(receipt, service_cert_pem, claims_digest=claims_digest)
    components = receipt.get("leaf_components")
    evidence = components.get("commit_evidence") if isinstance(components, dict) else None
    node_id = receipt.get("node_id")
    return ReceiptCheck(
        kind="json",
        root_hex=root.hex(),
        txid=_txid_from_evidence(evidence),
        node_id=node_id if isinstance(node_id, str) else None,
    )


def _verify_cose(data: bytes, service_cert_pem: str, claims_digest: bytes | None) -> ReceiptCheck:
    try:
        _, proofs = decode_cose_receipt(data)
        first = proofs[0].leaf_components if proofs else None
        if claims_digest is None:
            # No expectation given: check the receipt proves the claims digest it carries.
            carried = first.claims_digest if first is not None else None
            claims_digest = carried if carried is not None else ZERO_CLAIMS_DIGEST
        verify_cose_receipt(data, service_cert_pem, claims_digest)
    except LedgerError as e:
        raise ReceiptInvalid(f"COSE receipt does not verify: {e}", code=e.code) from None
    return ReceiptCheck(
        kind="cose",
        root_hex=None,
        txid=_txid_from_evidence(first.commit_evidence) if first is not None else None,
        node_id=None,
    )


def verify_receipt_file(
    path: str | Path, service_cert: str | Path, *, claims_digest: bytes | None = None
) -> ReceiptCheck:
    """Verify a receipt file (JSON or COSE) against a service certificate file."""
    cert_pem = load_cert_pem(Path(service_cert), "service certificate")
    data = read_bounded(Path(path), RECEIPT_FILE_BYTES_MAX, "receipt file")
    if not data:
        raise ReceiptInvalid(f"receipt file {path} is empty")
    return verify_receipt_bytes(data, cert_pem, claims_digest=claims_digest)


def audit_ledger(
    directory: str | Path,
    *,
    service_cert: str | Path | None = None,
    progress: ProgressCallback | None = None,
    accept_deprecated_entry_types: bool = False,
    include_uncommitted: bool = False,
    since: str | Path | None = None,
    checkpoint: bool = False,
    workers: int | None = None,
    snapshot: str | Path | None = None,
    check_attestation: bool = False,
) -> AuditReport:
    """Validate a whole ledger directory with ledger.audit; returns its AuditReport.

    `progress(seqno, total)` is called after each chunk. With `service_cert`, the ledger must
    end with that service identity. Only `*.committed` chunks are read (as `ccf.ledger`
    does) unless `include_uncommitted`, e.g. for a running node's directory. `since` is a
    checkpoint file an earlier audit wrote: only the entries after it are audited (and the
    checkpoint is refused unless the ledger still holds what it covered). `checkpoint=True`
    puts a new checkpoint in the report. `snapshot` is the snapshot file a ledger that
    starts after seqno 1 was started from. `check_attestation`: every signer must have been
    admitted with evidence the join policy of the time accepted (needs the whole ledger).
    `workers`: see `ledger.audit.audit`. Raises
    LedgerAuditFailed carrying the first bad seqno; Ctrl-C raises AuditInterrupted.
    """
    path = Path(directory)
    if not path.exists():
        raise IdentityError(f"ledger directory not found: {path}")
    if not path.is_dir():
        raise IdentityError(f"not a ledger directory: {path}")
    cert_pem = load_cert_pem(Path(service_cert), "service certificate") if service_cert else None
    names = [p.name for p in path.iterdir() if p.name.startswith("ledger_")]
    if not include_uncommitted and names and not any(".committed" in n for n in names):
        raise LedgerAuditFailed(
            f"no committed chunks in {path}, only in-progress ones (a running node's ledger?): "
            "audit them with --include-uncommitted"
        )
    start = None
    if since is not None:
        data = read_bounded(Path(since), CHECKPOINT_BYTES_MAX, "audit checkpoint")
        try:
            start = AuditCheckpoint.loads(data)
        except LedgerError as e:
            raise LedgerAuditFailed(f"checkpoint {since} refused: {e}", code=e.code) from None
    if check_attestation and (since is not None or snapshot is not None):
        raise LedgerAuditFailed(
            "--check-attestation replays every admission from seqno 1: "
            "it cannot start from a checkpoint or a snapshot"
        )
    snapshot_bytes = None
    if snapshot is not None:
        snapshot_bytes = read_bounded(Path(snapshot), SNAPSHOT_BYTES_MAX, "snapshot")
    try:
        report = audit(
            str(path),
            service_cert_pem=cert_pem,
            progress=progress,
            accept_deprecated_entry_types=accept_deprecated_entry_types,
            committed_only=not include_uncommitted,
            since=start,
            checkpoint=checkpoint,
            workers=workers,
            snapshot=snapshot_bytes,
            check_attestation=check_attestation,
        )
    except AuditInterrupted:
        raise  # the caller says how far it got and may save the checkpoint
    except AuditError as e:
        message = str(e).removeprefix(f"seqno {e.seqno}: ")
        raise LedgerAuditFailed(message, seqno=e.seqno, code=e.code) from None
    except LedgerError as e:
        raise LedgerAuditFailed(str(e), code=e.code) from None
    log.info("ledger audited directory=%s transactions=%d", path, report.transactions)
    return report
