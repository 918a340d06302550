"""What "committed" means in the benchmark, and commit latency at a fixed rate.

A load generator such as `ab` reports how many writes were answered 2xx, not their
transaction ids. The benchmark brackets each load phase with two marker writes of its own:
`S` before the load and `E` after it. Once `E`'s status is Committed (`/node/tx`), and `S`
and `E` are in the same view, every write answered between them is committed (a view change
between them could have rolled writes back, so it fails the phase rather than guess), and
there can be at most `E.seqno - S.seqno - 1` of them (signature transactions take seqnos
too), which is checked.

`run_paced` measures commit latency: writes at a fixed rate (open loop: write i is due at
`t0 + i / rate`, and its latency is counted from that moment, so a client that falls behind
cannot hide queueing), while a watcher polls `/node/commit` every few milliseconds on its
own connection. A write's commit latency is the time from when it was due to the first
observation of a commit seqno at or above its own in its view.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import ssl
import time
from dataclasses import dataclass

from charter.bench import (
    CLIENTS_MAX,
    DURATION_S_MAX,
    ID_STRIDE,
    RESPONSE_BYTES_MAX,
    percentile_ms,
)
from charter.identity import TxId
from charter.sdk import TXID_HEADER, CharterClient

WRITE_PATH = "/app/log/private"
COMMIT_WAIT_S_MAX = 60.0
# Polling /node/tx or /node/commit this often costs the node ~200 cheap requests/s and
# bounds the error of a commit time to 5 ms.
COMMIT_POLL_INTERVAL_S = 0.005
RATE_PER_S_MAX = 100_000.0
PACED_WRITES_MAX = 2_000_000
# Marker ids are below every load client's (those start at ID_STRIDE).
MARKER_ID = 7
RESPONSE_HEAD_BYTES_MAX = 16 * 1024
_TXID_HEADER_LOWER = TXID_HEADER.lower()


class CommitCheckError(Exception):
    """The writes of a phase cannot be counted as committed (the message says why)."""


async def marker_write(client: CharterClient, label: str) -> TxId:
    """One write of our own; its transaction id bounds a load phase."""
    body = {"id": MARKER_ID, "msg": f"bench marker {label}"}
    r = await client.post(WRITE_PATH, json=body)
    if not 200 <= r.status < 300 or r.txid is None:
        raise CommitCheckError(f"marker write {label} answered HTTP {r.status}")
    return r.txid


async def wait_committed(
    client: CharterClient, txid: TxId, timeout_s: float = COMMIT_WAIT_S_MAX
) -> float:
    """Poll `/node/tx` until `txid` is Committed; returns when that was seen (monotonic)."""
    assert 0 < timeout_s <= COMMIT_WAIT_S_MAX
    deadline_s = time.monotonic() + timeout_s
    status = "not asked"
    while time.monotonic() < deadline_s:
        with contextlib.suppress(Exception):  # an overloaded node answers 503: ask again
            status = await client.tx_status(txid)
        if status == "Committed":
            return time.monotonic()
        if status == "Invalid":
            raise CommitCheckError(f"marker {txid} was rolled back (a view change)")
        await asyncio.sleep(COMMIT_POLL_INTERVAL_S)
    raise CommitCheckError(f"marker {txid} still {status} after {timeout_s:g} s")


def committed_between(start: TxId, end: TxId, answered_2xx: int) -> int:
    """Writes answered 2xx between two committed markers that are certainly committed."""
    if start.view != end.view:
        raise CommitCheckError(
            f"the view changed during the phase ({start} .. {end}): writes may be rolled back"
        )
    room = end.seqno - start.seqno - 1
    if answered_2xx > room:
        raise CommitCheckError(
            f"{answered_2xx} writes answered 2xx but only {room} seqnos between {start} and {end}"
        )
    return answered_2xx


class PacedClientError(ValueError):
    """An answer the paced client cannot read (malformed, too large, or the end of it)."""


class _Connection:
    """One keep-alive HTTPS connection that POSTs JSON and reads each answer's status, tx id
    and body: aiohttp's client cost ~180 µs of CPU per write here, enough to fall behind
    the pace of a 3-node network on 2 cores; this costs a fraction of that.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.head_prefix = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()

    @staticmethod
    async def open(url: str, ssl_ctx: ssl.SSLContext) -> _Connection:
        rest = url.removeprefix("https://")
        host_port, _, path = rest.partition("/")
        host, _, port = host_port.rpartition(":")
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=ssl_ctx, limit=RESPONSE_HEAD_BYTES_MAX
        )
        return _Connection(reader, writer, host_port, "/" + path)

    async def post(self, body: bytes) -> tuple[int, str | None]:
        """(status, tx id header or None); PacedClientError if the answer is not one."""
        self.writer.write(self.head_prefix + str(len(body)).encode() + b"\r\n\r\n" + body)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise PacedClientError("answer headers exceed the limit") from None
        except asyncio.IncompleteReadError:
            raise PacedClientError("connection closed") from None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise PacedClientError("malformed status line")
        length: int | None = None
        txid: str | None = None
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                continue
            name = name.strip().lower()
            if name == "content-length" and value.strip().isdigit():
                length = int(value.strip())
            elif name == _TXID_HEADER_LOWER:
                txid = value.strip()
        if length is None or length > RESPONSE_BYTES_MAX:
            raise PacedClientError("answer without a Content-Length within the limit")
        try:
            await self.reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise PacedClientError("connection closed mid-answer") from None
        return int(parts[1]), txid

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass(frozen=True, slots=True)
class PacedResult:
    target_rate_per_s: float
    writes_scheduled: int
    writes_ok: int
    errors: int
    first_error: str | None
    elapsed_s: float
    commit_latencies_ms: tuple[float, ...]
    answer_latencies_ms: tuple[float, ...]
    commit_polls: int
    # When each write of `commit_latencies_ms` was due (time.monotonic), in the same order.
    commit_due_s: tuple[float, ...]

    @property
    def achieved_rate_per_s(self) -> float:
        return self.writes_ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def commit_ms(self, pct: float) -> float | None:
        value = percentile_ms(self.commit_latencies_ms, pct)
        return None if value is None else round(value, 3)

    def answer_ms(self, pct: float) -> float | None:
        """From when a write was due to its answer: the part of its commit latency that is
        queueing in the client or the node before it is even executed."""
        value = percentile_ms(self.answer_latencies_ms, pct)
        return None if value is None else round(value, 3)


async def run_paced(
    url: str,
    ssl_ctx: ssl.SSLContext,
    watcher: CharterClient,
    *,
    rate_per_s: float,
    duration_s: float,
    clients: int,
) -> PacedResult:
    """Writes at `rate_per_s` for `duration_s` from `clients` connections; commit latencies.

    `watcher` (its own connection) polls the commit point from before the first write until
    a marker written after the last one is Committed.
    """
    assert 0 < rate_per_s <= RATE_PER_S_MAX
    assert 0 < duration_s <= DURATION_S_MAX
    assert 1 <= clients <= CLIENTS_MAX
    assert url.startswith("https://127.0.0.1:")
    total = min(int(rate_per_s * duration_s), PACED_WRITES_MAX)
    sent: list[tuple[float, TxId]] = []  # (when due, answer's tx id)
    answer_ms: list[float] = []  # from when due to the answer
    errors = [0]
    first_error: list[str] = []
    next_index = [0]
    observations: list[tuple[float, int, int]] = []  # (seen at, view, commit seqno)
    stop_watch = asyncio.Event()

    async def watch() -> None:
        while not stop_watch.is_set():
            with contextlib.suppress(Exception):  # a missed poll only coarsens the timing
                c = await watcher.commit()
                observations.append((time.monotonic(), c.view, c.seqno))
            await asyncio.sleep(COMMIT_POLL_INTERVAL_S)

    async def post(conn: _Connection, record_id: int) -> TxId | None:
        body = json.dumps({"id": record_id, "msg": f"latency record {record_id}"}).encode()
        status, text = await conn.post(body)
        if 200 <= status < 300 and text is not None:
            return TxId.parse(text)
        raise PacedClientError(f"HTTP {status}")

    async def worker(index: int, session: _Connection, t0: list[float]) -> None:
        base_id = (index + 1) * ID_STRIDE
        while next_index[0] < total:
            i = next_index[0]
            next_index[0] += 1
            due_s = t0[0] + i / rate_per_s
            delay_s = due_s - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            try:
                txid = await post(session, base_id + i + 1)
            except (OSError, ValueError) as e:  # PacedClientError is a ValueError
                errors[0] += 1
                if not first_error:
                    first_error.append(f"{type(e).__name__}: {e}")
                if isinstance(e, OSError) or str(e).startswith("connection closed"):
                    return  # this connection is gone; the others keep the pace
                continue
            if txid is not None:
                sent.append((due_s, txid))
                answer_ms.append((time.monotonic() - due_s) * 1000.0)

    sessions: list[_Connection] = []
    watch_task = asyncio.create_task(watch())
    try:
        for _ in range(clients):
            sessions.append(await _Connection.open(url, ssl_ctx))
        # Warm every connection (TLS handshake) before the clock starts.
        await asyncio.gather(
            *(post(s, (i + 1) * ID_STRIDE) for i, s in enumerate(sessions)), return_exceptions=True
        )
        t0 = [time.monotonic()]
        await asyncio.wait_for(
            asyncio.gather(*(worker(i, s, t0) for i, s in enumerate(sessions))),
            duration_s + 30.0,
        )
        elapsed_s = time.monotonic() - t0[0]
        end = await marker_write(watcher, "latency end")
        await wait_committed(watcher, end)
        await asyncio.sleep(2 * COMMIT_POLL_INTERVAL_S)  # the watcher sees it too
    finally:
        stop_watch.set()
        with contextlib.suppress(Exception):
            await watch_task
        for conn in sessions:
            conn.close()
    points = commit_points(sent, observations, end)
    return PacedResult(
        target_rate_per_s=rate_per_s,
        writes_scheduled=total,
        writes_ok=len(sent),
        errors=errors[0],
        first_error=first_error[0] if first_error else None,
        elapsed_s=elapsed_s,
        commit_latencies_ms=tuple(latency for _, latency in points),
        commit_due_s=tuple(due for due, _ in points),
        answer_latencies_ms=tuple(answer_ms),
        commit_polls=len(observations),
    )


def commit_latencies_ms(
    sent: list[tuple[float, TxId]], observations: list[tuple[float, int, int]], end: TxId
) -> tuple[float, ...]:
    """Per write: first observed commit at or above its seqno in its view, minus when due.

    Writes in another view than the committed end marker are not counted (they may have
    been rolled back); the commit point never moves back, so the observations are sorted.
    """
    return tuple(latency for _, latency in commit_points(sent, observations, end))


def commit_points(
    sent: list[tuple[float, TxId]], observations: list[tuple[float, int, int]], end: TxId
) -> list[tuple[float, float]]:
    """(when due, commit latency in ms) of each write `commit_latencies_ms` counts."""
    seqnos = [seqno for _, view, seqno in observations]
    points: list[tuple[float, float]] = []
    for due_s, txid in sent:
        if txid.view != end.view or txid.seqno >= end.seqno:
            continue
        i = bisect.bisect_left(seqnos, txid.seqno)
        if i == len(seqnos) or observations[i][1] != txid.view:
            continue
        points.append((due_s, (observations[i][0] - due_s) * 1000.0))
    return points
