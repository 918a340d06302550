"""The load generator behind `charter bench` (scripts/bench.py) and its TLS ceiling server.

`run_load` drives one HTTPS endpoint with N concurrent clients, each its own keep-alive TLS
connection (aiohttp session with a one-connection pool), for a fixed time and a fixed request
budget, and records every request's latency and the transaction id the service answered.
`wait_for_commit_seqno` then finds when the last write became committed, and
`fetch_and_verify_receipts` measures how fast receipts are fetched and verified offline.

The ceiling is the same load against the most trivial aiohttp TLS server we can write (one
handler answering a small JSON body) in its own process on 127.0.0.1, with a certificate of
the same shape as a node's (P-384, issued by a service CA) and the same client certificate
check: the best any Python HTTPS service can do on this machine with this client. The node's
committed write rate is reported as a ratio to it, so figures compare across machines.

Run `python -m charter.bench ceiling CERT KEY CLIENT_CA [asyncio|uvloop]` to start the ceiling
server by hand;
it prints `{"port": P}` on one line and serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from charter.identity import TxId
from charter.keygen import generate_identity
from charter.ledger import certs
from charter.sdk import TXID_HEADER, CharterClient, build_ssl_context, verify_json_receipt

log = logging.getLogger(__name__)

# Bounds: the benchmark always stops by itself, whatever it is given.
CLIENTS_MAX = 512
DURATION_S_MAX = 600.0
REQUESTS_PER_CLIENT_MAX = 1_000_000
REQUEST_TIMEOUT_S = 10.0
# After this many failed requests in a row a client gives up (the service is down).
CONSECUTIVE_ERRORS_MAX = 50
COMMIT_WAIT_S_MAX = 60.0
COMMIT_POLL_INTERVAL_S = 0.005
RECEIPTS_MAX = 10_000
RECEIPT_TIMEOUT_S = 10.0
CEILING_START_TIMEOUT_S = 20.0
CEILING_LIFETIME_S_MAX = 3600.0
RESPONSE_BYTES_MAX = 64 * 1024
# Distinct record ids per client, so concurrent writers never share a key.
ID_STRIDE = 1 << 32

ProgressFn = Callable[[int], None]
T = TypeVar("T")

# Event loops the benchmark's own processes (load generator, ceiling server) can run on.
# "auto" = uvloop when installed, as the node's processes do, so that the ceiling is what
# plain aiohttp does on the same loop as the node.
LOOP_NAMES = ("auto", "asyncio", "uvloop")


def resolve_loop(name: str) -> str:
    """ "asyncio" or "uvloop" for a name of LOOP_NAMES (ValueError if uvloop is missing)."""
    if name not in LOOP_NAMES:
        raise ValueError(f"event loop must be one of {', '.join(LOOP_NAMES)}, not {name!r}")
    if name == "asyncio":
        return name
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if name == "uvloop":
            raise ValueError("uvloop is not installed") from None
        return "asyncio"
    return "uvloop"


def run_on(loop_name: str, main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the event loop `loop_name` ("asyncio" or "uvloop")."""
    assert loop_name in ("asyncio", "uvloop")
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


@dataclass(slots=True)
class _ClientTally:
    """What one load client saw (mutable while it runs, read once after)."""

    latencies_ms: list[float] = field(default_factory=list)
    seqnos: list[int] = field(default_factory=list)
    txids: list[TxId] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One load phase: latencies of successful requests, their tx ids, and timing."""

    clients: int
    requests_ok: int
    errors: int
    first_error: str | None
    latencies_ms: tuple[float, ...]
    txids: tuple[TxId, ...]
    started_s: float  # time.monotonic() when the first measured request was sent
    finished_s: float  # time.monotonic() when the last answer arrived

    @property
    def elapsed_s(self) -> float:
        return max(self.finished_s - self.started_s, 1e-9)

    @property
    def req_per_s(self) -> float:
        return self.requests_ok / self.elapsed_s

    @property
    def max_seqno(self) -> int:
        return max((t.seqno for t in self.txids), default=0)


def percentile_ms(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every figure is a latency seen)."""
    assert 0 < pct <= 100
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats
    return ordered[int(rank) - 1]


def client_session(ssl_ctx: ssl.SSLContext) -> aiohttp.ClientSession:
    """A session with exactly one keep-alive TLS connection (one simulated client)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=1, enable_cleanup_closed=False),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    )


async def _one_request(
    session: aiohttp.ClientSession, url: str, body: bytes
) -> tuple[int, str | None]:
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        # Read the whole (small) answer so the connection is reusable; bounded.
        data = await resp.content.read(RESPONSE_BYTES_MAX + 1)
        if len(data) > RESPONSE_BYTES_MAX:
            raise ValueError("response exceeds the benchmark's size limit")
        return resp.status, resp.headers.get(TXID_HEADER)


async def run_load(
    url: str,
    ssl_ctx: ssl.SSLContext,
    *,
    clients: int,
    duration_s: float,
    on_progress: ProgressFn | None = None,
    requests_per_client_max: int = REQUESTS_PER_CLIENT_MAX,
) -> LoadResult:
    """POST `{"id", "msg"}` records to `url` from `clients` keep-alive TLS connections.

    Each client first sends one unmeasured request (TLS handshake, warm caches); all start
    the measured phase together, and stop at `duration_s` or their request budget.
    """
    assert 1 <= clients <= CLIENTS_MAX, f"clients must be in 1..{CLIENTS_MAX}"
    assert 0 < duration_s <= DURATION_S_MAX, f"duration must be in (0, {DURATION_S_MAX}] s"
    assert 1 <= requests_per_client_max <= REQUESTS_PER_CLIENT_MAX
    assert url.startswith("https://127.0.0.1:"), "the benchmark only drives 127.0.0.1"
    tallies = [_ClientTally() for _ in range(clients)]
    warmed = 0
    all_warm = asyncio.Event()
    start_at: list[float] = []

    async def client_loop(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal warmed
        tally = tallies[index]
        base_id = (index + 1) * ID_STRIDE
        warm = json.dumps({"id": base_id, "msg": "warm-up"}).encode()
        try:
            await _one_request(session, url, warm)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            tally.errors += 1
            tally.first_error = f"warm-up: {type(e).__name__}: {e}"
        warmed += 1
        if warmed == clients:
            start_at.append(time.monotonic())
            all_warm.set()
        await all_warm.wait()
        deadline_s = start_at[0] + duration_s
        consecutive_errors = 0
        for i in range(1, requests_per_client_max + 1):
            if time.monotonic() >= deadline_s:
                break
            body = json.dumps({"id": base_id + i, "msg": f"bench record {i}"}).encode()
            sent_s = time.perf_counter()
            try:
                status, txid_text = await _one_request(session, url, body)
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                status, txid_text = 0, None
                error = f"{type(e).__name__}: {e}"
            else:
                error = f"HTTP {status}"
            latency_ms = (time.perf_counter() - sent_s) * 1000.0
            if 200 <= status < 300:
                consecutive_errors = 0
                tally.latencies_ms.append(latency_ms)
                if txid_text is not None:
                    with contextlib.suppress(ValueError):
                        tally.txids.append(TxId.parse(txid_text))
                if on_progress is not None:
                    on_progress(1)
                continue
            tally.errors += 1
            tally.first_error = tally.first_error or error
            consecutive_errors += 1
            if consecutive_errors >= CONSECUTIVE_ERRORS_MAX:
                log.warning("client=%d gives up after errors=%d", index, consecutive_errors)
                break

    sessions = [client_session(ssl_ctx) for _ in range(clients)]
    tasks = [asyncio.create_task(client_loop(i, s)) for i, s in enumerate(sessions)]
    try:
        # A hard stop above the duration, so a stuck server cannot hold the benchmark.
        hard_limit_s = duration_s + 2 * REQUEST_TIMEOUT_S + 10.0
        done, _ = await asyncio.wait(tasks, timeout=hard_limit_s)
        for task in done:
            task.result()  # a client's unexpected exception is a bug: raise it
    finally:
        # Also on Ctrl-C: every client is cancelled and awaited, every connection closed.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    finished_s = time.monotonic()
    latencies = tuple(ms for t in tallies for ms in t.latencies_ms)
    first_error = next((t.first_error for t in tallies if t.first_error), None)
    return LoadResult(
        clients=clients,
        requests_ok=len(latencies),
        errors=sum(t.errors for t in tallies),
        first_error=first_error,
        latencies_ms=latencies,
        txids=tuple(x for t in tallies for x in t.txids),
        started_s=start_at[0] if start_at else finished_s,
        finished_s=finished_s,
    )


async def wait_for_commit_seqno(
    client: CharterClient, seqno: int, timeout_s: float = COMMIT_WAIT_S_MAX
) -> tuple[int, float]:
    """Poll `/node/commit` until it reaches `seqno`; returns (commit seqno, when seen).

    Returns the last commit seen if the timeout passes first (the caller then counts only
    the writes at or below it).
    """
    assert 0 < timeout_s <= COMMIT_WAIT_S_MAX
    deadline_s = time.monotonic() + timeout_s
    committed = -1
    while True:
        try:
            committed = (await client.commit()).seqno
        except Exception as e:  # a node that stops answering ends the wait, not the run
            log.warning("commit poll failed: %s", e)
        now_s = time.monotonic()
        if committed >= seqno or now_s >= deadline_s:
            return committed, now_s
        await asyncio.sleep(COMMIT_POLL_INTERVAL_S)


@dataclass(frozen=True, slots=True)
class ReceiptResult:
    verified: int
    failed: int
    elapsed_s: float
    first_error: str | None

    @property
    def per_s(self) -> float | None:
        return self.verified / self.elapsed_s if self.verified and self.elapsed_s > 0 else None


def sample_evenly(txids: Sequence[TxId], count: int) -> list[TxId]:
    """Up to `count` tx ids spread over the whole run (not only its start or end)."""
    ordered = sorted(txids, key=lambda t: t.seqno)
    if count <= 0 or not ordered:
        return []
    if len(ordered) <= count:
        return ordered
    step = len(ordered) / count
    return [ordered[int(i * step)] for i in range(count)]


async def fetch_and_verify_receipts(
    client: CharterClient, txids: Sequence[TxId], *, concurrency: int
) -> ReceiptResult:
    """Fetch each tx's JSON receipt and verify it against the pinned service certificate."""
    assert len(txids) <= RECEIPTS_MAX
    assert 1 <= concurrency <= CLIENTS_MAX
    service_pem = client.service_cert_pem
    queue = list(txids)
    verified = failed = 0
    first_error: list[str] = []

    async def worker() -> None:
        nonlocal verified, failed
        while queue:
            txid = queue.pop()
            try:
                # Fetched unchecked and verified here, so a bad one is counted, not raised.
                receipt = await client.receipt(txid, timeout_s=RECEIPT_TIMEOUT_S, verify=False)
                verify_json_receipt(receipt, service_pem)
            except Exception as e:  # counted and reported; one bad receipt ends nothing
                failed += 1
                if not first_error:
                    first_error.append(f"{txid}: {type(e).__name__}: {e}")
            else:
                verified += 1

    started_s = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(len(txids), 1)))))
    return ReceiptResult(
        verified, failed, time.monotonic() - started_s, first_error[0] if first_error else None
    )


def process_cpu_s(pid: int | None) -> float | None:
    """CPU time (user + system) a process has used so far, from /proc; None if unknown.

    CPU per request is steadier than requests per second on a shared machine: it does not
    move when other work takes the cores, so it is reported next to the rates.
    """
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may hold spaces: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    except (IndexError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_ms_per_request(before_s: float | None, after_s: float | None, count: int) -> float | None:
    if before_s is None or after_s is None or count <= 0:
        return None
    return round((after_s - before_s) * 1000.0 / count, 3)


# --- the ceiling: a trivial aiohttp TLS server in its own process -------------------------------


@dataclass(frozen=True, slots=True)
class CeilingPki:
    """A service CA, a server cert it issued for 127.0.0.1, and a client identity."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_ceiling_pki(directory: Path) -> CeilingPki:
    """Keys and certificates of the same shape as a Charter network's (P-384, IP SAN)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = certs.new_key()
    ca = certs.service_cert(ca_key, "Bench Ceiling Service")
    server_key = certs.new_key()
    server = certs.endorse(server_key.public_key(), ca_key, ca, san_ips=["127.0.0.1"])
    pki = CeilingPki(
        ca_cert=directory / "ceiling_ca.pem",
        server_cert=directory / "ceiling_server_cert.pem",
        server_key=directory / "ceiling_server_privk.pem",
        client_cert=directory / "ceiling_client_cert.pem",
        client_key=directory / "ceiling_client_privk.pem",
    )
    pki.ca_cert.write_text(certs.cert_pem(ca))
    pki.server_cert.write_text(certs.cert_pem(server))
    pki.server_key.write_text(certs.key_pem(server_key))
    ident = generate_identity("ceiling_client", directory, overwrite=True)
    assert ident.cert_path == pki.client_cert and ident.key_path == pki.client_key
    return pki


def ceiling_client_context(pki: CeilingPki) -> ssl.SSLContext:
    return build_ssl_context(pki.ca_cert, pki.client_cert, pki.client_key)


class CeilingServer:
    """The ceiling server process; use as a context manager (it is always stopped)."""

    def __init__(self, pki: CeilingPki, *, loop: str = "asyncio") -> None:
        assert loop in ("asyncio", "uvloop")
        self.pki = pki
        self.loop = loop
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/app/log/private"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        args = [str(self.pki.server_cert), str(self.pki.server_key), str(self.pki.client_cert)]
        args.append(self.loop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "charter.bench", "ceiling", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        line = _read_line_with_timeout(self.process.stdout, CEILING_START_TIMEOUT_S)
        try:
            self.port = int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError):
            self.stop()
            raise RuntimeError(f"the ceiling server did not start (said {line[:200]!r})") from None
        assert 0 < self.port < 65536

    def stop(self) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the server stops when its stdin closes
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self.process = None

    def __enter__(self) -> CeilingServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_line_with_timeout(stream: Any, timeout_s: float) -> str:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return ""
    return str(stream.readline(4096).decode(errors="replace"))


async def _serve_ceiling(cert: str, key: str, client_ca: str) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        # The smallest answer of the node's shape: a JSON body and a tx id header.
        return web.json_response(True, headers={TXID_HEADER: "1.1"})

    app = web.Application(client_max_size=RESPONSE_BYTES_MAX)
    app.router.add_route("*", "/{tail:.*}", handle)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    # Check client certs as a node does: the registered self-signed cert is its own anchor.
    ctx.load_verify_locations(cafile=client_ca)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.verify_mode = ssl.CERT_OPTIONAL
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"port": port}), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # readable = EOF: the parent is gone
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), CEILING_LIFETIME_S_MAX)
    await runner.cleanup()


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5) or argv[0] != "ceiling":
        print("usage: python -m charter.bench ceiling CERT KEY CLIENT_CA [LOOP]", file=sys.stderr)
        return 2
    loop = resolve_loop(argv[4] if len(argv) == 5 else "asyncio")
    run_on(loop, _serve_ceiling(argv[1], argv[2], argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
