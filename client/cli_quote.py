"""`charter quote verify`: check a node's attestation evidence offline.

The evidence is what `GET /node/quotes/self` answers (node id, format, raw report and
endorsements in base64), fetched from a node or read from a file saved from it. It is
verified with `charter.ledger.quote`, the code the enclave admits joiners with: a virtual
report's format, its binding to the node's key and its measurement; an SEV-SNP report in
full (`charter.ledger.snp`: AMD's pinned roots, the VCEK's TCB and chip id, the signature,
the guest policy, the binding, measurement and host data).
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from charter.cli_common import (
    JsonOpt,
    NetworkOpt,
    ServiceCertOpt,
    UrlOpt,
    fail,
    guarded,
    print_json,
    resolve_target,
    run_async,
    stdout,
)
from charter.errors import ConnectionFailed, IdentityError, ProtocolError, QuoteInvalid
from charter.identity import JSON_FILE_BYTES_MAX, load_cert_pem, read_bounded
from charter.ledger import quote, snp
from charter.ledger.errors import LedgerError

quote_app = typer.Typer(
    help="Verify nodes' attestation evidence.", no_args_is_help=True, rich_markup_mode=None
)

QUOTE_FILE_BYTES_MAX = 256 * 1024
TLS_TIMEOUT_S = 10.0
_HEX_DIGITS = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class SavedQuote:
    """`/node/quotes/self`'s answer, checked for shape."""

    node_id: str
    evidence: quote.Evidence


def _is_hex(text: str, digits: int | None = None) -> bool:
    return (digits is None or len(text) == digits) and set(text.lower()) <= _HEX_DIGITS


def parse_saved_quote(doc: Any) -> SavedQuote:
    if not isinstance(doc, dict):
        raise QuoteInvalid("the quote is not a JSON object")
    node_id = doc.get("node_id")
    if not isinstance(node_id, str) or not _is_hex(node_id, 64):
        raise QuoteInvalid("the quote has no node_id of 64 hex digits")
    fields = [doc.get(name) for name in ("format", "raw", "endorsements")]
    if not all(isinstance(v, str) for v in fields):
        raise QuoteInvalid("the quote needs format, raw and endorsements strings")
    fmt, raw, endorsements = fields
    assert isinstance(fmt, str) and isinstance(raw, str) and isinstance(endorsements, str)
    try:
        evidence = quote.Evidence.from_quote_info(fmt[:64], raw, endorsements)
    except LedgerError as exc:
        raise QuoteInvalid(str(exc)) from None
    return SavedQuote(node_id=node_id.lower(), evidence=evidence)


def _hex_option(value: str | None, name: str, max_bytes: int) -> bytes | None:
    if value is None:
        return None
    if not _is_hex(value) or len(value) % 2 or not 0 < len(value) <= 2 * max_bytes:
        raise IdentityError(f"{name} must be hex, at most {max_bytes} bytes")
    return bytes.fromhex(value)


def _spki_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def node_certificate(url: str, service_cert: Path) -> x509.Certificate:
    """The certificate the node presents on TLS, checked against the service certificate."""
    parts = urlsplit(url)
    if parts.hostname is None:
        raise IdentityError(f"not a node address: {url}")
    context = ssl.create_default_context(cafile=str(service_cert))
    try:
        with (
            socket.create_connection((parts.hostname, parts.port or 443), TLS_TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionFailed(f"cannot reach {url}: {exc}") from None
    if der is None:
        raise ProtocolError(f"{url} presented no certificate")
    return x509.load_der_x509_certificate(der)


async def _fetch_quote(url: str, service_cert: Path) -> Any:
    from charter.sdk import CharterClient

    async with CharterClient(url, service_cert) as client:
        return await client.get_json("/node/quotes/self")


@dataclass(frozen=True, slots=True)
class Verdict:
    node_id: str
    check: quote.QuoteCheck
    binding: str


def verify_saved_quote(
    saved: SavedQuote,
    *,
    measurement: str,
    host_data: str | None,
    node_cert: x509.Certificate | None,
    report_data: bytes | None,
) -> Verdict:
    """Verify the evidence; raises `QuoteInvalid` naming the check that failed."""
    key_der = None
    if report_data is not None:
        binding = f"report data {report_data.hex()[:16]}…"
    elif node_cert is not None:
        key_der = _spki_der(node_cert)
        if hashlib.sha256(key_der).hexdigest() != saved.node_id:
            raise QuoteInvalid("node_id: the node certificate's key is not node " + saved.node_id)
        binding = "the node certificate's key"
    else:
        # A node id is the SHA-256 of the node's public key: the report must bind it.
        report_data = bytes.fromhex(saved.node_id)
        binding = "the key of node id " + saved.node_id[:16] + "…"
    if host_data is not None and saved.evidence.format != quote.SNP_FORMAT:
        raise QuoteInvalid(f"host_data: {saved.evidence.format} evidence carries no host data")
    policy = snp.Policy(
        measurements={measurement}, host_data=None if host_data is None else {host_data}
    )
    try:
        check = quote.verify_evidence(
            saved.evidence,
            public_key_der=key_der,
            report_data=None if key_der is not None else report_data,
            virtual_measurements={measurement},
            snp_policy=policy,
        )
    except LedgerError as exc:
        raise QuoteInvalid(str(exc)) from None
    return Verdict(node_id=saved.node_id, check=check, binding=binding)


@quote_app.command("verify")
@guarded
def quote_verify(
    measurement: Annotated[
        str, typer.Option("--measurement", help="Expected code measurement (hex).")
    ],
    file: Annotated[
        Path | None,
        typer.Option("--file", help="A JSON file saved from GET /node/quotes/self."),
    ] = None,
    host_data: Annotated[
        str | None, typer.Option("--host-data", help="SEV-SNP: expected host data (hex).")
    ] = None,
    node_cert: Annotated[
        Path | None,
        typer.Option(
            "--node-cert", help="With --file: the node's certificate, whose key it must bind."
        ),
    ] = None,
    report_data: Annotated[
        str | None,
        typer.Option(
            "--report-data",
            help="Expect the report to bind this (hex, up to 64 bytes) instead of a node key.",
        ),
    ] = None,
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    node: Annotated[
        str,
        typer.Option("--node", help="The node to ask: its URL, or its index in --network."),
    ] = "0",
    as_json: JsonOpt = False,
) -> None:
    """Check a node's attestation evidence against an expected measurement, offline.

    The evidence comes from a node (--url or --node URL with --service-cert, or --network)
    or from a saved file (--file). Exit status 0 when it is valid, 1 when not.

    \b
    Example: charter quote verify --network workspace/sandbox/network.json --measurement 5e1f…
    """
    expected = measurement.lower()
    if not _is_hex(expected) or not 0 < len(expected) <= 128:
        raise IdentityError("--measurement must be hex")
    expected_host_data = None if host_data is None else host_data.lower()
    if expected_host_data is not None and not _is_hex(expected_host_data, 64):
        raise IdentityError("--host-data must be 64 hex digits")
    bound = _hex_option(report_data, "--report-data", 64)
    certificate = None
    if file is not None:
        if network is not None or url is not None:
            raise IdentityError("give --file, or a node to ask, not both")
        doc = _load_json(file)
        if node_cert is not None:
            pem = load_cert_pem(node_cert, "node certificate").encode()
            certificate = x509.load_pem_x509_certificate(pem)
    else:
        if node_cert is not None:
            raise IdentityError("--node-cert is for --file: a node shows its own certificate")
        index = int(node) if node.isdigit() else 0
        if not node.isdigit():
            url = node
        target = resolve_target(network=network, url=url, service_cert=service_cert, node=index)
        certificate = node_certificate(target.url, target.service_cert)
        doc = run_async(_fetch_quote(target.url, target.service_cert))
    if bound is not None and certificate is not None:
        raise IdentityError(
            "--report-data replaces the node key binding: not with --node-cert or a live node"
        )
    try:
        saved = parse_saved_quote(doc)
        verdict = verify_saved_quote(
            saved,
            measurement=expected,
            host_data=expected_host_data,
            node_cert=certificate,
            report_data=bound,
        )
    except QuoteInvalid as exc:
        if not as_json:
            fail(f"invalid evidence: {exc.message}")
        print_json({"valid": False, "reason": exc.message})
        raise typer.Exit(1) from None
    check = verdict.check
    if as_json:
        print_json(
            {
                "valid": True,
                "node_id": verdict.node_id,
                "format": check.format,
                "measurement": check.measurement,
                "host_data": check.host_data or None,
                "secure": check.format != quote.VIRTUAL_FORMAT,
            }
        )
        return
    warning = " (virtual: not backed by hardware)" if check.format == quote.VIRTUAL_FORMAT else ""
    stdout.print(
        f"OK: {check.format} evidence of node {verdict.node_id[:16]}… binds {verdict.binding} "
        f"and measures {check.measurement[:16]}…{warning}"
    )


def _load_json(path: Path) -> Any:
    import json

    data = read_bounded(path, min(QUOTE_FILE_BYTES_MAX, JSON_FILE_BYTES_MAX), "quote file")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise QuoteInvalid(f"quote file {path} is not JSON") from None
