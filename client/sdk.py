"""Async Python SDK for a Charter service (users, operators; members in charter.member).

    async with CharterClient("https://127.0.0.1:8000", "service_cert.pem",
                             cert_path="user0_cert.pem", key_path="user0_privk.pem") as c:
        r = await c.post("/app/log", json={"id": 1, "msg": "hello"})
        await c.wait_for_commit(r.txid)
        receipt = await c.receipt(r.txid)  # verified against the service certificate

TLS trusts exactly one anchor, the service certificate: node certificates are issued by the
service key, so a client that pins it talks only to nodes the service has endorsed, whichever
node it reaches. Node certificates carry IP SANs, so hostname checking stays on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import json as jsonlib
import logging
import ssl
import time
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import aiohttp
from multidict import CIMultiDictProxy

from charter.errors import (
    CertificateRefused,
    CharterError,
    CommitTimeout,
    ConnectionFailed,
    IdentityError,
    ProtocolError,
    ReceiptInvalid,
    ServiceUnavailable,
    TransactionInvalid,
    error_from_response,
)
from charter.identity import Identity, TxId, load_cert_pem
from charter.ledger.errors import LedgerError
from charter.ledger.receipt import verify_json_receipt as ledger_verify_json_receipt
from charter.user_requests import COSE_CONTENT_TYPE, user_envelope

log = logging.getLogger(__name__)

TXID_HEADER = "x-ms-ccf-transaction-id"
GOV_API_VERSION = "2024-07-01"
# Which built-in URL serves COSE receipts is not fixed by CCF 6.x (FORMATS §5.2 [?]); this is
# Charter's choice, documented in docs/internals.md.
COSE_RECEIPT_PATH = "/node/receipt/cose"

# Responses we read are JSON documents, receipts and small binary blobs. A bound keeps a
# misbehaving server from making the client buffer without limit.
RESPONSE_BYTES_MAX = 16 * 1024 * 1024
REQUEST_TIMEOUT_S_DEFAULT = 30.0
# Polling for commit/receipts: start fast (a signature usually follows within ms), back off,
# never sleep longer than this between polls.
POLL_INTERVAL_S_MIN = 0.02
POLL_INTERVAL_S_MAX = 0.5
RETRY_AFTER_S_MAX = 5.0
# After a failed request with a client certificate: how long to wait for the node's answer
# without one, which tells a refused certificate from a node that is down.
PROBE_TIMEOUT_S = 5.0
# Paged lists (`nextLink`) are followed at most this many times.
LIST_PAGES_MAX = 1000
# An RSA-OAEP ciphertext of a recovery share, base64 (a 16384-bit key's would be 2,732).
ENCRYPTED_SHARE_B64_MAX = 4096


class Response(NamedTuple):
    """An HTTP answer: `status`, `headers`, `body` (decoded JSON when JSON, else bytes)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: Any

    @property
    def txid(self) -> TxId | None:
        """The transaction id the service attached, if any."""
        value = self.headers.get(TXID_HEADER)
        if value is None:
            return None
        try:
            return TxId.parse(value)
        except ValueError:
            raise ProtocolError(f"bad {TXID_HEADER} header: {value[:64]!r}") from None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def build_ssl_context(
    service_cert_path: Path, cert_path: Path | None = None, key_path: Path | None = None
) -> ssl.SSLContext:
    """A client TLS context whose only trust anchor is the service certificate."""
    cert_pem = load_cert_pem(service_cert_path, "service certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname + CERT_REQUIRED by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=cert_pem)
    if (cert_path is None) != (key_path is None):
        raise IdentityError("give both a client certificate and its private key, or neither")
    if cert_path is not None and key_path is not None:
        # Identity.load would check the pair too; here ssl does, with its own message.
        for p, what in ((cert_path, "client certificate"), (key_path, "client private key")):
            if not p.is_file():
                raise IdentityError(f"{what} not found: {p}")
        try:
            ctx.load_cert_chain(str(cert_path), str(key_path))
        except ssl.SSLError as e:
            raise IdentityError(
                f"client certificate {cert_path} and key {key_path} cannot be used: {e.reason}"
            ) from None
    return ctx


def _decode_body(content_type: str, data: bytes) -> Any:
    if "json" in content_type and data:
        try:
            return jsonlib.loads(data)
        except (jsonlib.JSONDecodeError, UnicodeDecodeError):
            raise ProtocolError("service sent a body labelled JSON that is not JSON") from None
    return data


def _retry_after_s(headers: CIMultiDictProxy[str], fallback_s: float) -> float:
    value = headers.get("Retry-After")
    if value is None:
        return fallback_s
    try:
        return min(max(float(value), POLL_INTERVAL_S_MIN), RETRY_AFTER_S_MAX)
    except ValueError:
        return fallback_s


def _as_txid(txid: TxId | str) -> TxId:
    return txid if isinstance(txid, TxId) else TxId.parse(txid)


class CertificateExpiry(NamedTuple):
    """notAfter of the service certificate and of each node's (by node id), in UTC."""

    service: datetime.datetime
    nodes: dict[str, datetime.datetime]

    def expiring(
        self, now: datetime.datetime, within_days: int
    ) -> list[tuple[str, datetime.datetime]]:
        """("service" or "node <id>", notAfter) of each certificate ending within the days."""
        limit = now + datetime.timedelta(days=within_days)
        named = [("service", self.service)] + [(f"node {k}", v) for k, v in self.nodes.items()]
        return [(name, at) for name, at in named if at <= limit]


def _utc(text: Any) -> datetime.datetime:
    if not isinstance(text, str) or len(text) > 64:
        raise ValueError("not a time")
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


class CharterClient:
    """An async connection to one Charter node; use as `async with CharterClient(...)`."""

    def __init__(
        self,
        url: str,
        service_cert_path: str | Path,
        *,
        cert_path: str | Path | None = None,
        key_path: str | Path | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
        response_bytes_max: int = RESPONSE_BYTES_MAX,
        bearer_token: str | None = None,
    ) -> None:
        """``bearer_token``: a JWT sent as ``Authorization: Bearer`` with every request (for
        endpoints with the ``jwt`` policy)."""
        assert request_timeout_s > 0 and response_bytes_max > 0
        if bearer_token is not None and (
            not bearer_token or any(c.isspace() for c in bearer_token)
        ):
            raise IdentityError("a bearer token is one non-empty word")
        self.bearer_token = bearer_token
        self.url = url.rstrip("/")
        if not self.url.startswith("https://"):
            raise IdentityError(f"service URL must start with https://, got {url!r}")
        self.service_cert_path = Path(service_cert_path)
        self.cert_path = Path(cert_path) if cert_path is not None else None
        self.key_path = Path(key_path) if key_path is not None else None
        self.request_timeout_s = request_timeout_s
        self.response_bytes_max = response_bytes_max
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> CharterClient:
        ctx = build_ssl_context(self.service_cert_path, self.cert_path, self.key_path)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=16),
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def service_cert_pem(self) -> str:
        return load_cert_pem(self.service_cert_path, "service certificate")

    # -- raw HTTP -------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Response:
        """Send one request; returns the answer whatever its status (see `check`)."""
        if self._session is None:
            raise CharterError("use the client as `async with CharterClient(...)`")
        assert path.startswith("/"), "paths are absolute, e.g. /node/state"
        assert json is None or data is None, "send JSON or raw bytes, not both"
        url = self.url + path
        if self.bearer_token is not None:
            headers = {"Authorization": f"Bearer {self.bearer_token}", **(headers or {})}
        try:
            async with self._session.request(
                method, url, json=json, data=data, headers=headers, params=params
            ) as resp:
                if (resp.content_length or 0) > self.response_bytes_max:
                    raise ProtocolError(
                        f"response to {method} {path} announces {resp.content_length} bytes, "
                        f"over the {self.response_bytes_max}-byte limit"
                    )
                body = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > self.response_bytes_max:
                        raise ProtocolError(f"response to {method} {path} exceeds size limit")
                content_type = resp.headers.get("Content-Type", "")
                result = Response(
                    resp.status, resp.headers, _decode_body(content_type, bytes(body))
                )
        except aiohttp.ClientConnectorCertificateError as e:
            raise ConnectionFailed(
                f"TLS: {self.url} did not present a certificate issued by the service "
                f"certificate {self.service_cert_path} ({e.certificate_error})"
            ) from None
        except aiohttp.ClientSSLError as e:
            if self.cert_path is not None and await self._answers_without_identity():
                raise self._refused() from None
            raise ConnectionFailed(f"TLS handshake with {self.url} failed: {e}") from None
        except aiohttp.ClientConnectorError as e:
            reason = e.os_error.strerror or str(e.os_error)
            raise ConnectionFailed(
                f"cannot connect to {self.url}: {reason} (is the node running at that address?)"
            ) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            # With TLS 1.3 a node that refuses the client certificate (never registered, or
            # its user removed) says so only by closing the connection after the handshake:
            # "connection reset by peer". If the node answers without the certificate, the
            # certificate was the problem, and the error says so.
            if self.cert_path is not None and await self._answers_without_identity():
                raise self._refused() from None
            raise ConnectionFailed(f"connection to {self.url} failed: {e}") from None
        except aiohttp.ClientPayloadError as e:
            raise ConnectionFailed(f"incomplete response from {self.url}: {e}") from None
        except TimeoutError:
            raise ConnectionFailed(
                f"{method} {path} got no answer within {self.request_timeout_s:g} s"
            ) from None
        log.debug("request method=%s path=%s status=%d", method, path, result.status)
        return result

    def _refused(self) -> CertificateRefused:
        return CertificateRefused(
            f"{self.url} refused the client certificate {self.cert_path}: it is not, or no "
            "longer, registered with the service (a removed user or member is refused at "
            "the TLS handshake, which shows as a connection reset)"
        )

    async def _answers_without_identity(self) -> bool:
        """Whether the node answers `/node/state` over TLS without a client certificate."""
        ctx = build_ssl_context(self.service_cert_path)
        timeout_s = min(self.request_timeout_s, PROBE_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=ctx, limit=1),
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                ) as session,
                session.get(self.url + "/node/state") as resp,
            ):
                return resp.status < 500
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def get(self, path: str, *, params: dict[str, str] | None = None) -> Response:
        return await self.request("GET", path, params=params)

    async def post(
        self,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Response:
        return await self.request(
            "POST", path, json=json, data=data, headers=headers, params=params
        )

    async def post_signed(
        self, path: str, user: Identity, *, json: Any, method: str = "POST"
    ) -> Response:
        """Send ``json`` as ``user``'s COSE_Sign1-signed request (``user_cose_sign1``)."""
        payload = jsonlib.dumps(json, separators=(",", ":")).encode()
        return await self.request(
            method,
            path,
            data=user_envelope(user, payload),
            headers={"Content-Type": COSE_CONTENT_TYPE},
        )

    @staticmethod
    def check(response: Response) -> Response:
        """Return a 2xx response as is; raise the typed `CharterError` for anything else."""
        if not response.ok:
            raise error_from_response(response.status, response.body)
        return response

    async def get_json(self, path: str, *, params: dict[str, str] | None = None) -> Any:
        """GET a JSON document, raising typed errors on failure."""
        r = self.check(await self.get(path, params=params))
        if not isinstance(r.body, dict | list):
            raise ProtocolError(f"GET {path} did not return a JSON document")
        return r.body

    async def get_list(self, path: str, key: str = "value") -> list[Any]:
        """GET a paged `{"value": [...], "nextLink"?}` list (CCF gov API), all pages."""
        items: list[Any] = []
        next_path: str | None = path
        params: dict[str, str] | None = {"api-version": GOV_API_VERSION}
        for _ in range(LIST_PAGES_MAX):
            if next_path is None:
                return items
            body = await self.get_json(next_path, params=params)
            page = body.get(key) if isinstance(body, dict) else None
            if not isinstance(page, list):
                raise ProtocolError(f"GET {next_path} has no list {key!r}")
            items.extend(page)
            link = body.get("nextLink")
            # nextLink already carries its own query string.
            next_path, params = (link, None) if isinstance(link, str) and link else (None, None)
        raise ProtocolError(f"GET {path} has more than {LIST_PAGES_MAX} pages")

    # -- node endpoints -------------------------------------------------------------------------

    async def node_state(self) -> dict[str, Any]:
        """`/node/state`: node_id, state, last_signed_seqno, ..."""
        result: dict[str, Any] = await self.get_json("/node/state")
        return result

    async def network(self) -> dict[str, Any]:
        """`/node/network`: service_status, service_certificate, current_view, primary_id."""
        result: dict[str, Any] = await self.get_json("/node/network")
        return result

    async def certificates_not_after(self) -> CertificateExpiry:
        """When the service certificate and each node certificate expire (`/node/network`'s
        `service_certificate_not_after` and `node_certificates_not_after`)."""
        body = await self.network()
        try:
            service = _utc(body["service_certificate_not_after"])
            nodes = {str(k): _utc(v) for k, v in body["node_certificates_not_after"].items()}
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ProtocolError("/node/network has no readable certificate expiry") from None
        return CertificateExpiry(service, nodes)

    async def nodes(self) -> list[dict[str, Any]]:
        """`/node/network/nodes`: node_id, status, primary, rpc_interfaces per node."""
        body = await self.get_json("/node/network/nodes")
        nodes = body.get("nodes") if isinstance(body, dict) else None
        if not isinstance(nodes, list):
            raise ProtocolError("/node/network/nodes has no list 'nodes'")
        return nodes

    async def commit(self) -> TxId:
        """The service's latest committed transaction id (`/node/commit`)."""
        body = await self.get_json("/node/commit")
        try:
            return TxId.parse(str(body["transaction_id"]))
        except (KeyError, TypeError, ValueError):
            raise ProtocolError("/node/commit has no valid transaction_id") from None

    async def tx_status(self, txid: TxId | str) -> str:
        """Unknown, Pending, Committed or Invalid (`/node/tx`)."""
        txid = _as_txid(txid)
        body = await self.get_json("/node/tx", params={"transaction_id": str(txid)})
        status = body.get("status") if isinstance(body, dict) else None
        if status not in ("Unknown", "Pending", "Committed", "Invalid"):
            raise ProtocolError(f"/node/tx returned an unknown status {status!r}")
        return str(status)

    async def wait_for_commit(self, txid: TxId | str, timeout_s: float = 30.0) -> TxId:
        """Poll until `txid` is Committed; raise TransactionInvalid or CommitTimeout."""
        txid = _as_txid(txid)
        deadline = time.monotonic() + timeout_s
        interval_s = POLL_INTERVAL_S_MIN
        while True:
            try:
                status = await self.tx_status(txid)
            except ServiceUnavailable as e:
                # An election or backpressure: the answer will come, keep polling.
                status = f"unknown ({e.code})"
            if status == "Committed":
                return txid
            if status == "Invalid":
                raise TransactionInvalid(f"transaction {txid} was rolled back and is invalid")
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise CommitTimeout(f"transaction {txid} still {status} after {timeout_s:g} s")
            await asyncio.sleep(min(interval_s, remaining_s))
            interval_s = min(interval_s * 2, POLL_INTERVAL_S_MAX)

    async def _poll_receipt(self, path: str, txid: TxId, timeout_s: float) -> Response:
        deadline = time.monotonic() + timeout_s
        interval_s = POLL_INTERVAL_S_MIN
        while True:
            r = await self.get(path, params={"transaction_id": str(txid)})
            # 202: not signed yet; 503: no primary or overloaded. Both say "ask again".
            if r.status not in (202, 503):
                return self.check(r)
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise CommitTimeout(f"receipt for {txid} not available after {timeout_s:g} s")
            await asyncio.sleep(min(_retry_after_s(r.headers, interval_s), remaining_s))
            interval_s = min(interval_s * 2, POLL_INTERVAL_S_MAX)

    async def receipt(
        self, txid: TxId | str, timeout_s: float = 30.0, *, verify: bool = True
    ) -> dict[str, Any]:
        """The JSON receipt of a committed transaction (waits while the service answers 202).

        It is verified against the pinned service certificate before it is returned (as
        `charter receipt get` does), raising `ReceiptInvalid` if it does not verify; pass
        `verify=False` to get it unchecked, e.g. to store it and verify it elsewhere.
        """
        r = await self._poll_receipt("/node/receipt", _as_txid(txid), timeout_s)
        if not isinstance(r.body, dict):
            raise ProtocolError("/node/receipt did not return a JSON object")
        if verify:
            self.verify_receipt(r.body)
        return r.body

    async def cose_receipt(self, txid: TxId | str, timeout_s: float = 30.0) -> bytes:
        """The COSE receipt (FORMATS §5.2) of a committed transaction, as CBOR bytes."""
        r = await self._poll_receipt(COSE_RECEIPT_PATH, _as_txid(txid), timeout_s)
        if not isinstance(r.body, bytes | bytearray) or not r.body:
            raise ProtocolError(f"{COSE_RECEIPT_PATH} did not return CBOR bytes")
        return bytes(r.body)

    def verify_receipt(self, receipt: dict[str, Any]) -> bytes:
        """Check a JSON receipt against the pinned service certificate; returns the root."""
        return verify_json_receipt(receipt, self.service_cert_pem)

    # -- governance reads (unauthenticated in CCF's API) ------------------------------------------

    async def service_info(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.get_json(
            "/gov/service/info", params={"api-version": GOV_API_VERSION}
        )
        return result

    async def recovery_status(self) -> dict[str, Any]:
        """`/gov/recovery/status` (Charter's): serviceStatus, recoveryThreshold,
        recoveryMembers, submittedMembers, submittedCount, stillNeeded."""
        result: dict[str, Any] = await self.get_json(
            "/gov/recovery/status", params={"api-version": GOV_API_VERSION}
        )
        return result

    async def encrypted_share(self, member_id: str) -> bytes:
        """`/gov/recovery/encrypted-shares/{memberId}`: the member's share, still encrypted
        to its RSA encryption key."""
        body = await self.get_json(
            f"/gov/recovery/encrypted-shares/{member_id}", params={"api-version": GOV_API_VERSION}
        )
        text = body.get("encryptedShare") if isinstance(body, dict) else None
        if not isinstance(text, str) or len(text) > ENCRYPTED_SHARE_B64_MAX:
            raise ProtocolError("the service returned no usable encryptedShare")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("encryptedShare is not base64") from None

    async def members(self) -> list[dict[str, Any]]:
        """`/gov/service/members`: memberId, certificate, status, recoveryRole, ..."""
        return await self.get_list("/gov/service/members")

    async def users(self) -> list[dict[str, Any]]:
        """`/gov/service/users`: userId, certificate, userData."""
        return await self.get_list("/gov/service/users")


def verify_json_receipt(
    receipt: dict[str, Any], service_cert_pem: str, *, claims_digest: bytes | None = None
) -> bytes:
    """Verify a JSON receipt with ledger.receipt; failures become `ReceiptInvalid`.

    With `claims_digest`, the receipt must also carry exactly that claims digest.
    """
    try:
        return ledger_verify_json_receipt(receipt, service_cert_pem, claims_digest=claims_digest)
    except LedgerError as e:
        raise ReceiptInvalid(f"receipt does not verify: {e}", code=e.code) from None
