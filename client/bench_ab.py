"""ApacheBench (`ab`, Debian's apache2-utils) as the benchmark's load generator.

A load generator written in C that needs a few microseconds of CPU per request, so that the
benchmark measures the server and not the client (the Python generator in `charter.bench`
saturates near 2,000 requests/s on a shared core). `ab_command` builds the command line,
`run_ab` runs it in its own process and returns its figures together with the CPU time the
`ab` process used (from `wait4`), and `parse_ab_output` reads ab's report (bounded, typed
errors, nothing guessed: a report missing a required line is an `AbError`).

Every phase uses the same flags: keep-alive (`-k`), `-c` concurrent connections, a time
limit (`-t`), the client certificate and its key in one PEM file (`-E`), variable document
length (`-l`, the node's answers differ in length), `POST` of one small JSON record.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

AB_INSTALL_HINT = "ab (ApacheBench) is not installed: apt-get install apache2-utils"
AB_OUTPUT_BYTES_MAX = 256 * 1024
AB_CONCURRENCY_MAX = 512
# ab's `-t` otherwise implies `-n 50000`; a large request budget lets the time limit decide.
AB_REQUESTS_MAX = 10_000_000
AB_REQUEST_TIMEOUT_S = 10
# ab may overrun its time limit by a request timeout while it drains its connections.
AB_EXTRA_WAIT_S = 2 * AB_REQUEST_TIMEOUT_S + 10.0
AB_POLL_INTERVAL_S = 0.05
AB_DURATION_S_MAX = 600.0


class AbError(Exception):
    """`ab` is missing, failed, or printed a report we cannot read; `code` says which."""

    def __init__(self, message: str, *, code: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class AbReport:
    """The figures of one ab run (counts of requests, ab's own clock)."""

    complete: int
    failed: int  # connect, receive, length and exception failures
    non_2xx: int
    keep_alive: int
    time_taken_s: float
    percentiles_ms: tuple[tuple[int, int], ...]  # (percent, ms) as ab prints them

    @property
    def ok(self) -> int:
        """Requests answered 2xx on a working connection."""
        return max(self.complete - self.failed - self.non_2xx, 0)

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.time_taken_s if self.time_taken_s > 0 else 0.0

    def percentile_ms(self, percent: int) -> int | None:
        return dict(self.percentiles_ms).get(percent)


@dataclass(frozen=True, slots=True)
class AbRun:
    report: AbReport
    cpu_s: float  # user + system time of the ab process
    wall_s: float  # from spawning ab to reaping it


def find_ab() -> str:
    """The path of `ab`, or `AbError` telling the user how to install it."""
    path = shutil.which("ab")
    if path is None:
        raise AbError(AB_INSTALL_HINT, code="AbMissing")
    return path


def client_pem(cert: Path, key: Path, out: Path) -> Path:
    """ab's `-E` takes the client certificate and its private key in one PEM file (0600)."""
    data = cert.read_bytes().rstrip(b"\n") + b"\n" + key.read_bytes()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return out


def ab_command(
    ab: str,
    url: str,
    *,
    concurrency: int,
    duration_s: float,
    client_pem_path: Path,
    body_path: Path,
) -> list[str]:
    """The one ab command line every phase uses (only the URL differs)."""
    assert 1 <= concurrency <= AB_CONCURRENCY_MAX
    assert 0 < duration_s <= AB_DURATION_S_MAX
    assert url.startswith("https://127.0.0.1:"), "the benchmark only drives 127.0.0.1"
    return [
        ab,
        "-k",
        "-q",
        "-l",
        "-c",
        str(concurrency),
        "-t",
        str(max(1, round(duration_s))),
        "-n",
        str(AB_REQUESTS_MAX),
        "-s",
        str(AB_REQUEST_TIMEOUT_S),
        "-E",
        str(client_pem_path),
        "-p",
        str(body_path),
        "-T",
        "application/json",
        url,
    ]


_REQUIRED = {
    "complete": re.compile(r"^Complete requests:\s+(\d+)\s*$", re.M),
    "failed": re.compile(r"^Failed requests:\s+(\d+)\s*$", re.M),
    "time_taken": re.compile(r"^Time taken for tests:\s+(\d+(?:\.\d+)?) seconds\s*$", re.M),
}
_NON_2XX = re.compile(r"^Non-2xx responses:\s+(\d+)\s*$", re.M)
_KEEP_ALIVE = re.compile(r"^Keep-Alive requests:\s+(\d+)\s*$", re.M)
_PERCENTILE = re.compile(r"^\s+(\d{1,3})%\s+(\d+)", re.M)


def parse_ab_output(text: str) -> AbReport:
    """ab's report → AbReport; `AbError(code="AbOutputInvalid")` if it is not one."""
    if len(text) > AB_OUTPUT_BYTES_MAX:
        raise AbError(f"ab printed more than {AB_OUTPUT_BYTES_MAX} bytes", code="AbOutputInvalid")
    found: dict[str, str] = {}
    for name, pattern in _REQUIRED.items():
        match = pattern.search(text)
        if match is None:
            tail = text.strip()[-300:]
            raise AbError(f"ab's report has no {name!r} line: {tail!r}", code="AbOutputInvalid")
        found[name] = match.group(1)
    non_2xx = _NON_2XX.search(text)
    keep_alive = _KEEP_ALIVE.search(text)
    percentiles = tuple(
        (int(p), int(ms)) for p, ms in _PERCENTILE.findall(text) if 0 < int(p) <= 100
    )
    report = AbReport(
        complete=int(found["complete"]),
        failed=int(found["failed"]),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        keep_alive=int(keep_alive.group(1)) if keep_alive else 0,
        time_taken_s=float(found["time_taken"]),
        percentiles_ms=percentiles,
    )
    if report.failed > report.complete or report.time_taken_s <= 0:
        raise AbError(f"ab's report is inconsistent: {report}", code="AbOutputInvalid")
    return report


async def run_ab(cmd: list[str], workdir: Path, *, duration_s: float) -> AbRun:
    """Run ab to completion (killed if it overruns); its report and its CPU time."""
    out_path, err_path = workdir / "ab.out", workdir / "ab.err"
    started_s = time.monotonic()
    reaped = await run_reaped(cmd, out_path, err_path, timeout_s=duration_s + AB_EXTRA_WAIT_S)
    if reaped is None:
        raise AbError(f"ab did not stop within {duration_s + AB_EXTRA_WAIT_S:g} s",
                      code="AbTimeout")  # fmt: skip
    code, cpu_s = reaped
    wall_s = time.monotonic() - started_s
    text = _read_bounded(out_path)
    if code != 0:
        detail = (_read_bounded(err_path).strip() or text.strip())[-500:]
        raise AbError(f"ab exited with {code}: {detail}", code="AbFailed")
    return AbRun(parse_ab_output(text), cpu_s, wall_s)


async def run_reaped(
    cmd: list[str], out_path: Path, err_path: Path, *, timeout_s: float
) -> tuple[int, float] | None:
    """Run a native tool to completion: (exit code, CPU seconds), or None if it overran
    `timeout_s` (then it was killed).

    The tool is spawned directly and reaped with `wait4`, whose resource usage is exactly
    its CPU time (a /proc reading after it exits is impossible, and RUSAGE_CHILDREN would
    mix in any other child that ends meanwhile). Output goes to files, never a pipe that
    could fill up; a timeout or Ctrl-C kills it, so it never outlives the benchmark.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(out_path), flags, 0o600),
        (os.POSIX_SPAWN_OPEN, 2, str(err_path), flags, 0o600),
    ]
    pid = os.posix_spawn(cmd[0], cmd, dict(os.environ), file_actions=actions)
    deadline_s = time.monotonic() + timeout_s
    reaped = False
    try:
        while True:
            wpid, status, usage = os.wait4(pid, os.WNOHANG)
            if wpid == pid:
                reaped = True
                return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime
            if time.monotonic() > deadline_s:
                return None
            await asyncio.sleep(AB_POLL_INTERVAL_S)
    finally:
        if not reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.wait4(pid, 0)


def _read_bounded(path: Path) -> str:
    with path.open("rb") as f:
        data = f.read(AB_OUTPUT_BYTES_MAX + 1)
    return data.decode(errors="replace")
