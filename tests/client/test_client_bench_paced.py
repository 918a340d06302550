"""The native paced client (`charter-paced`, client/native/paced_load.c) and its reader.

It is built with the system's C compiler and OpenSSL, as `scripts/bench.py` builds it, and
run against real TLS servers on 127.0.0.1: one that answers as a node does (a growing
transaction id per write, a commit point that follows), and ones whose answers it cannot
bound, which it must refuse with a reason rather than hang or count. The reader of its
event lines is fuzzed: any text is either events or a `PacedToolError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest
from aiohttp import web
from client_helpers import UNBOUNDED_ANSWERS, Pki, StartServer
from hypothesis import given
from hypothesis import strategies as st

from charter import bench_paced
from charter.identity import TxId


@pytest.fixture(scope="module")
def paced_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bench_paced.build(tmp_path_factory.mktemp("native"))


def _command(exe: Path, url: str, pki: Pki, out: Path, rate: float, duration_s: float) -> list[str]:
    return bench_paced.command(
        exe,
        url + "/app/log/private",
        watch_path="/node/commit",
        service_cert=pki.service_cert,
        cert=pki.user.cert_path,
        key=pki.user.key_path,
        rate_per_s=rate,
        duration_s=duration_s,
        clients=4,
        out=out,
    )


async def test_paced_client_counts_each_write_from_when_due_to_the_commit_it_saw(
    tls_server: StartServer, pki: Pki, paced_exe: Path, tmp_path: Path
) -> None:
    seqno = [10]
    committed = [10]
    bodies: list[bytes] = []

    async def write(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        seqno[0] += 1
        return web.json_response({}, headers={"x-ms-ccf-transaction-id": f"2.{seqno[0]}"})

    async def commit(request: web.Request) -> web.Response:
        # The commit point trails the writes by one poll, as a node's signature does.
        seen, committed[0] = committed[0], seqno[0]
        return web.json_response({"transaction_id": f"2.{seen}"})

    url = await tls_server(
        {"/app/log/private": write, "/node/commit": commit}, client_ca=pki.user.cert_path
    )
    out = tmp_path / "events"
    run = await bench_paced.run_native(
        _command(paced_exe, url, pki, out, 200.0, 1.0), out, rate_per_s=200.0, duration_s=1.0
    )
    result = run.result
    assert result.writes_scheduled == 200 and result.writes_ok == 200 and result.errors == 0
    assert run.cpu_s > 0 and 0.9 < result.elapsed_s < 5
    # Every write is committed before the end marker, and counted once.
    assert len(result.commit_latencies_ms) == 200
    assert all(latency > 0 for latency in result.commit_latencies_ms)
    assert all(latency >= 0 for latency in result.answer_latencies_ms)
    assert result.commit_polls > 0
    # 4 warm-up writes, 200 paced ones, the end marker: each a JSON record of its own id.
    assert len(bodies) == 205 and len(set(bodies)) == 205
    assert b'"msg": "bench marker latency end"' in bodies[-1]
    events = bench_paced.parse_output(out.read_text())
    assert events.marker == TxId(2, 215)
    due = [d for d, _, _ in events.writes]
    assert len(set(due)) == 200  # one due time per write, 5 ms apart
    assert (max(due) - min(due)) / 1e9 == pytest.approx(199 / 200, abs=0.001)


async def test_paced_client_counts_closed_connections_and_stops_when_none_is_left(
    tls_server: StartServer, pki: Pki, paced_exe: Path, tmp_path: Path
) -> None:
    served = [0]

    async def write(request: web.Request) -> web.Response:
        await request.read()
        served[0] += 1
        response = web.json_response({}, headers={"x-ms-ccf-transaction-id": f"2.{served[0]}"})
        if served[0] > 4:  # after the warm-up writes, a connection closes after its next answer
            response.force_close()
        return response

    url = await tls_server({"/app/log/private": write}, client_ca=pki.user.cert_path)
    out = tmp_path / "events"
    with pytest.raises(bench_paced.PacedToolError, match="every connection failed"):
        await bench_paced.run_native(
            _command(paced_exe, url, pki, out, 200.0, 1.0), out, rate_per_s=200.0, duration_s=1.0
        )
    lines = out.read_text().splitlines()
    assert sum(line.startswith("W ") for line in lines) == 4  # one answer per connection
    assert sum(line.startswith("X ") for line in lines) >= 1


@pytest.mark.parametrize(
    ("answer", "reason"),
    UNBOUNDED_ANSWERS,
)
async def test_paced_client_refuses_answers_it_cannot_bound(
    pki: Pki, paced_exe: Path, tmp_path: Path, answer: bytes, reason: str
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(4096)
            writer.write(answer)
            await writer.drain()
        finally:
            writer.close()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.node_cert, pki.node_key)
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    out = tmp_path / "events"
    try:
        cmd = _command(paced_exe, f"https://127.0.0.1:{port}", pki, out, 100.0, 0.5)
        with pytest.raises(bench_paced.PacedToolError, match=reason):
            await bench_paced.run_native(cmd, out, rate_per_s=100.0, duration_s=0.5)
    finally:
        server.close()
        await server.wait_closed()


async def test_paced_client_refuses_a_server_the_service_certificate_does_not_vouch_for(
    tls_server: StartServer, pki: Pki, paced_exe: Path, tmp_path: Path
) -> None:
    async def write(request: web.Request) -> web.Response:
        return web.json_response({}, headers={"x-ms-ccf-transaction-id": "2.1"})

    url = await tls_server({"/app/log/private": write}, rogue=True)
    out = tmp_path / "events"
    with pytest.raises(bench_paced.PacedToolError, match="cannot connect"):
        await bench_paced.run_native(
            _command(paced_exe, url, pki, out, 100.0, 0.5), out, rate_per_s=100.0, duration_s=0.5
        )


async def test_paced_client_gives_up_on_a_server_that_accepts_and_says_nothing(
    pki: Pki, paced_exe: Path, tmp_path: Path
) -> None:
    """A listener that takes the connection and never answers the TLS handshake: the tool
    says it cannot connect after its handshake timeout, rather than block until the
    wrapper kills it (or forever, run by hand)."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # open, unread, unanswered

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    out = tmp_path / "events"
    try:
        cmd = _command(paced_exe, f"https://127.0.0.1:{port}", pki, out, 100.0, 0.5)
        started = asyncio.get_running_loop().time()
        with pytest.raises(bench_paced.PacedToolError, match="cannot connect"):
            await bench_paced.run_native(cmd, out, rate_per_s=100.0, duration_s=0.5)
        assert asyncio.get_running_loop().time() - started < bench_paced.EXTRA_WAIT_S
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def test_events_that_are_not_the_tools_are_a_typed_error() -> None:
    good = "T 5 1000\nW 10 20 2 7\nO 30 2 7\nX 503 HTTP 503\nM 2 9\n"
    events = bench_paced.parse_output(good)
    assert events.writes == ((10, 20, TxId(2, 7)),) and events.marker == TxId(2, 9)
    assert events.errors == ((503, "HTTP 503"),)
    for bad in (
        "W 10 20 2\nT 1 1\nM 2 9\n",  # a field short
        "T 1 1\nW 10 -20 2 7\nM 2 9\n",  # not a count
        "T 1 1\nQ 1\nM 2 9\n",  # no such event
        "T 1 1\n",  # never finished
        "T 1 1\nM 2 9\nW " + "1" * 600 + " 1 1 1\n",  # longer than a line can be
    ):
        with pytest.raises(bench_paced.PacedToolError):
            bench_paced.parse_output(bad)


@given(st.text(max_size=400))
def test_any_text_is_events_or_a_typed_error(text: str) -> None:
    with contextlib.suppress(bench_paced.PacedToolError):
        bench_paced.parse_output(text)


def test_building_without_a_compiler_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, no gcc
    with pytest.raises(bench_paced.PacedToolError, match="apt-get install gcc libssl-dev"):
        bench_paced.build(tmp_path / "native")
    assert not list(tmp_path.glob("native/charter-paced-*"))
