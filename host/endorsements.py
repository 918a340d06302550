"""The host fetches SEV-SNP endorsements (a chip's VCEK and AMD's chain) for its enclave.

The enclave asks with `FetchEndorsements` (product line, chip id, reported TCB) when it has
neither an endorsements file nor a certificate table from the firmware. The host builds each
configured server's URLs, GETs them (bounded in time and size), and answers with what the
first server that answered served, unchecked: the host is untrusted, and the enclave verifies
the chain up to AMD's pinned roots and against its own report, then asks again from the next
server if it refuses. Fetches run as tasks beside the host's other work; the frame loop never
waits for one.

URL shapes (AMD's VCEK/KDS interface specification, document 57230):
- AMD: `{base}/vcek/v1/{product}/{hwid hex}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..` (Turin:
  an 8-byte hwid and `fmcSPL` first), DER; `{base}/vcek/v1/{product}/cert_chain`, ASK then
  ARK in PEM.
- Azure's attestation cache: `{base}/SevSnpVM/certificates/{chip id hex}/{reported TCB
  hex}?api-version=2020-10-15-preview`, a JSON object with `vcekCert` and
  `certificateChain` (PEM).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from charter.enclave_app.interface import (
    ENDORSEMENT_PART_MAX_BYTES,
    ENDORSEMENTS_ERROR_MAX_CHARS,
    EndorsementsFetched,
    EndorsementsServer,
    FetchEndorsements,
    InterfaceError,
)
from charter.ledger import snp

if TYPE_CHECKING:
    import aiohttp

_log = logging.getLogger(__name__)

AZURE_API_VERSION = "2020-10-15-preview"
# An Azure answer holds both PEM parts in JSON.
AZURE_RESPONSE_MAX_BYTES = 3 * ENDORSEMENT_PART_MAX_BYTES
FETCHES_IN_FLIGHT_MAX = 4
RETRY_BACKOFF_S = 0.5


class FetchFailed(Exception):
    """One server did not serve endorsements; `retry` says whether trying it again may help."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True, slots=True)
class Urls:
    vcek: str
    chain: str | None  # None: the VCEK answer carries the chain too (Azure)


def _base(url: str) -> str:
    return url if "://" in url else f"https://{url}"


def endorsement_urls(
    server: EndorsementsServer, product: str, chip_id: bytes, reported_tcb: int
) -> Urls:
    """The URLs `server` serves this chip's VCEK (at this TCB) and AMD's chain at."""
    base = _base(server.url)
    if server.type == "Azure":
        return Urls(
            vcek=f"{base}/SevSnpVM/certificates/{chip_id.hex()}/{reported_tcb:x}"
            f"?api-version={AZURE_API_VERSION}",
            chain=None,
        )
    line = snp.Product(product)
    tcb = snp.TcbVersion.from_u64(reported_tcb, line)
    levels = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    if line is snp.Product.TURIN:
        # Turin's hardware id is 8 bytes (the rest of the report's chip id is zero).
        hwid, levels = chip_id[:8], f"fmcSPL={tcb.fmc}&{levels}"
    else:
        hwid = chip_id
    return Urls(
        vcek=f"{base}/vcek/v1/{product}/{hwid.hex()}?{levels}",
        chain=f"{base}/vcek/v1/{product}/cert_chain",
    )


async def _get(session: aiohttp.ClientSession, url: str, max_bytes: int) -> bytes:
    import aiohttp

    try:
        async with session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                # 4xx: this server does not have it; 5xx and 429: it may, later.
                retry = response.status >= 500 or response.status == 429
                raise FetchFailed(f"HTTP {response.status}", retry=retry)
            body = await response.content.read(max_bytes + 1)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise FetchFailed(f"{type(exc).__name__}: {exc}"[:200], retry=True) from None
    if len(body) > max_bytes:
        raise FetchFailed(f"answer over {max_bytes} bytes", retry=False)
    return body


def _azure_parts(body: bytes) -> tuple[bytes, bytes]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FetchFailed("answer is not JSON", retry=False) from None
    if not isinstance(doc, dict):
        raise FetchFailed("answer is not a JSON object", retry=False)
    vcek, chain = doc.get("vcekCert"), doc.get("certificateChain")
    if not isinstance(vcek, str) or not isinstance(chain, str):
        raise FetchFailed("answer has no vcekCert and certificateChain strings", retry=False)
    return vcek.encode(), chain.encode()


async def fetch_from(
    server: EndorsementsServer, product: str, chip_id: bytes, reported_tcb: int
) -> tuple[str, bytes, bytes]:
    """(VCEK URL, VCEK, chain) from one server, with its retries; raises `FetchFailed`."""
    import aiohttp  # here, not at import: half the host's start-up, used on SEV-SNP only

    urls = endorsement_urls(server, product, chip_id, reported_tcb)
    timeout = aiohttp.ClientTimeout(total=server.timeout_ms / 1000)
    last: FetchFailed | None = None
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt in range(server.max_retries_count + 1):
            if attempt:
                await asyncio.sleep(RETRY_BACKOFF_S * attempt)
            try:
                if urls.chain is None:
                    body = await _get(session, urls.vcek, AZURE_RESPONSE_MAX_BYTES)
                    vcek, chain = _azure_parts(body)
                else:
                    vcek = await _get(session, urls.vcek, ENDORSEMENT_PART_MAX_BYTES)
                    chain = await _get(session, urls.chain, ENDORSEMENT_PART_MAX_BYTES)
            except FetchFailed as exc:
                last = exc
                _log.warning(
                    "endorsements fetch failed url=%s attempt=%d reason=%r",
                    urls.vcek,
                    attempt + 1,
                    str(exc),
                )
                if not exc.retry:
                    break
                continue
            if len(vcek) > ENDORSEMENT_PART_MAX_BYTES or len(chain) > ENDORSEMENT_PART_MAX_BYTES:
                raise FetchFailed(f"a part is over {ENDORSEMENT_PART_MAX_BYTES} bytes", retry=False)
            return urls.vcek, vcek, chain
    assert last is not None
    raise FetchFailed(f"{urls.vcek}: {last}", retry=False)


class EndorsementsFetcher:
    """Answers the enclave's `FetchEndorsements` frames, each in its own task."""

    def __init__(
        self, servers: list[EndorsementsServer], reply: Callable[[EndorsementsFetched], None]
    ) -> None:
        self.servers = servers
        self.reply = reply
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, request: FetchEndorsements) -> None:
        """Start answering `request`; returns at once."""
        if len(self._tasks) >= FETCHES_IN_FLIGHT_MAX:
            self._answer_error(request, f"over {FETCHES_IN_FLIGHT_MAX} fetches in flight")
            return
        task = asyncio.get_running_loop().create_task(self._answer(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: FetchEndorsements) -> None:
        failures = []
        for index in range(request.first_server, len(self.servers)):
            server = self.servers[index]
            try:
                url, vcek, chain = await fetch_from(
                    server, request.product, request.chip_id, request.reported_tcb
                )
            except FetchFailed as exc:
                failures.append(str(exc))
                continue
            _log.info("endorsements fetched url=%s server=%d", url, index)
            self._send(EndorsementsFetched(request.request_id, index, url, vcek, chain, None))
            return
        if request.first_server >= len(self.servers):
            failures.append(f"no endorsements server from index {request.first_server} on")
        self._answer_error(request, "; ".join(failures))

    def _answer_error(self, request: FetchEndorsements, reason: str) -> None:
        error = f"no endorsements server answered: {reason}"[:ENDORSEMENTS_ERROR_MAX_CHARS]
        self._send(EndorsementsFetched(request.request_id, len(self.servers), "", b"", b"", error))

    def _send(self, frame: EndorsementsFetched) -> None:
        try:
            self.reply(frame)
        except InterfaceError as exc:
            _log.warning("endorsements answer dropped reason=%r", str(exc))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
