"""A SCITT transparency service in the shape of Microsoft's scitt-ccf-ledger 0.13, the
server that Microsoft's own client `pyscitt` 0.10.1 (the `scitt` command line) drives
unchanged (`charter sandbox --app scitt`; docs/scitt.md walks through it).

    POST /entries                              COSE_Sign1 signed statement -> 202 + operation
    GET  /operations/{id}                      202 while running; 200 CBOR {"Status": ...}
    GET  /entries/{id}                         the COSE receipt (application/cose)
    GET  /entries/{id}/statement               the transparent statement (receipt in 394)
    GET  /entries/txIds[?from&to]              ids of registered statements (JSON, paged)
    GET  /parameters, /parameters/historic     the service parameters verifiers pin
    GET  /jwks, /.well-known/transparency-configuration, /configuration, /version

Routes have no /app prefix, as in the real service (CCF hands paths outside /gov and /node
to the application). Registration is unauthenticated, as scitt-ccf-ledger allows; what is
registered is decided by the statement's own signature and issuer and by the policy
governance sets (`set_scitt_configuration`, governance/scitt_config.py). Checks and error
shapes are in `scitt_model`.

Storage. `public:scitt.entry` maps the seqno of each registration (u64 big-endian, so
iteration is ledger order) to the view of that transaction (u64 big-endian) followed by the
signed statement with an empty unprotected header. The map is public, as in the real
service: statements are public by nature, and `charter ledger audit` sees them. The
registration transaction's claims digest is SHA-256 of those statement bytes, so the node's
ordinary COSE receipt for it (the same bytes `/node/receipt/cose` serves, which `ccf.cose`
verifies) is the SCITT receipt. Operation ids are entry ids: every registration is
synchronous, so an operation is running until its transaction commits.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import struct
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from charter.enclave_app.app import App, Context, Response
from charter.enclave_app.samples.scitt_model import (
    CT_CBOR,
    CT_COSE,
    CT_PROBLEM,
    ScittError,
    operation_body,
    problem_details,
    transparent_statement,
    verify_statement,
)
from charter.governance import tables as gt
from charter.governance.scitt_config import STATEMENT_BYTES_MAX, load_scitt_configuration
from charter.ledger import certs, cose
from charter.ledger.errors import DecodeError
from charter.ledger.signatures import (
    COSE_SIGNATURES_CONFIG_TABLE,
    CoseSignaturesConfig,
    parse_cose_signatures_config,
)

logger = logging.getLogger(__name__)

ENTRIES = "public:scitt.entry"
SERVICE_VERSION = "charter-scitt-0.13-compatible"
RETRY_AFTER_S = "1"
TXIDS_PAGE_MAX = 1000
# Bodies above the policy's hard limit still get the CBOR PayloadTooLarge answer; beyond
# twice that the framework refuses them before parsing (413).
ENTRIES_BODY_BYTES_MAX = 2 * STATEMENT_BYTES_MAX

_TXID = re.compile(r"([0-9]{1,19})\.([0-9]{1,19})")
_U64 = struct.Struct(">Q")
_ALG_NAMES = {cose.ALG_ES256: "ES256", cose.ALG_ES384: "ES384", cose.ALG_ES512: "ES512"}

app = App("scitt", prefix="", version="0.13.0", api_path="/app/api")


# --------------------------------------------------------------------------------------------
# Helpers


def _error(exc: ScittError) -> Response:
    headers = {"Retry-After": RETRY_AFTER_S} if exc.status == 503 else {}
    return Response(exc.status, problem_details(exc.code, exc.message), headers, CT_PROBLEM)


def _runtime(ctx: Context) -> Any:
    if ctx.runtime is None:
        raise ScittError(503, "ServiceNotReady", "This endpoint needs a running node")
    return ctx.runtime


def _parse_txid(text: str) -> tuple[int, int]:
    found = _TXID.fullmatch(text)
    if found is None or int(found.group(1)) < 1 or int(found.group(2)) < 1:
        raise ScittError(400, "InvalidInput", f"Invalid transaction id: {text[:40]!r}")
    return int(found.group(1)), int(found.group(2))


def _statement_at(ctx: Context, view: int, seqno: int) -> bytes | None:
    """The statement registered by transaction view.seqno, if that is a registration."""
    if seqno >= 1 << 64:
        return None
    value = ctx.tx.get(ENTRIES, _U64.pack(seqno))
    if value is None or _U64.unpack(value[:8])[0] != view:
        return None
    statement: bytes = value[8:]
    return statement


def _committed_statement_and_receipt(ctx: Context, txid: str) -> tuple[bytes, bytes]:
    """The statement and COSE receipt of a committed registration; 503 TransactionNotCached
    (which pyscitt retries) while it is pending or its receipt is not yet available here."""
    view, seqno = _parse_txid(txid)
    status = str(_runtime(ctx).tx_status(view, seqno))
    if status == "Pending":
        raise ScittError(503, "TransactionNotCached", f"Transaction {txid} is not committed yet")
    if status != "Committed":
        raise ScittError(404, "NotFound", f"Transaction {txid} is {status}")
    statement = _statement_at(ctx, view, seqno)
    if statement is None:
        raise ScittError(
            400, "InvalidInput", f"Transaction ID {txid} does not correspond to a submission."
        )
    code, receipt = _runtime(ctx).cose_receipt(view, seqno)
    if code == 202:
        raise ScittError(503, "TransactionNotCached", f"The receipt of {txid} is not ready yet")
    if code != 200 or receipt is None:
        raise ScittError(404, "NotFound", f"No receipt for {txid}")
    return statement, receipt


def _service_cert_der(ctx: Context) -> bytes:
    info = gt.service_info(ctx.tx)
    if info is None or not info.get("cert"):
        raise ScittError(503, "ServiceNotReady", "The service has no identity yet")
    der: bytes = certs.load_cert(str(info["cert"])).public_bytes(serialization.Encoding.DER)
    return der


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------------------------
# Registration and operations


@app.post("/entries", auth="none", max_body_bytes=ENTRIES_BODY_BYTES_MAX)
def register_signed_statement(ctx: Context) -> Response:
    """Signed Statement Registration (draft-ietf-scitt-scrapi 2.1.2)."""
    try:
        registration = verify_statement(ctx.body, load_scitt_configuration(ctx.tx))
        pending = _runtime(ctx).pending_txid
        if pending is None:
            raise ScittError(503, "NotPrimary", "Registrations run on the primary; retry")
    except ScittError as exc:
        logger.info("event=scitt_refused code=%s", exc.code)
        return _error(exc)
    view, seqno = pending
    assert seqno == ctx.tx.base_version + 1, (seqno, ctx.tx.base_version)
    ctx.tx.put(ENTRIES, _U64.pack(seqno), _U64.pack(view) + registration.statement)
    ctx.set_claims_digest(registration.claims_digest)
    txid = f"{view}.{seqno}"
    headers = {}
    if host := ctx.headers.get("host"):
        headers["Location"] = f"https://{host}/operations/{txid}"
    logger.info("event=scitt_registered txid=%s", txid)
    return Response(202, operation_body(txid, "running"), headers, CT_CBOR)


@app.get("/operations/{operationId}", auth="none")
def get_operation(ctx: Context) -> Response:
    """Check Registration (scrapi 2.1.3): 202 while running, then 200 succeeded/failed."""
    operation_id = ctx.path["operationId"]
    try:
        view, seqno = _parse_txid(operation_id)
        status = str(_runtime(ctx).tx_status(view, seqno))
        if status in ("Pending", "Unknown"):
            return Response(
                202,
                operation_body(operation_id, "running"),
                {"Retry-After": RETRY_AFTER_S},
                CT_CBOR,
            )
        if status == "Invalid":
            body = {
                "OperationId": operation_id,
                "Status": "failed",
                "Error": {-1: "TransactionInvalid", -2: "The registration was rolled back"},
            }
            return Response(200, cbor2.dumps(body), {}, CT_CBOR)
        if _statement_at(ctx, view, seqno) is None:
            raise ScittError(404, "NotFound", "Invalid operation ID")
    except ScittError as exc:
        return _error(exc)
    headers = {}
    if host := ctx.headers.get("host"):
        headers["Location"] = f"https://{host}/entries/{operation_id}"
    return Response(200, operation_body(operation_id, "succeeded", operation_id), headers, CT_CBOR)


# --------------------------------------------------------------------------------------------
# Entries, receipts and transparent statements


@app.get("/entries/{entryId}", auth="none")
def get_entry_receipt(ctx: Context) -> Response:
    """Resolve Receipt (scrapi 2.1.4): the COSE receipt of a registration."""
    try:
        _, receipt = _committed_statement_and_receipt(ctx, ctx.path["entryId"])
    except ScittError as exc:
        return _error(exc)
    return Response(200, receipt, {}, CT_COSE)


@app.get("/entries/{entryId}/statement", auth="none")
def get_entry_statement(ctx: Context) -> Response:
    """The transparent statement: the signed statement with its receipt embedded."""
    try:
        statement, receipt = _committed_statement_and_receipt(ctx, ctx.path["entryId"])
    except ScittError as exc:
        return _error(exc)
    return Response(200, transparent_statement(statement, receipt), {}, CT_COSE)


@app.get("/entries/txIds", auth="none")
def list_entry_ids(ctx: Context) -> Any:
    """Committed registrations with from <= seqno <= to, oldest first, paged by nextLink."""
    try:
        _, commit_seqno = _runtime(ctx).commit_txid
        first = int(ctx.query.get("from", "1"))
        last = int(ctx.query.get("to", str(commit_seqno)))
    except (TypeError, ValueError):
        return Response(400, {"error": {"code": "InvalidInput", "message": "from/to are seqnos"}})
    except ScittError as exc:
        return _error(exc)
    if last < first:
        message = f"Invalid range: Starts at {first} but ends at {last}"
        return Response(400, {"error": {"code": "InvalidInput", "message": message}})
    last = min(last, commit_seqno)
    ids: list[str] = []
    next_link = None
    for key, value in ctx.tx.items(ENTRIES):
        seqno = _U64.unpack(key)[0]
        if seqno < first:
            continue
        if seqno > last:
            break
        if len(ids) == TXIDS_PAGE_MAX:
            next_link = f"/entries/txIds?from={seqno}&to={last}"
            break
        ids.append(f"{_U64.unpack(value[:8])[0]}.{seqno}")
    page: dict[str, Any] = {"transactionIds": ids}
    if next_link is not None:
        page["nextLink"] = next_link
    return page


# --------------------------------------------------------------------------------------------
# What verifiers fetch


def _signature_algorithm(cert_der: bytes) -> str:
    """The COSE algorithm of the receipts: what the service key's curve signs with."""
    key = x509.load_der_x509_certificate(cert_der).public_key()
    try:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("not an ECDSA key")
        return _ALG_NAMES[cose.alg_for_curve(key.curve)]
    except ValueError as exc:
        raise ScittError(503, "ServiceNotReady", f"Unsupported service key: {exc}") from None


def _parameters(cert_der: bytes) -> dict[str, str]:
    return {
        "serviceId": hashlib.sha256(cert_der).hexdigest(),
        "treeAlgorithm": "CCF",
        "signatureAlgorithm": _signature_algorithm(cert_der),
        "serviceCertificate": base64.b64encode(cert_der).decode("ascii"),
    }


@app.get("/parameters", auth="none")
def get_parameters(ctx: Context) -> Any:
    """The current service parameters (pyscitt's trust-store file format)."""
    try:
        return _parameters(_service_cert_der(ctx))
    except ScittError as exc:
        return _error(exc)


@app.get("/parameters/historic", auth="none")
def get_historic_parameters(ctx: Context) -> Any:
    """The service parameters; Charter lists the current identity only."""
    try:
        return {"parameters": [_parameters(_service_cert_der(ctx))]}
    except ScittError as exc:
        return _error(exc)


@app.get("/jwks", auth="none")
def get_jwks(ctx: Context) -> Any:
    """The service's receipt-signing key as a JWK set; kid as in the receipts' header."""
    try:
        der = _service_cert_der(ctx)
    except ScittError as exc:
        return _error(exc)
    key = x509.load_der_x509_certificate(der).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    numbers = key.public_numbers()
    size = (key.curve.key_size + 7) // 8
    jwk = {
        "kty": "EC",
        "crv": "P-384" if size == 48 else "P-256" if size == 32 else "P-521",
        "x": _b64url(numbers.x.to_bytes(size, "big")),
        "y": _b64url(numbers.y.to_bytes(size, "big")),
        "kid": cose.kid_for_public_key(key).decode("ascii"),
    }
    return {"keys": [jwk]}


def _cose_signatures_config(ctx: Context) -> CoseSignaturesConfig:
    value = ctx.tx.get(COSE_SIGNATURES_CONFIG_TABLE, gt.SINGLETON_KEY)
    if value is None:
        return CoseSignaturesConfig()
    try:
        return parse_cose_signatures_config(value)
    except DecodeError:
        raise ScittError(503, "ServiceNotReady", "The service's issuer is unreadable") from None


@app.get("/.well-known/transparency-configuration", auth="none")
def get_transparency_configuration(ctx: Context) -> Response:
    """scrapi 2.1.1, in CBOR. `issuer` is the CWT issuer the receipts carry (the node
    config's `start.cose_signatures.issuer`), and the keys are served under it; without an
    issuer (CCF's default, empty) the keys are named under the host the client asked."""
    try:
        issuer = _cose_signatures_config(ctx).issuer
    except ScittError as exc:
        return _error(exc)
    where = issuer or ctx.headers.get("host", "")
    config = {"issuer": issuer, "jwks_uri": f"https://{where}/jwks"}
    return Response(200, cbor2.dumps(config), {}, CT_CBOR)


@app.get("/configuration", auth="none")
def get_configuration(ctx: Context) -> Any:
    """The SCITT configuration governance set ({} if none)."""
    config = load_scitt_configuration(ctx.tx)
    return {} if config is None else config.model_dump(mode="json", exclude_none=True)


@app.get("/version", auth="none")
def get_version(ctx: Context) -> Any:
    return {"version": SERVICE_VERSION}
