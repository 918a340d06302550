"""The host fetches SEV-SNP endorsements for its enclave (issue 16), from a local HTTP server
on 127.0.0.1 that serves the real Milan VCEK (DER) and AMD's chain at KDS-shaped paths.

What the host promises: it builds the URLs from the report's chip id and TCB as AMD's KDS
(or Azure's cache) expects them, bounds every answer, moves on to the next server when one
fails, and does all of it beside its other work, never holding up its event loop.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from shared_data import SHARED

from charter.enclave_app import interface as itf
from charter.host.endorsements import EndorsementsFetcher, endorsement_urls
from charter.ledger import snp

MILAN = SHARED / "snp-attestation" / "milan"
REPORT = bytes.fromhex((MILAN / "report.hex").read_text().strip())
PARSED = snp.parse_report(REPORT)
VCEK_DER = (MILAN / "vcek.der").read_bytes()
CHAIN_PEM = (MILAN / "ask_ark.pem").read_bytes()
VCEK_PEM = ssl.DER_cert_to_PEM_cert(VCEK_DER)


def _request() -> itf.FetchEndorsements:
    return itf.FetchEndorsements(
        request_id=7,
        product="Milan",
        chip_id=PARSED.chip_id,
        reported_tcb=PARSED.reported_tcb_raw,
        first_server=0,
    )


@dataclass
class Kds:
    """A KDS-shaped server; `answer` decides each response, `seen` records each request."""

    answer: Callable[[web.Request], Any]
    seen: list[str] = field(default_factory=list)
    url: str = ""


async def _serve(kds: Kds) -> web.AppRunner:
    async def handle(request: web.Request) -> web.StreamResponse:
        kds.seen.append(request.path_qs)
        result = kds.answer(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, web.StreamResponse)
        return result

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kds.url = f"http://127.0.0.1:{port}"
    return runner


def real_kds(request: web.Request) -> web.Response:
    if request.path.endswith("/cert_chain"):
        return web.Response(body=CHAIN_PEM, content_type="application/x-pem-file")
    return web.Response(body=VCEK_DER, content_type="application/x-x509-ca-cert")


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(answer: Callable[[web.Request], Any]) -> Kds:
        kds = Kds(answer)
        runners.append(await _serve(kds))
        return kds

    yield start
    for runner in runners:
        await runner.cleanup()


async def _fetch(
    servers: list[itf.EndorsementsServer], request: itf.FetchEndorsements | None = None
) -> itf.EndorsementsFetched:
    replies: asyncio.Queue[itf.EndorsementsFetched] = asyncio.Queue()
    fetcher = EndorsementsFetcher(servers, replies.put_nowait)
    fetcher.submit(request or _request())
    try:
        return await asyncio.wait_for(replies.get(), 30)
    finally:
        await fetcher.close()


def _server(url: str, **kw: Any) -> itf.EndorsementsServer:
    return itf.EndorsementsServer(url=url, max_retries_count=kw.pop("retries", 0), **kw)


async def test_the_host_asks_kds_for_the_vcek_of_the_reports_chip_and_tcb(servers: Any) -> None:
    kds = await servers(real_kds)
    reply = await _fetch([_server(kds.url)])
    assert reply.error is None and reply.server == 0 and reply.request_id == 7
    assert (reply.vcek, reply.chain) == (VCEK_DER, CHAIN_PEM)
    # The URL names what the VCEK certifies: checked against the VCEK's own extensions.
    vcek = x509.load_der_x509_certificate(VCEK_DER)
    tcb = snp.vcek_tcb(vcek, snp.Product.MILAN)
    expected = (
        f"/vcek/v1/Milan/{PARSED.chip_id.hex()}?blSPL={tcb.bootloader}&teeSPL={tcb.tee}"
        f"&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    )
    assert kds.seen == [expected, "/vcek/v1/Milan/cert_chain"]
    assert reply.url == kds.url + expected


def test_turin_urls_use_an_eight_byte_hwid_and_the_fmc_level() -> None:
    chip_id = bytes(range(1, 9)) + bytes(56)
    # Turin's TCB: fmc, bootloader, tee, snp, three reserved bytes, microcode.
    tcb = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 9]), "little")
    urls = endorsement_urls(itf.EndorsementsServer(), "Turin", chip_id, tcb)
    assert urls.vcek == (
        "https://kdsintf.amd.com/vcek/v1/Turin/0102030405060708"
        "?fmcSPL=1&blSPL=2&teeSPL=3&snpSPL=4&ucodeSPL=9"
    )
    assert urls.chain == "https://kdsintf.amd.com/vcek/v1/Turin/cert_chain"


async def test_the_azure_cache_answer_is_unpacked(servers: Any) -> None:
    def azure(request: web.Request) -> web.Response:
        body = {"vcekCert": VCEK_PEM, "certificateChain": CHAIN_PEM.decode()}
        return web.json_response(body)

    kds = await servers(azure)
    reply = await _fetch([_server(kds.url, type="Azure")])
    assert reply.error is None and reply.chain == CHAIN_PEM and reply.vcek == VCEK_PEM.encode()
    assert kds.seen == [
        f"/SevSnpVM/certificates/{PARSED.chip_id.hex()}/{PARSED.reported_tcb_raw:x}"
        "?api-version=2020-10-15-preview"
    ]


async def test_a_failing_server_sends_the_host_to_the_next_one(servers: Any) -> None:
    calls = 0

    def broken(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=503)

    down = await servers(broken)
    good = await servers(real_kds)
    reply = await _fetch([_server(down.url, retries=1), _server(good.url)])
    assert reply.error is None and reply.server == 1 and reply.url.startswith(good.url)
    assert calls == 2  # one try and one retry of the 503


async def test_every_server_failing_is_one_error_naming_each(servers: Any) -> None:
    missing = await servers(lambda request: web.Response(status=404))
    huge = await servers(lambda request: web.Response(body=bytes(40_000)))
    reply = await _fetch([_server(missing.url, retries=3), _server(huge.url)])
    assert reply.server == 2 and reply.vcek == reply.chain == b""
    assert reply.error is not None
    assert "HTTP 404" in reply.error and "over 16384 bytes" in reply.error
    assert len(missing.seen) == 1  # a 404 is not retried


async def test_a_stalled_server_does_not_hold_up_the_hosts_event_loop(servers: Any) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def stalled(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return real_kds(request)

    kds = await servers(stalled)
    replies: list[itf.EndorsementsFetched] = []
    fetcher = EndorsementsFetcher([_server(kds.url)], replies.append)
    fetcher.submit(_request())  # returns at once: the fetch is a task
    assert replies == []
    # The server runs on this same loop: it can only be reached because nothing blocks.
    await asyncio.wait_for(entered.wait(), 10)
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0)
        ticks += 1
    assert ticks == 5 and replies == []
    release.set()
    for _ in range(200):
        if replies:
            break
        await asyncio.sleep(0.05)
    assert replies and replies[0].error is None
    await fetcher.close()


def test_endorsement_frames_are_bounded_and_validated_on_both_sides() -> None:
    good = _request()
    assert itf.decode_frame(itf.encode_frame(good)) == good
    with pytest.raises(itf.InterfaceError, match="chip_id"):
        itf.FetchEndorsements(1, "Milan", b"\x01" * 8, 0, 0)
    with pytest.raises(itf.InterfaceError, match="product"):
        itf.FetchEndorsements(1, "Rome", PARSED.chip_id, 0, 0)
    with pytest.raises(itf.InterfaceError, match="over 16384 bytes"):
        itf.EndorsementsFetched(1, 0, "u", bytes(16 * 1024 + 1), b"", None)
    # A frame forged on the wire with an oversized part is refused by the decoder too.
    import msgpack

    forged = msgpack.packb(
        [
            itf.PROTOCOL_VERSION,
            "EndorsementsFetched",
            {
                "request_id": 1,
                "server": 0,
                "url": "u",
                "vcek": bytes(20_000),
                "chain": b"",
                "error": None,
            },
        ],
        use_bin_type=True,
    )
    with pytest.raises(itf.InterfaceError):
        itf.decode_frame(forged)


def test_endorsements_server_urls_are_checked_in_the_config() -> None:
    with pytest.raises(ValueError, match="scheme"):
        itf.EndorsementsServer(url="ftp://kds.example")
    with pytest.raises(ValueError, match="host"):
        itf.EndorsementsServer(url="https://")
    assert itf.EndorsementsServer(url="http://127.0.0.1:8080/").url == "http://127.0.0.1:8080"
    assert json.loads(itf.EndorsementsServer().model_dump_json())["url"] == "kdsintf.amd.com"
