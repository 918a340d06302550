#!/usr/bin/env python3
"""Node benchmark: committed writes/s and latency of the sample app, against a TLS ceiling.

    .venv/bin/python scripts/bench.py [--nodes 1] [--clients 32] [--duration-s 10]
        [--network network.json] [--out results.json] [--compare-nodes 1,3] [--rounds 1]
        [--receipts 200] [--loop auto] [--workspace DIR] [--profile-dir DIR]

Without --network it starts its own sandbox network in a temporary workspace (one per node
count); with --network it drives a running one (its primary). N concurrent clients, each one
keep-alive TLS connection with user0's certificate and the pinned service certificate, write
private records (`POST /app/log/private`) for the duration. Then it waits until the last
write is committed: committed tx/s = writes at or below the final commit seqno / time from
the first request to that commit. A receipt phase fetches and verifies (offline) the JSON
receipts of a sample of those writes.

In the same run, the same load against a trivial aiohttp TLS server in its own process gives
the ceiling; `ceiling_ratio` = committed tx/s / ceiling req/s. With --compare-nodes 1,3 each
node count is measured in turn and `replication_ratio` = tx/s(last) / tx/s(first). Every
node phase is followed by a ceiling phase and divided by the mean of the ceilings around it;
with --rounds R each node count runs R phases and the one with the median ratio is reported.
CPU time per request of the primary's enclave and host processes, of the ceiling server and
of this load generator is reported too (`*_cpu_ms_per_*`): on a shared machine it moves much
less than the rates. --profile-dir DIR records py-spy profiles of the primary's processes.
The load generator and the ceiling server run on uvloop when it is installed (--loop auto),
as the node's processes do: the ceiling is then plain aiohttp on the node's event loop.

The last line of stdout is one JSON object (the same as the --out file).
Everything is bounded (clients, duration, requests, waits) and only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from charter import bench  # noqa: E402
from charter.identity import Network, load_json_file  # noqa: E402
from charter.sandbox import Sandbox  # noqa: E402
from charter.sdk import CharterClient, build_ssl_context  # noqa: E402

WRITE_PATH = "/app/log/private"
RECEIPT_CONCURRENCY_MAX = 8
NODES_MAX = 7
ROUNDS_MAX = 10
PROFILE_TOP = 25

err = Console(stderr=True)
# Not on a terminal (piped, or `charter bench` captured): wide enough for the whole table.
out = Console(width=None if sys.stdout.isatty() else 120)


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load goes: the primary's URL and the identities to reach it."""

    url: str
    service_cert: Path
    user_cert: Path
    user_key: Path
    nodes: int
    pids: dict[str, int]  # "enclave"/"host" -> pid of the primary's processes, if known


# --- finding the primary ------------------------------------------------------------------------


async def _primary_url(urls: list[str], service_cert: Path) -> tuple[str, int]:
    """The URL of the node that says it is the primary (and its index in `urls`)."""
    deadline_s = time.monotonic() + 30.0
    while time.monotonic() < deadline_s:
        for index, url in enumerate(urls):
            with contextlib.suppress(Exception):
                async with CharterClient(url, service_cert, request_timeout_s=5.0) as c:
                    network = await c.network()
                    state = await c.node_state()
                    if network.get("primary_id") and network["primary_id"] == state.get("node_id"):
                        return url, index
        await asyncio.sleep(0.2)
    raise RuntimeError(f"none of {len(urls)} node(s) says it is the primary")


async def target_from_network(path: Path) -> Target:
    network = Network.load(path)
    for url in network.urls:
        if not url.startswith("https://127.0.0.1:"):
            raise RuntimeError(f"the benchmark only drives nodes on 127.0.0.1, not {url}")
    cert, key = network.user(0)
    url, index = await _primary_url(list(network.urls), network.service_cert)
    raw = load_json_file(path, "network file")  # bounded read; Network.load checked its shape
    node = raw["nodes"][index]
    pids = {k: int(node[f"{k}_pid"]) for k in ("enclave", "host") if node.get(f"{k}_pid")}
    return Target(url, network.service_cert, cert, key, len(network.urls), pids)


@contextlib.asynccontextmanager
async def own_network(nodes: int, workspace: Path) -> AsyncIterator[Target]:
    """A sandbox network of `nodes` nodes in `workspace`, always stopped afterwards."""
    sandbox = Sandbox(workspace, nodes=nodes)
    try:
        await sandbox.start()
        primary_id = await sandbox.wait_for_primary()
        primary = next(n for n in sandbox.nodes if n.node_id == primary_id)
        cert, key = sandbox.user_paths(0)
        ports = primary.ports
        pids = {k: int(ports[f"{k}_pid"]) for k in ("enclave", "host") if ports.get(f"{k}_pid")}
        yield Target(primary.url, sandbox.service_cert_path, cert, key, nodes, pids)
    finally:
        await asyncio.to_thread(sandbox.stop)


# --- measuring -----------------------------------------------------------------------------------


@contextlib.contextmanager
def progress_task(
    progress: Progress, label: str, duration_s: float
) -> Iterator[Callable[[int], None]]:
    """A progress bar over the load phase; yields the per-request callback."""
    task = progress.add_task(label, total=duration_s, requests=0)
    count = [0]
    started_s = time.monotonic()

    def on_request(n: int) -> None:
        count[0] += n
        # Updating rich on every request would cost more than the request; every 64 is plenty.
        if count[0] % 64 == 0:
            elapsed_s = min(time.monotonic() - started_s, duration_s)
            progress.update(task, completed=elapsed_s, requests=count[0])

    try:
        yield on_request
    finally:
        progress.update(task, completed=duration_s, requests=count[0])


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def latency_fields(latencies_ms: tuple[float, ...]) -> dict[str, float | None]:
    return {
        "p50_ms": _ms(bench.percentile_ms(latencies_ms, 50)),
        "p90_ms": _ms(bench.percentile_ms(latencies_ms, 90)),
        "p99_ms": _ms(bench.percentile_ms(latencies_ms, 99)),
    }


class CpuMeter:
    """CPU used by some processes (and this load generator) between two points in time."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = self._read()

    def _read(self) -> dict[str, float | None]:
        now: dict[str, float | None] = {n: bench.process_cpu_s(p) for n, p in self.pids.items()}
        now["loadgen"] = time.process_time()
        return now

    def per_request_ms(self, count: int) -> dict[str, float | None]:
        after = self._read()
        return {n: bench.cpu_ms_per_request(self.before[n], after[n], count) for n in after}


@dataclass(frozen=True, slots=True)
class CeilingPhase:
    load: bench.LoadResult
    server_cpu_ms_per_req: float | None
    loadgen_cpu_ms_per_req: float | None


async def measure_ceiling(
    server: bench.CeilingServer, args: argparse.Namespace, progress: Progress, label: str
) -> CeilingPhase:
    meter = CpuMeter({"server": server.pid} if server.pid else {})
    with progress_task(progress, f"ceiling {label}", args.duration_s) as tick:
        load = await bench.run_load(
            server.url,
            bench.ceiling_client_context(server.pki),
            clients=args.clients,
            duration_s=args.duration_s,
            on_progress=tick,
        )
    cpu = meter.per_request_ms(load.requests_ok)
    return CeilingPhase(load, cpu.get("server"), cpu["loadgen"])


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 3) if known else None


def ceiling_fields(phases: list[CeilingPhase]) -> dict[str, Any]:
    """The ceiling over every phase of the run (they bracket the node phases)."""
    loads = [phase.load for phase in phases]
    rates = [load.req_per_s for load in loads if load.requests_ok]
    latencies = tuple(ms for load in loads for ms in load.latencies_ms)
    result: dict[str, Any] = {
        "ceiling_req_per_s": round(sum(rates) / len(rates), 1) if rates else None,
        "ceiling_phases_req_per_s": [round(r, 1) for r in rates],
        "ceiling_errors": sum(load.errors for load in loads),
        "ceiling_server_cpu_ms_per_req": _mean([p.server_cpu_ms_per_req for p in phases]),
        "ceiling_loadgen_cpu_ms_per_req": _mean([p.loadgen_cpu_ms_per_req for p in phases]),
    }
    result.update({f"ceiling_{k}": v for k, v in latency_fields(latencies).items()})
    first_error = next((load.first_error for load in loads if load.first_error), None)
    if first_error:
        result["ceiling_first_error"] = first_error
    return result


async def measure_node(
    target: Target, args: argparse.Namespace, progress: Progress, profile: Path | None
) -> dict[str, Any]:
    ssl_ctx = build_ssl_context(target.service_cert, target.user_cert, target.user_key)
    profilers = [
        start_profiler(name, pid, target.nodes, profile, args.duration_s)
        for name, pid in target.pids.items()
    ]
    meter = CpuMeter(target.pids)
    try:
        with progress_task(progress, f"{target.nodes} node(s) writes", args.duration_s) as tick:
            load = await bench.run_load(
                target.url + WRITE_PATH,
                ssl_ctx,
                clients=args.clients,
                duration_s=args.duration_s,
                on_progress=tick,
            )
    finally:
        for profiler in profilers:
            if profiler is not None:
                finish_profiler(profiler)
    cpu = meter.per_request_ms(load.requests_ok)
    result: dict[str, Any] = {
        "nodes": target.nodes,
        "clients": args.clients,
        "writes_ok": load.requests_ok,
        "write_errors": load.errors,
        "write_req_per_s": round(load.req_per_s, 1),
        # The primary's processes only; with more nodes the backups use CPU too.
        "enclave_cpu_ms_per_tx": cpu.get("enclave"),
        "host_cpu_ms_per_tx": cpu.get("host"),
        "loadgen_cpu_ms_per_req": cpu["loadgen"],
    }
    result.update(latency_fields(load.latencies_ms))
    if load.first_error:
        result["first_error"] = load.first_error
    if not load.txids:
        raise RuntimeError(f"no write succeeded ({load.first_error or 'no answer'})")
    async with CharterClient(
        target.url, target.service_cert, cert_path=target.user_cert, key_path=target.user_key
    ) as client:
        commit_seqno, commit_s = await bench.wait_for_commit_seqno(client, load.max_seqno)
        committed = [t for t in load.txids if t.seqno <= commit_seqno]
        elapsed_s = max(commit_s - load.started_s, 1e-9)
        result.update(
            commit_seqno=commit_seqno,
            writes_committed=len(committed),
            commit_elapsed_s=round(elapsed_s, 3),
            committed_tx_per_s=round(len(committed) / elapsed_s, 1),
        )
        sample = bench.sample_evenly(committed, args.receipts)
        task = progress.add_task(f"{target.nodes} node(s) receipts", total=None, requests=0)
        receipts = await bench.fetch_and_verify_receipts(
            client, sample, concurrency=min(args.clients, RECEIPT_CONCURRENCY_MAX)
        )
        progress.update(task, total=1, completed=1, requests=receipts.verified)
    per_s = receipts.per_s
    result.update(
        receipts_verified=receipts.verified,
        receipts_failed=receipts.failed,
        receipts_per_s=round(per_s, 1) if per_s is not None else None,
    )
    if receipts.first_error:
        result["receipt_first_error"] = receipts.first_error
    return result


def failed_run(nodes: int, clients: int, error: BaseException) -> dict[str, Any]:
    message = f"{type(error).__name__}: {error}".strip()
    return {
        "nodes": nodes,
        "clients": clients,
        "committed_tx_per_s": None,
        "p50_ms": None,
        "p90_ms": None,
        "p99_ms": None,
        "receipts_per_s": None,
        "ceiling_ratio": None,
        "error": message[-2000:],
    }


# --- optional profiling of the primary's enclave with py-spy (for developers) ----------------------


def start_profiler(
    name: str, pid: int, nodes: int, directory: Path | None, duration_s: float
) -> tuple[subprocess.Popen[bytes], Path] | None:
    """py-spy the primary's `name` process during the load (collapsed stacks in `directory`)."""
    if directory is None:
        return None
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        err.print("[yellow]--profile-dir: py-spy not found (pip install py-spy); not profiling")
        return None
    raw = directory / f"{name}-{nodes}node-{pid}.txt"
    cmd = [exe, "record", "-p", str(pid), "-d", str(int(duration_s) + 1), "-r", "100"]
    cmd += ["-f", "raw", "-o", str(raw), "--nonblocking"]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as e:  # profiling is an extra: it never fails the measurement
        err.print(f"[yellow]--profile-dir: cannot profile ({e}); going on without")
        return None
    return proc, raw


def finish_profiler(handle: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, raw = handle
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if raw.exists():
        top = raw.with_name(f"{raw.stem}-top.txt")
        top.write_text(profile_summary(raw))
        err.print(f"profile: {raw} (top functions in {top.name})")


def profile_summary(raw: Path, top: int = PROFILE_TOP) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_samples: Counter[str] = Counter()
    incl_samples: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_samples[frames[-1]] += count
        for frame in set(frames):
            incl_samples[frame] += count
    if total == 0:
        return "no samples\n"
    lines = [f"samples {total}", "", "self%  function"]
    lines += [f"{100 * n / total:5.1f}  {f}" for f, n in self_samples.most_common(top)]
    lines += ["", "incl%  function"]
    lines += [f"{100 * n / total:5.1f}  {f}" for f, n in incl_samples.most_common(top)]
    return "\n".join(lines) + "\n"


# --- the run ---------------------------------------------------------------------------------------


def node_counts(args: argparse.Namespace) -> list[int]:
    if args.compare_nodes:
        counts = [int(x) for x in args.compare_nodes.split(",") if x.strip()]
    else:
        counts = [args.nodes]
    if not counts or any(not 1 <= n <= NODES_MAX for n in counts):
        raise SystemExit(f"bench: node counts must be in 1..{NODES_MAX}")
    return counts


async def measure_rounds(
    target: Target,
    args: argparse.Namespace,
    progress: Progress,
    server: bench.CeilingServer,
    ceilings: list[CeilingPhase],
) -> dict[str, Any]:
    """`--rounds` node phases on one network, each followed by a ceiling phase.

    On a shared machine the available CPU drifts; dividing every node phase by the mean of
    the ceiling phases just before and after it keeps the ratio honest, and the round with
    the median ratio is the one reported (all its figures from the same minute).
    """
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        before = ceilings[-1]
        profile = args.profile_dir if i == 0 else None
        result = await measure_node(target, args, progress, profile)
        after = await measure_ceiling(server, args, progress, f"(after {target.nodes} node)")
        ceilings.append(after)
        attach_ceiling(result, [before, after])
        rounds.append(result)
    ranked = sorted(rounds, key=lambda r: r["ceiling_ratio"] or 0.0)
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["rounds"] = len(rounds)
    if len(rounds) > 1:
        chosen["rounds_committed_tx_per_s"] = [r["committed_tx_per_s"] for r in rounds]
        chosen["rounds_ceiling_ratio"] = [r["ceiling_ratio"] for r in rounds]
    return chosen


def attach_ceiling(result: dict[str, Any], around: list[CeilingPhase]) -> None:
    rates = [c.load.req_per_s for c in around if c.load.requests_ok]
    ceiling_rate = sum(rates) / len(rates) if rates else None
    rate = result.get("committed_tx_per_s")
    result["ceiling_req_per_s"] = round(ceiling_rate, 1) if ceiling_rate else None
    result["ceiling_ratio"] = round(rate / ceiling_rate, 3) if rate and ceiling_rate else None
    # CPU per request, ceiling server ÷ primary node (enclave + host): what ceiling_ratio
    # would be if CPU were the only limit; steady when other work shares the cores.
    server_ms = _mean([c.server_cpu_ms_per_req for c in around])
    enclave_ms, host_ms = result.get("enclave_cpu_ms_per_tx"), result.get("host_cpu_ms_per_tx")
    if server_ms and enclave_ms and host_ms:
        result["cpu_ceiling_ratio"] = round(server_ms / (enclave_ms + host_ms), 3)
    else:
        result["cpu_ceiling_ratio"] = None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """A ceiling phase, then each node count's rounds (see `measure_rounds`)."""
    runs: list[dict[str, Any]] = []
    ceilings: list[CeilingPhase] = []
    with tempfile.TemporaryDirectory(prefix="charter-bench-") as tmp_name:
        tmp = Path(tmp_name)
        workspace_root = args.workspace.resolve() if args.workspace else tmp
        progress = Progress(
            TextColumn("{task.description:<30}"),
            BarColumn(),
            TextColumn("{task.fields[requests]:>8} ok"),
            TimeRemainingColumn(),
            console=err,
        )
        pki = bench.make_ceiling_pki(tmp / "ceiling")
        with progress, bench.CeilingServer(pki, loop=args.loop) as server:
            ceilings.append(await measure_ceiling(server, args, progress, "(before)"))
            if args.network is not None:
                try:
                    target = await target_from_network(args.network)
                    runs.append(await measure_rounds(target, args, progress, server, ceilings))
                except Exception as e:
                    runs.append(failed_run(0, args.clients, e))
            else:
                for nodes in node_counts(args):
                    try:
                        async with own_network(nodes, workspace_root / f"net{nodes}") as target:
                            runs.append(
                                await measure_rounds(target, args, progress, server, ceilings)
                            )
                    except Exception as e:
                        runs.append(failed_run(nodes, args.clients, e))
    return summarise(args, runs, ceilings)


def summarise(
    args: argparse.Namespace, runs: list[dict[str, Any]], ceilings: list[CeilingPhase]
) -> dict[str, Any]:
    assert runs and ceilings
    result: dict[str, Any] = {**runs[0], **ceiling_fields(ceilings)}
    # The headline ceiling is the one the headline run is divided by.
    # (A run that failed was divided by nothing: then the mean over the whole run.)
    result["ceiling_req_per_s"] = runs[0].get("ceiling_req_per_s") or result["ceiling_req_per_s"]
    result["duration_s"] = args.duration_s
    result["loop"] = args.loop  # of the load generator and the ceiling server
    if args.compare_nodes:
        first, last = runs[0], runs[-1]

        def ratio(field: str) -> float | None:
            a, b = first.get(field), last.get(field)
            return round(b / a, 3) if a and b else None

        result["replication_ratio"] = ratio("committed_tx_per_s")
        # The same, each divided by its own ceiling first: robust to load drift between them.
        result["replication_ratio_vs_ceiling"] = ratio("ceiling_ratio")
        result["runs"] = runs
    result["command"] = " ".join(["scripts/bench.py", *args.argv])
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    return result


def show_table(result: dict[str, Any]) -> None:
    runs = result.get("runs") or [result]
    table = Table(title=f"Charter node benchmark ({result['clients']} clients, "
                  f"{result['duration_s']:g} s)")  # fmt: skip
    for col in ("nodes", "committed tx/s", "p50 ms", "p90 ms", "p99 ms", "receipts/s",
                "ceiling req/s", "ratio"):  # fmt: skip
        table.add_column(col, justify="right")

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    for r in runs:
        table.add_row(
            fmt(r.get("nodes")), fmt(r.get("committed_tx_per_s")), fmt(r.get("p50_ms")),
            fmt(r.get("p90_ms")), fmt(r.get("p99_ms")), fmt(r.get("receipts_per_s")),
            fmt(r.get("ceiling_req_per_s")), fmt(r.get("ceiling_ratio")),
        )  # fmt: skip
    out.print(table)
    for r in runs:
        if r.get("error"):
            out.print(f"[red]{r['nodes']} node(s) failed:[/red] {r['error'][:500]}", markup=True)
    if result.get("replication_ratio") is not None:
        out.print(f"replication ratio (tx/s {runs[-1]['nodes']} nodes ÷ {runs[0]['nodes']} node): "
                  f"{result['replication_ratio']:g}")  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=1, help="nodes of the sandbox (default 1)")
    p.add_argument("--clients", type=int, default=32, help="concurrent TLS clients (default 32)")
    p.add_argument("--duration-s", type=float, default=10.0, help="load time per phase (10)")
    p.add_argument("--network", type=Path, default=None, help="drive a running network.json")
    p.add_argument("--out", type=Path, default=Path("bench_results.json"), help="results file")
    p.add_argument("--compare-nodes", default=None, help="e.g. 1,3: measure each node count")
    p.add_argument("--receipts", type=int, default=200, help="receipts to fetch+verify (200)")
    p.add_argument("--rounds", type=int, default=1, help="node phases per count; median (1)")
    p.add_argument(
        "--loop",
        choices=bench.LOOP_NAMES,
        default="auto",
        help="event loop of the load generator and ceiling (auto: uvloop if installed, as nodes)",
    )
    p.add_argument("--workspace", type=Path, default=None, help="keep sandbox workspaces here")
    p.add_argument("--profile-dir", type=Path, default=None, help="py-spy the primary enclave")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= bench.CLIENTS_MAX:
        p.error(f"--clients must be in 1..{bench.CLIENTS_MAX}")
    if not 0 < args.duration_s <= bench.DURATION_S_MAX:
        p.error(f"--duration-s must be in (0, {bench.DURATION_S_MAX:g}]")
    if not 0 <= args.receipts <= bench.RECEIPTS_MAX:
        p.error(f"--receipts must be in 0..{bench.RECEIPTS_MAX}")
    if not 1 <= args.rounds <= ROUNDS_MAX:
        p.error(f"--rounds must be in 1..{ROUNDS_MAX}")
    if args.network is not None and args.compare_nodes:
        p.error("--compare-nodes starts its own networks; it cannot be used with --network")
    node_counts(args)
    try:
        args.loop = bench.resolve_loop(args.loop)
    except ValueError as e:
        p.error(str(e))
    args.argv = argv
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        result = bench.run_on(args.loop, run(args))
    except KeyboardInterrupt:
        # asyncio.run cancelled the run: every sandbox and the ceiling server were stopped.
        err.print("bench: interrupted; no results")
        return 130
    show_table(result)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    err.print(f"results written to {args.out}")
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    return 0 if result.get("committed_tx_per_s") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
