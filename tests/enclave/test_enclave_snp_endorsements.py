"""An SEV-SNP enclave whose host provisioned no certificates gets them fetched by the host
(issue 16), and trusts them only once they verify its own report up to AMD's roots.

Real pieces: the `snp` platform reading a directory that behaves as configfs-tsm does (the
real Milan report, no `auxblob`), the enclave runtime's and the host's frame handling over a
real control channel (a Unix socketpair, msgpack frames), the host's HTTP fetches, and a
KDS-shaped HTTP server on 127.0.0.1 serving the real VCEK and AMD chain, or garbage, or a
chain that is not this chip's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from shared_data import SHARED

from charter.enclave_app import interface as itf
from charter.enclave_app import snp_platform
from charter.enclave_app.main import Runtime
from charter.enclave_app.platform import PlatformError
from charter.host.main import Host
from charter.ledger import quote, snp

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

SNP = SHARED / "snp-attestation"
REPORT = bytes.fromhex((SNP / "milan" / "report.hex").read_text().strip())
REPORT_DATA = REPORT[0x50:0x90]
VCEK_DER = (SNP / "milan" / "vcek.der").read_bytes()
CHAIN_PEM = (SNP / "milan" / "ask_ark.pem").read_bytes()
POLICY = snp.Policy(measurements={REPORT[0x90:0xC0].hex()})
# /proc/cpuinfo of an EPYC Milan guest (family 25, model 1): the report (version 2) has no CPUID.
MILAN_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
MILAN_CPUINFO += "model name\t: AMD EPYC 7763 64-Core Processor\nstepping\t: 1\n\nprocessor\t: 1\n"


class TsmWithoutCertificates:
    """configfs-tsm whose `outblob` yields the real report on every read, and no `auxblob`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entry = root / f"charter-{os.getpid()}"
        self.entry.mkdir(parents=True)
        (self.entry / "provider").write_text("sev_guest\n")
        (self.entry / "generation").write_text("1\n")
        os.mkfifo(self.entry / "outblob")
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                with (self.entry / "outblob").open("wb") as out:  # waits for a reader
                    if self.stopped:
                        return
                    out.write(REPORT)
            except BrokenPipeError:
                # Reopened before the last reader closed its end, which then went away:
                # that reader had its report already; serve the next one.
                continue

    def stop(self) -> None:
        self.stopped = True
        # A non-blocking open for reading releases a writer waiting in open(), and does not
        # itself wait when the thread is elsewhere.
        fd = os.open(self.entry / "outblob", os.O_RDONLY | os.O_NONBLOCK)
        try:
            self.thread.join(timeout=5)
        finally:
            os.close(fd)
        assert not self.thread.is_alive()


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[snp_platform.SnpPlatform]:
    tsm = TsmWithoutCertificates(tmp_path / "tsm" / "report")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(MILAN_CPUINFO)
    yield snp_platform.SnpPlatform(
        tsm=snp_platform.TsmReport(tsm.root), device=tmp_path / "no-sev-guest", cpuinfo=cpuinfo
    )
    tsm.stop()


async def _kds(answer: Any, seen: list[str]) -> tuple[web.AppRunner, str]:
    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.path_qs)
        response: web.StreamResponse = answer(request)
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def serving(vcek: bytes, chain: bytes = CHAIN_PEM) -> Any:
    def answer(request: web.Request) -> web.Response:
        return web.Response(body=chain if request.path.endswith("/cert_chain") else vcek)

    return answer


class Boundary:
    """The enclave runtime and the host, joined by a real control channel."""

    def __init__(self, tmp_path: Path, urls: list[str]) -> None:
        config = itf.NodeConfig.model_validate(
            {
                "workspace": str(tmp_path / "workspace"),
                "platform": "snp",
                "snp": {"endorsements_servers": [{"url": u, "max_retries_count": 0} for u in urls]},
                "start": {"members": [{"cert": str(tmp_path / "member_cert.pem")}]},
            }
        )
        self.config = config
        self.host = Host(config)
        host_end, enclave_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.host.channel = itf.ControlChannel(host_end, name="host")
        self.runtime = Runtime(itf.ControlChannel(enclave_end, name="enclave"))
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self.host._frame_loop()),
            loop.create_task(self.runtime.frame_loop()),
        ]

    async def obtain(self, platform: snp_platform.SnpPlatform) -> None:
        servers = len(self.config.snp.endorsements_servers)
        await asyncio.wait_for(
            snp_platform.obtain_endorsements(platform, servers, self.runtime._fetch_endorsements),
            60,
        )

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.host.endorsements.close()
        assert self.host.channel is not None
        self.host.channel.close()
        self.runtime.channel.close()
        self.host.storage.close()


@pytest.fixture
async def boundary(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Boundary] = []
    runners: list[web.AppRunner] = []

    async def make(*answers: Any) -> tuple[Boundary, list[list[str]], list[str]]:
        seen: list[list[str]] = []
        urls = []
        for answer in answers:
            seen.append([])
            runner, url = await _kds(answer, seen[-1])
            runners.append(runner)
            urls.append(url)
        made.append(Boundary(tmp_path, urls))
        return made[-1], seen, urls

    yield make
    for b in made:
        await b.close()
    for runner in runners:
        await runner.cleanup()


async def test_the_enclave_adopts_the_vcek_chain_its_host_fetched_from_kds(
    platform: snp_platform.SnpPlatform, boundary: Any
) -> None:
    link, seen, _ = await boundary(serving(VCEK_DER))
    await link.obtain(platform)
    chip_id = REPORT[0x1A0:0x1E0].hex()
    assert seen[0][0].startswith(f"/vcek/v1/Milan/{chip_id}?blSPL=")
    assert seen[0][1] == "/vcek/v1/Milan/cert_chain"
    evidence = platform.report(REPORT_DATA)
    assert evidence.endorsements.count(b"BEGIN CERTIFICATE") == 3
    verified = quote.verify_evidence(
        evidence, report_data=REPORT_DATA, virtual_measurements=(), snp_policy=POLICY
    )
    assert verified.snp is not None and verified.snp.product is snp.Product.MILAN
    # Once adopted, nothing more is fetched.
    assert platform.endorsements_request() is None


async def test_garbage_from_one_server_is_refused_and_the_next_server_is_asked(
    platform: snp_platform.SnpPlatform, boundary: Any, caplog: pytest.LogCaptureFixture
) -> None:
    link, seen, urls = await boundary(serving(b"<html>not a certificate</html>"), serving(VCEK_DER))
    await link.obtain(platform)
    assert len(seen[0]) == 2 and len(seen[1]) == 2
    refused = [
        r.getMessage() for r in caplog.records if "snp_endorsements_refused" in r.getMessage()
    ]
    assert refused and urls[0] in refused[0] and "endorsements: not a certificate" in refused[0]
    evidence = platform.report(REPORT_DATA)
    quote.verify_evidence(
        evidence, report_data=REPORT_DATA, virtual_measurements=(), snp_policy=POLICY
    )


async def test_endorsements_that_are_not_this_chips_are_refused_naming_the_check(
    platform: snp_platform.SnpPlatform, boundary: Any
) -> None:
    turin_vcek = (SNP / "turin" / "vcek.der").read_bytes()
    turin_chain = (SNP / "turin" / "ask_ark.pem").read_bytes()
    forged = bytearray(VCEK_DER)
    forged[-10] ^= 0x01  # inside the ASK's signature over the VCEK
    link, _, urls = await boundary(serving(turin_vcek, turin_chain), serving(bytes(forged)))
    with pytest.raises(PlatformError) as caught:
        await link.obtain(platform)
    message = str(caught.value)
    assert message.startswith("no acceptable SEV-SNP endorsements:")
    # A genuine VCEK of another chip and TCB: AMD signed it, but not for this report.
    assert f"{urls[0]}/vcek/v1/Milan/" in message
    assert "reported_tcb:" in message or "chip_id:" in message
    # A VCEK whose signature was tampered with does not chain to AMD's pinned roots.
    assert "vcek: certificate signature does not verify" in message
    with pytest.raises(PlatformError, match="no VCEK"):
        platform.report(REPORT_DATA)


async def test_no_servers_answering_stops_the_node_saying_why(
    platform: snp_platform.SnpPlatform, boundary: Any
) -> None:
    link, _, _ = await boundary(lambda request: web.Response(status=404))
    with pytest.raises(PlatformError, match=r"no endorsements server answered: .*HTTP 404"):
        await link.obtain(platform)


async def test_without_servers_or_certificates_the_error_says_what_to_configure(
    platform: snp_platform.SnpPlatform,
) -> None:
    async def never(request: itf.FetchEndorsements) -> itf.EndorsementsFetched:
        raise AssertionError("nothing to ask")

    with pytest.raises(PlatformError, match=r"snp\.endorsements_servers"):
        await snp_platform.obtain_endorsements(platform, 0, never)


def test_the_product_line_comes_from_cpuinfo_when_the_report_has_no_cpuid(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(MILAN_CPUINFO)
    assert snp_platform.cpuid_of_cpuinfo(path) == "00a00f11"
    assert snp.product_of_cpuid(snp_platform.cpuid_of_cpuinfo(path)) is snp.Product.MILAN
    path.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n")
    with pytest.raises(PlatformError, match="no cpu family"):
        snp_platform.cpuid_of_cpuinfo(path)
