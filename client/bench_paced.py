"""The benchmark's paced writer in C (`native/paced_load.c`): commit latency at half load
measured by a client that does not take the nodes' cores.

`charter.bench_commit.run_paced` costs ~370 µs of CPU per write on the 2-core benchmark
machine, a third of a core at half load, taken from the very processes whose latency it
measures. `charter-paced` does the same (open-loop writes on keep-alive TLS connections
with the client certificate, a watcher polling `/node/commit`, an end marker) in a few
microseconds per write. `build` compiles it with the system's C compiler and OpenSSL
(`apt-get install gcc libssl-dev`; a `PacedToolError` says so when they are missing),
`run_native` runs it and returns the same `PacedResult` as the Python client, with the CPU
the process used (from `wait4`). `parse_output` reads its event lines: bounded, and a line
that is not one is a typed error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from charter.bench import CLIENTS_MAX, DURATION_S_MAX
from charter.bench_ab import run_reaped
from charter.bench_commit import (
    COMMIT_POLL_INTERVAL_S,
    PACED_WRITES_MAX,
    RATE_PER_S_MAX,
    PacedResult,
    commit_points,
)
from charter.identity import TxId

SOURCE = Path(__file__).with_name("native") / "paced_load.c"
BUILD_HINT = (
    "the native paced client needs a C compiler and OpenSSL: apt-get install gcc libssl-dev"
)
COMPILE_TIMEOUT_S = 120.0
# Per write: one line of at most ~80 bytes; per poll one of ~50 (a poll every 5 ms).
OUTPUT_BYTES_MAX = 256 * 1024 * 1024
LINE_BYTES_MAX = 512
# The tool's own bounds past the paced part: 30 s for the writes to finish, 60 s for the
# end marker's commit.
EXTRA_WAIT_S = 30.0 + 60.0 + 10.0
NS_PER_S = 1e9


class PacedToolError(Exception):
    """The native paced client cannot be built, failed, or wrote what it should not."""


@dataclass(frozen=True, slots=True)
class NativeRun:
    result: PacedResult
    cpu_s: float  # user + system time of the charter-paced process


def build(directory: Path | None = None) -> Path:
    """Compile `charter-paced` into `directory` (by default the environment's own
    `charter-native` folder, else a new temporary one), named after the source's digest so
    a changed source is never run from an old binary; returns its path."""
    if directory is None:
        prefix = Path(sys.prefix)
        if os.access(prefix, os.W_OK):
            directory = prefix / "charter-native"
        else:
            directory = Path(tempfile.mkdtemp(prefix="charter-native-"))
    source = SOURCE.read_bytes()
    exe = directory / f"charter-paced-{hashlib.sha256(source).hexdigest()[:16]}"
    if exe.is_file():
        return exe
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise PacedToolError(BUILD_HINT)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = directory / f".{exe.name}.{os.getpid()}"  # concurrent builds each rename their own
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(tmp), str(SOURCE), "-lssl", "-lcrypto"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise PacedToolError(f"{BUILD_HINT}\n{done.stderr[-2000:]}")
    tmp.replace(exe)
    return exe


def command(
    exe: Path,
    url: str,
    *,
    watch_path: str,
    service_cert: Path,
    cert: Path,
    key: Path,
    rate_per_s: float,
    duration_s: float,
    clients: int,
    out: Path,
) -> list[str]:
    """The tool's command line for writes to `url` (https://127.0.0.1:PORT/PATH)."""
    assert 0 < rate_per_s <= RATE_PER_S_MAX
    assert 0 < duration_s <= DURATION_S_MAX
    assert 1 <= clients <= CLIENTS_MAX
    assert url.startswith("https://127.0.0.1:"), "the benchmark only drives 127.0.0.1"
    host_port, _, path = url.removeprefix("https://").partition("/")
    host, _, port = host_port.rpartition(":")
    poll_ms = round(COMMIT_POLL_INTERVAL_S * 1000)
    return [
        str(exe),
        host,
        port,
        "/" + path,
        watch_path,
        str(service_cert),
        str(cert),
        str(key),
        repr(float(rate_per_s)),
        repr(float(duration_s)),
        str(clients),
        str(poll_ms),
        str(out),
    ]


@dataclass(frozen=True, slots=True)
class PacedEvents:
    t0_ns: int
    elapsed_ns: int
    writes: tuple[tuple[int, int, TxId], ...]  # (due, answered, tx id)
    errors: tuple[tuple[int, str], ...]  # (HTTP status or 0, text)
    observations: tuple[tuple[int, int, int], ...]  # (seen, view, commit seqno)
    marker: TxId


def _ints(fields: list[str], count: int, line: str) -> list[int]:
    if len(fields) != count or not all(f.isdigit() for f in fields):
        raise PacedToolError(f"not an event line: {line[:80]!r}")
    return [int(f) for f in fields]


def parse_output(text: str) -> PacedEvents:
    """The tool's event lines (see the header of paced_load.c)."""
    if len(text) > OUTPUT_BYTES_MAX:
        raise PacedToolError(f"output larger than {OUTPUT_BYTES_MAX} bytes")
    t: list[int] | None = None
    marker: TxId | None = None
    writes: list[tuple[int, int, TxId]] = []
    errors: list[tuple[int, str]] = []
    observations: list[tuple[int, int, int]] = []
    for line in text.splitlines():
        if len(line) > LINE_BYTES_MAX:
            raise PacedToolError(f"line longer than {LINE_BYTES_MAX} bytes")
        kind, _, rest = line.partition(" ")
        if kind == "X":
            code, _, message = rest.partition(" ")
            errors.append((_ints([code], 1, line)[0], message))
            continue
        fields = rest.split(" ")
        if kind == "W":
            due, answered, view, seqno = _ints(fields, 4, line)
            writes.append((due, answered, TxId(view, seqno)))
        elif kind == "O":
            seen, view, seqno = _ints(fields, 3, line)
            observations.append((seen, view, seqno))
        elif kind == "T" and t is None:
            t = _ints(fields, 2, line)
        elif kind == "M" and marker is None:
            view, seqno = _ints(fields, 2, line)
            marker = TxId(view, seqno)
        else:
            raise PacedToolError(f"not an event line: {line[:80]!r}")
    if t is None or marker is None:
        raise PacedToolError("the run did not finish (no paced time or end marker)")
    return PacedEvents(
        t0_ns=t[0],
        elapsed_ns=t[1],
        writes=tuple(writes),
        errors=tuple(errors),
        observations=tuple(observations),
        marker=marker,
    )


def result_of(events: PacedEvents, *, rate_per_s: float, duration_s: float) -> PacedResult:
    """The same figures as the Python client's `run_paced` from the tool's events."""
    sent = [(due / NS_PER_S, txid) for due, _, txid in events.writes]
    observations = [(seen / NS_PER_S, view, seqno) for seen, view, seqno in events.observations]
    points = commit_points(sent, observations, events.marker)
    return PacedResult(
        target_rate_per_s=rate_per_s,
        writes_scheduled=min(int(rate_per_s * duration_s), PACED_WRITES_MAX),
        writes_ok=len(events.writes),
        errors=len(events.errors),
        first_error=events.errors[0][1] if events.errors else None,
        elapsed_s=events.elapsed_ns / NS_PER_S,
        commit_latencies_ms=tuple(latency for _, latency in points),
        commit_due_s=tuple(due for due, _ in points),
        answer_latencies_ms=tuple((answered - due) / 1e6 for due, answered, _ in events.writes),
        commit_polls=len(events.observations),
    )


async def run_native(
    cmd: list[str], out: Path, *, rate_per_s: float, duration_s: float
) -> NativeRun:
    """Run the tool (`command`, which writes its events to `out`) within its own bounds;
    its results and its CPU time."""
    err = out.with_suffix(".err")
    reaped = await run_reaped(
        cmd, out.with_suffix(".stdout"), err, timeout_s=duration_s + EXTRA_WAIT_S
    )
    if reaped is None:
        raise PacedToolError(f"charter-paced did not stop within {duration_s + EXTRA_WAIT_S:g} s")
    code, cpu_s = reaped
    if code != 0:
        with err.open("rb") as f:
            detail = f.read(4096).decode(errors="replace").strip()
        raise PacedToolError(f"charter-paced exited with {code}: {detail[-1000:]}")
    with out.open("rb") as f:
        data = f.read(OUTPUT_BYTES_MAX + 1)
    events = parse_output(data.decode("ascii", errors="replace"))
    return NativeRun(result_of(events, rate_per_s=rate_per_s, duration_s=duration_s), cpu_s)
