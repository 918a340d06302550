#!/usr/bin/env python3
"""Node benchmark: committed writes/s, CPU per write and commit latency, against a TLS ceiling.

    .venv/bin/python scripts/bench.py [--compare-nodes 1,3 | --nodes N | --network FILE]
        [--load-generator ab|python] [--clients 64] [--duration-s 10] [--rounds 1]
        [--latency-duration-s 5] [--receipts 200] [--out FILE] [--workspace DIR]
        [--profile-dir DIR] [--loop auto] [--frontends 0,1,2] [--snapshot-tx-count N]
        [--signature-delay-ms D] [--signature-tx-count N] [--signature-light-load-delay-ms L]
        [--paced-client auto|native|python]

Without --network it starts its own sandbox network in a temporary workspace for each node
count (default 1 then 3); with --network it drives a running one (its primary).

Load generator (--load-generator): `ab` (ApacheBench, `apt-get install apache2-utils`; the
default) with keep-alive, `-c CLIENTS` connections, user0's client certificate, for
--duration-s, POSTing one private record (`/app/log/private`); or `python`, this package's
aiohttp client (`charter.bench.run_load`, one keep-alive connection per client), which
saturates near 2,000 requests/s on a shared core and then measures itself more than the node.

Committed means committed: each node phase is bracketed by two writes of the benchmark's
own; once the second is Committed (`/node/tx`) and both are in the same view, the writes
answered 2xx between them are committed (`charter.bench_commit`). committed tx/s = those
writes / time from starting the load to seeing the second marker Committed.

The ceiling: the same load generator with the same flags, TLS setup and kind of client
certificate against a trivial aiohttp TLS server in its own process (`charter.bench`),
measured before the first node phase and after every node phase; each node phase is
divided by the mean of the two ceilings around it (`ceiling_ratio`).

CPU per write (µs, user + system from /proc over the measured window ÷ committed writes) of
the primary's enclave and host, of the backups' processes together, and of the load
generator; CPU per request of the ceiling server. `node_counters_per_write` is the change of
the node's own counters (`/node/metrics`) per committed write.

Commit latency at half load: after each node phase, a paced (open-loop) client writes at
half the committed rate just measured for --latency-duration-s, while a watcher polls the
commit point; p50/p99 are from when each write was due. --paced-client: `native` (the
default with ab; `charter-paced`, C and OpenSSL, built on first use, `charter.bench_paced`:
a few µs of CPU per write) or `python` (the default with the Python load generator;
`charter.bench_commit.run_paced`, ~370 µs per write on a 2-core machine, a third of a core
taken from the nodes it measures at half load). `half_load_client_us_per_write` is its CPU.

Frontends (--frontends K or a list such as 0,1,2, each measured in turn on its own network
of each node count): sets the nodes' `frontends` option. The primary's enclave CPU is then
split into `ordering_us_per_write` (the enclave process, which orders and commits) and
`frontends_us_per_write` (its K frontend processes, TLS and HTTP); `enclave_us_per_write`
stays all of them. With K >= 1 the run also carries `projection_writes_per_s`, a projection
(not a measurement) for 4, 8 and 16 cores: min(1e6 / ordering µs, (cores - 1) × 1e6 /
(frontends + host µs)), the ordering process having one core to itself.

Each run also carries `own_cores_limit_writes_per_s`, a projection (not a measurement): the
rate were each process of the network on a core of its own, 1e6 / the CPU per write of the
busiest one (the primary's ordering process, each of its frontends, its host, each backup
process: `busiest_backup_process_us_per_write`). On one small machine every node shares the
same cores, which no deployment does; `replication_ratio_own_cores` is `replication_ratio`
with these limits in place of the measured rates. With a list of frontends values,
`replication_ratio_by_frontends` gives both ratios for each value (each from the runs with
that value); `replication_ratio` itself is the first value's.

Receipts: a sample of the phase's committed transactions, fetched and verified offline.
--profile-dir DIR records py-spy profiles (pip install py-spy, a developer tool) of the
primary's processes (its enclave, each frontend, its host) and of every backup process
(`backupN`: the other nodes' enclaves, frontends and hosts) during the first node phase of
each node count.

The last line of stdout is one JSON object (the same as the --out file), with at least
committed_tx_per_s, ceiling_req_per_s, ceiling_ratio, replication_ratio,
p99_commit_ms_at_half_load, enclave_us_per_write, host_us_per_write, load_generator.
Everything is bounded (clients, duration, requests, waits) and only 127.0.0.1 is used;
every node, ceiling server and ab process it starts is stopped before it returns.
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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from charter import bench, bench_ab, bench_commit, bench_paced  # noqa: E402
from charter.enclave_app.interface.config import SignaturesConfig, SnapshotsConfig  # noqa: E402
from charter.identity import Network, TxId, load_json_file  # noqa: E402
from charter.sandbox import Sandbox  # noqa: E402
from charter.sdk import CharterClient, build_ssl_context  # noqa: E402

WRITE_PATH = bench_commit.WRITE_PATH
RECEIPT_CONCURRENCY_MAX = 8
NODES_MAX = 7
FRONTENDS_MAX = 64  # NodeConfig.frontends' bound
PROJECTION_CORES = (4, 8, 16)
BACKUP_PROCESS = "backup_process:"  # CPU meter groups of one backup process each
SIGNATURE_SETTING_MAX = 1_000_000
ROUNDS_MAX = 10
PROFILE_TOP = 25
PROFILE_RATE_HZ = 250  # py-spy samples per second (it runs in its own process)
LATENCY_CLIENTS_MAX = 64
LOAD_GENERATORS = ("ab", "python")
PACED_CLIENTS = ("auto", "native", "python")
DEFAULT_NODE_COUNTS = "1,3"
HALF_LOAD_REACHED_FRACTION = 0.95
BODY = json.dumps({"id": 1, "msg": "bench record"}).encode()

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
    backup_pids: tuple[int, ...] = ()  # every process of the other nodes
    frontends: int | None = None  # the nodes' `frontends` option, if the bench set it


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


def _pids(record: dict[str, Any]) -> dict[str, int]:
    return {k: int(record[f"{k}_pid"]) for k in ("enclave", "host") if record.get(f"{k}_pid")}


async def target_from_network(path: Path) -> Target:
    network = Network.load(path)
    for url in network.urls:
        if not url.startswith("https://127.0.0.1:"):
            raise RuntimeError(f"the benchmark only drives nodes on 127.0.0.1, not {url}")
    cert, key = network.user(0)
    url, index = await _primary_url(list(network.urls), network.service_cert)
    raw = load_json_file(path, "network file")  # bounded read; Network.load checked its shape
    nodes = raw["nodes"]
    backups = tuple(p for i, n in enumerate(nodes) if i != index for p in _pids(n).values())
    return Target(
        url, network.service_cert, cert, key, len(network.urls), _pids(nodes[index]), backups
    )


def frontend_pids(enclave_pid: int) -> tuple[int, ...]:
    """The frontend processes an enclave started (its children running frontend_process)."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{enclave_pid}/task"):
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{enclave_pid}/task/{task}/children").read_text()
                pids.extend(int(p) for p in children.split())
    found = []
    for pid in sorted(set(pids)):
        with contextlib.suppress(OSError):
            if b"frontend_process" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return tuple(found)


def projection(
    ordering_us: float | None, frontends_us: float | None, host_us: float | None
) -> dict[str, float] | None:
    """Projected writes/s for more cores (a projection, not a measurement): the ordering
    process on one core, the frontends and the host sharing the others."""
    if not ordering_us or not frontends_us or not host_us:
        return None
    ordering_limit = 1e6 / ordering_us
    return {
        str(cores): round(min(ordering_limit, (cores - 1) * 1e6 / (frontends_us + host_us)), 0)
        for cores in PROJECTION_CORES
    } | {"ordering_limit": round(ordering_limit, 0)}


def own_cores_limit(run: dict[str, Any]) -> float | None:
    """Writes/s if every process of the network had a core of its own (a projection, not a
    measurement): the busiest process's CPU per write bounds the rate. The processes are
    the primary's ordering process, each of its K frontends (their CPU split evenly), its
    host, and each backup process."""
    frontends = run.get("frontend_processes") or 0
    ordering, host = run.get("ordering_us_per_write"), run.get("host_us_per_write")
    if not ordering or not host:
        return None
    busiest = float(max(ordering, host, run.get("busiest_backup_process_us_per_write") or 0.0))
    if frontends and run.get("frontends_us_per_write"):
        busiest = max(busiest, float(run["frontends_us_per_write"]) / frontends)
    return round(1e6 / busiest, 0)


@contextlib.asynccontextmanager
async def own_network(
    nodes: int,
    workspace: Path,
    signature_tx_count: int,
    signature_delay_ms: int,
    frontends: int | None = None,
    signature_light_load_delay_ms: int | None = None,
    snapshot_tx_count: int | None = None,
) -> AsyncIterator[Target]:
    """A sandbox network of `nodes` nodes in `workspace`, always stopped afterwards."""

    def configure(index: int, config: dict[str, Any]) -> None:
        del index
        if snapshot_tx_count is not None:
            config["snapshots"] = {"tx_count": snapshot_tx_count}
        if frontends is not None:
            config["frontends"] = frontends
        if signature_light_load_delay_ms is not None:
            config["signatures"]["light_load_delay_ms"] = signature_light_load_delay_ms

    sandbox = Sandbox(
        workspace,
        nodes=nodes,
        signature_tx_count=signature_tx_count,
        signature_delay_ms=signature_delay_ms,
        configure_node=configure,
    )
    try:
        await sandbox.start()
        primary_id = await sandbox.wait_for_primary()
        primary = next(n for n in sandbox.nodes if n.node_id == primary_id)
        backups = tuple(
            p for n in sandbox.nodes if n is not primary for p in _pids(n.ports).values()
        )
        cert, key = sandbox.user_paths(0)
        yield Target(
            primary.url,
            sandbox.service_cert_path,
            cert,
            key,
            nodes,
            _pids(primary.ports),
            backups,
            frontends,
        )
    finally:
        await asyncio.to_thread(sandbox.stop)


# --- measuring -----------------------------------------------------------------------------------


def _us(cpu_s: float | None, count: int) -> float | None:
    return None if cpu_s is None or count <= 0 else round(cpu_s * 1e6 / count, 1)


class CpuMeter:
    """CPU (user + system, /proc) used by some processes between two points in time."""

    def __init__(self, groups: dict[str, tuple[int, ...]]) -> None:
        self.groups = groups
        self.before = self._read()

    def _read(self) -> dict[str, float | None]:
        now: dict[str, float | None] = {}
        for name, pids in self.groups.items():
            values = [bench.process_cpu_s(p) for p in pids]
            now[name] = None if not values or None in values else sum(v or 0.0 for v in values)
        return now

    def used_s(self) -> dict[str, float | None]:
        after = self._read()
        return {
            n: None if self.before[n] is None or after[n] is None else after[n] - self.before[n]  # type: ignore[operator]
            for n in after
        }


@dataclass(frozen=True, slots=True)
class LoadPhase:
    """What a load generator did in one phase: 2xx answers, errors, its own CPU."""

    ok: int
    errors: int
    first_error: str | None
    elapsed_s: float  # the generator's own measured time
    loadgen_cpu_s: float | None
    txids: tuple[TxId, ...] = ()  # known with the python generator only
    latency_ms: dict[str, float | None] = field(default_factory=dict)


class LoadGenerator:
    """Runs one phase of load with `ab` or the Python client, the same way for every target."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.name: str = args.load_generator
        self.clients: int = args.clients
        self.duration_s: float = args.duration_s
        self.workdir = workdir
        self.body_path = workdir / "body.json"
        self.body_path.write_bytes(BODY)
        self.ab = bench_ab.find_ab() if self.name == "ab" else ""

    async def run(self, url: str, cert: Path, key: Path, ssl_ctx: Any) -> LoadPhase:
        if self.name == "ab":
            pem = bench_ab.client_pem(cert, key, self.workdir / "ab_client.pem")
            cmd = bench_ab.ab_command(
                self.ab,
                url,
                concurrency=self.clients,
                duration_s=self.duration_s,
                client_pem_path=pem,
                body_path=self.body_path,
            )
            run = await bench_ab.run_ab(cmd, self.workdir, duration_s=self.duration_s)
            r = run.report
            errors = r.failed + r.non_2xx
            first = f"ab: {r.failed} failed, {r.non_2xx} non-2xx" if errors else None
            pct = {f"p{p}_ms": float(v) for p, v in r.percentiles_ms if p in (50, 90, 99)}
            return LoadPhase(r.ok, errors, first, r.time_taken_s, run.cpu_s, (), pct)
        cpu_before = time.process_time()
        load = await bench.run_load(url, ssl_ctx, clients=self.clients, duration_s=self.duration_s)
        lat = {f"p{p}_ms": bench.percentile_ms(load.latencies_ms, p) for p in (50, 90, 99)}
        return LoadPhase(
            load.requests_ok,
            load.errors,
            load.first_error,
            load.elapsed_s,
            time.process_time() - cpu_before,
            load.txids,
            lat,
        )


@dataclass(frozen=True, slots=True)
class CeilingPhase:
    req_per_s: float
    server_us_per_req: float | None
    loadgen_us_per_req: float | None
    errors: int
    first_error: str | None


async def measure_ceiling(
    server: bench.CeilingServer, gen: LoadGenerator, label: str
) -> CeilingPhase:
    err.print(f"ceiling {label}: {gen.name}, {gen.clients} connections, {gen.duration_s:g} s")
    meter = CpuMeter({"server": (server.pid,) if server.pid else ()})
    pki = server.pki
    load = await gen.run(
        server.url, pki.client_cert, pki.client_key, bench.ceiling_client_context(pki)
    )
    used = meter.used_s()
    rate = load.ok / load.elapsed_s if load.elapsed_s > 0 else 0.0
    err.print(f"  ceiling {rate:,.0f} req/s")
    return CeilingPhase(
        rate,
        _us(used["server"], load.ok),
        _us(load.loadgen_cpu_s, load.ok),
        load.errors,
        load.first_error,
    )


async def node_counters(client: CharterClient) -> dict[str, int]:
    body = await client.get_json("/node/metrics")
    if not isinstance(body, dict):
        return {}
    return {k: v for k, v in body.items() if isinstance(v, int) and not isinstance(v, bool)}


def counters_per_write(
    before: dict[str, int], after: dict[str, int], writes: int
) -> dict[str, float]:
    """The change of each monotonic counter of /node/metrics per committed write."""
    monotonic = (
        "requests",
        "writes",
        "errors",
        "signatures",
        "light_load_signatures",
        "rollbacks",
        "gc_collections",
        "gc_pause_us",
        "ready_turns",
        "peer_messages_sent",
        "peer_messages_received",
    )
    return {
        k: round((after[k] - before[k]) / writes, 4)
        for k in monotonic
        if k in before and k in after and writes > 0
    }


def receipt_sample(load: LoadPhase, start: TxId, end: TxId, count: int) -> list[TxId]:
    """Committed transactions of the phase to fetch receipts for, spread over the phase."""
    if load.txids:
        inside = [t for t in load.txids if t.view == end.view and start.seqno < t.seqno < end.seqno]
        return bench.sample_evenly(inside, count)
    # ab does not report tx ids: every seqno between the committed markers is a committed
    # transaction of that view (a write of the load or a signature), and has a receipt.
    span = [TxId(end.view, s) for s in range(start.seqno + 1, end.seqno)]
    return bench.sample_evenly(span, count)


async def measure_node(
    target: Target, args: argparse.Namespace, gen: LoadGenerator, profile: Path | None
) -> dict[str, Any]:
    ssl_ctx = build_ssl_context(target.service_cert, target.user_cert, target.user_key)
    async with CharterClient(
        target.url, target.service_cert, cert_path=target.user_cert, key_path=target.user_key
    ) as client:
        start = await bench_commit.marker_write(client, "start")
        await bench_commit.wait_committed(client, start)
        counters_before = await node_counters(client)
        err.print(f"{target.nodes} node(s): {gen.name}, {gen.clients} connections, "
                  f"{gen.duration_s:g} s of writes")  # fmt: skip
        groups = {name: (pid,) for name, pid in target.pids.items()}
        groups["backups"] = target.backup_pids
        groups |= {f"{BACKUP_PROCESS}{pid}": (pid,) for pid in target.backup_pids}
        profiled = dict(target.pids)
        if "enclave" in groups:
            # The enclave process orders; its frontends (if any) serve TLS and HTTP.
            frontends = frontend_pids(target.pids["enclave"])
            groups["ordering"] = groups["enclave"]
            groups["frontends"] = frontends
            groups["enclave"] = groups["enclave"] + frontends
            profiled |= {f"frontend{i}": pid for i, pid in enumerate(frontends)}
        profiled |= {f"backup{i}": pid for i, pid in enumerate(target.backup_pids)}
        profilers = [
            start_profiler(name, pid, target.nodes, profile, args.duration_s)
            for name, pid in profiled.items()
        ]
        meter = CpuMeter(groups)
        started_s = time.monotonic()
        try:
            load = await gen.run(
                target.url + WRITE_PATH, target.user_cert, target.user_key, ssl_ctx
            )
        finally:
            for profiler in profilers:
                if profiler is not None:
                    finish_profiler(profiler)
        end = await bench_commit.marker_write(client, "end")
        committed_at_s = await bench_commit.wait_committed(client, end)
        used = meter.used_s()
        counters_after = await node_counters(client)
        if load.txids:
            committed = sum(
                1 for t in load.txids if t.view == end.view and start.seqno < t.seqno < end.seqno
            )
        else:
            committed = bench_commit.committed_between(start, end, load.ok)
        elapsed_s = max(committed_at_s - started_s, 1e-9)
        rate = committed / elapsed_s
        result: dict[str, Any] = {
            "nodes": target.nodes,
            "clients": gen.clients,
            "load_generator": gen.name,
            "writes_ok": load.ok,
            "write_errors": load.errors,
            "writes_committed": committed,
            "marker_start": str(start),
            "marker_end": str(end),
            "commit_elapsed_s": round(elapsed_s, 3),
            "committed_tx_per_s": round(rate, 1),
            "answered_req_per_s": round(load.ok / load.elapsed_s, 1) if load.elapsed_s else None,
            **{k: None if v is None else round(v, 3) for k, v in load.latency_ms.items()},
            # The primary's processes; the backups' together (they also share the cores).
            "frontends": target.frontends,
            "frontend_processes": len(groups.get("frontends", ())),
            "enclave_us_per_write": _us(used.get("enclave"), committed),
            "ordering_us_per_write": _us(used.get("ordering"), committed),
            "frontends_us_per_write": _us(used.get("frontends"), committed),
            "host_us_per_write": _us(used.get("host"), committed),
            "backups_us_per_write": _us(used["backups"], committed) if target.backup_pids else None,
            "loadgen_us_per_write": _us(load.loadgen_cpu_s, committed),
            "node_counters_per_write": counters_per_write(
                counters_before, counters_after, committed
            ),
        }
        busiest = max(
            (v for k, v in used.items() if k.startswith(BACKUP_PROCESS) and v is not None),
            default=None,
        )
        result["busiest_backup_process_us_per_write"] = _us(busiest, committed)
        result["own_cores_limit_writes_per_s"] = own_cores_limit(result)
        if target.frontends:
            result["projection_writes_per_s"] = projection(
                result["ordering_us_per_write"],
                result["frontends_us_per_write"],
                result["host_us_per_write"],
            )
        if load.first_error:
            result["first_error"] = load.first_error
        if committed == 0:
            raise RuntimeError(f"no write was committed ({load.first_error or 'no answer'})")
        sample = receipt_sample(load, start, end, args.receipts)
        receipts = await bench.fetch_and_verify_receipts(
            client, sample, concurrency=min(gen.clients, RECEIPT_CONCURRENCY_MAX)
        )
        per_s = receipts.per_s
        result.update(
            receipts_verified=receipts.verified,
            receipts_failed=receipts.failed,
            receipts_per_s=round(per_s, 1) if per_s is not None else None,
        )
        if receipts.first_error:
            result["receipt_first_error"] = receipts.first_error
        result.update(await measure_latency(target, args, client, ssl_ctx, rate, gen))
    return result


async def measure_latency(
    target: Target,
    args: argparse.Namespace,
    watcher: CharterClient,
    ssl_ctx: Any,
    max_rate_per_s: float,
    gen: LoadGenerator,
) -> dict[str, Any]:
    """Commit latency with a paced client at half the committed rate just measured."""
    if args.latency_duration_s <= 0:
        return {"p99_commit_ms_at_half_load": None}
    rate = max_rate_per_s / 2
    clients = min(args.clients, LATENCY_CLIENTS_MAX)
    err.print(f"{target.nodes} node(s): commit latency at {rate:,.0f} writes/s "
              f"(half load), {args.latency_duration_s:g} s, {args.paced_client} client")  # fmt: skip
    if args.paced_exe is not None:
        out = gen.workdir / "paced.events"
        cmd = bench_paced.command(
            args.paced_exe,
            target.url + WRITE_PATH,
            watch_path="/node/commit",
            service_cert=target.service_cert,
            cert=target.user_cert,
            key=target.user_key,
            rate_per_s=rate,
            duration_s=args.latency_duration_s,
            clients=clients,
            out=out,
        )
        native = await bench_paced.run_native(
            cmd, out, rate_per_s=rate, duration_s=args.latency_duration_s
        )
        paced, client_cpu_s = native.result, native.cpu_s
    else:
        client_cpu_before_s = time.process_time()
        paced = await bench_commit.run_paced(
            target.url + WRITE_PATH,
            ssl_ctx,
            watcher,
            rate_per_s=rate,
            duration_s=args.latency_duration_s,
            clients=clients,
        )
        client_cpu_s = time.process_time() - client_cpu_before_s
    result: dict[str, Any] = {
        "paced_client": args.paced_client,
        "half_load_target_per_s": round(rate, 1),
        "half_load_achieved_per_s": round(paced.achieved_rate_per_s, 1),
        # Below 95 % of the target the client or the node fell behind: the latencies then
        # include that queueing (see the answer latencies) and are not those of half load.
        "half_load_reached": paced.achieved_rate_per_s >= HALF_LOAD_REACHED_FRACTION * rate,
        "half_load_client_us_per_write": _us(client_cpu_s, paced.writes_ok),
        "half_load_writes_committed": len(paced.commit_latencies_ms),
        "half_load_errors": paced.errors,
        "p50_commit_ms_at_half_load": paced.commit_ms(50),
        "p99_commit_ms_at_half_load": paced.commit_ms(99),
        "p50_answer_ms_at_half_load": paced.answer_ms(50),
        "p99_answer_ms_at_half_load": paced.answer_ms(99),
    }
    if paced.first_error:
        result["half_load_first_error"] = paced.first_error
    return result


def failed_run(nodes: int, args: argparse.Namespace, error: BaseException) -> dict[str, Any]:
    message = f"{type(error).__name__}: {error}".strip()
    return {
        "nodes": nodes,
        "clients": args.clients,
        "load_generator": args.load_generator,
        "committed_tx_per_s": None,
        "ceiling_ratio": None,
        "p99_commit_ms_at_half_load": None,
        "enclave_us_per_write": None,
        "host_us_per_write": None,
        "error": message[-2000:],
    }


# --- optional profiling of the primary's enclave with py-spy (for developers) ----------------------


def start_profiler(
    name: str, pid: int, nodes: int, directory: Path | None, duration_s: float
) -> tuple[subprocess.Popen[bytes], Path] | None:
    """py-spy the node process `name` during the load (collapsed stacks in `directory`)."""
    if directory is None:
        return None
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        err.print("[yellow]--profile-dir: py-spy not found (pip install py-spy); not profiling")
        return None
    raw = directory / f"{name}-{nodes}node-{pid}.txt"
    cmd = [
        exe,
        "record",
        "-p",
        str(pid),
        "-d",
        str(int(duration_s) + 1),
        "-r",
        str(PROFILE_RATE_HZ),
    ]
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


def frontend_counts(args: argparse.Namespace) -> list[int | None]:
    """The `frontends` values to measure in turn (None: leave the node's default)."""
    if args.frontends is None:
        return [None]
    counts = [int(x) for x in args.frontends.split(",") if x.strip()]
    if not counts or any(not 0 <= k <= FRONTENDS_MAX for k in counts):
        raise SystemExit(f"bench: --frontends values must be in 0..{FRONTENDS_MAX}")
    return list(counts)


def node_counts(args: argparse.Namespace) -> list[int]:
    if args.nodes is not None:
        counts = [args.nodes]
    else:
        spec = args.compare_nodes or DEFAULT_NODE_COUNTS
        counts = [int(x) for x in spec.split(",") if x.strip()]
    if not counts or any(not 1 <= n <= NODES_MAX for n in counts):
        raise SystemExit(f"bench: node counts must be in 1..{NODES_MAX}")
    return counts


async def measure_rounds(
    target: Target,
    args: argparse.Namespace,
    gen: LoadGenerator,
    server: bench.CeilingServer,
    ceilings: list[CeilingPhase],
) -> dict[str, Any]:
    """`--rounds` node phases on one network, each followed by a ceiling phase.

    On a shared machine the available CPU drifts; dividing every node phase by the mean of
    the ceiling phases just before and after it keeps the ratio honest, and the round with
    the median ratio is the one reported (all its figures from the same minutes).
    """
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        before = ceilings[-1]
        profile = args.profile_dir if i == 0 else None
        result = await measure_node(target, args, gen, profile)
        after = await measure_ceiling(server, gen, f"(after {target.nodes} node)")
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


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 1) if known else None


def attach_ceiling(result: dict[str, Any], around: list[CeilingPhase]) -> None:
    rate = _mean([c.req_per_s for c in around if c.req_per_s > 0])
    committed = result.get("committed_tx_per_s")
    result["ceiling_req_per_s"] = rate
    result["ceiling_ratio"] = round(committed / rate, 3) if committed and rate else None
    result["ceiling_server_us_per_req"] = _mean([c.server_us_per_req for c in around])
    result["ceiling_loadgen_us_per_req"] = _mean([c.loadgen_us_per_req for c in around])
    # CPU per request, ceiling server ÷ primary node (enclave + host): what ceiling_ratio
    # would be if CPU were the only limit; steady when other work shares the cores.
    server_us = result["ceiling_server_us_per_req"]
    enclave_us, host_us = result.get("enclave_us_per_write"), result.get("host_us_per_write")
    ok = server_us and enclave_us and host_us
    result["cpu_ceiling_ratio"] = round(server_us / (enclave_us + host_us), 3) if ok else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """A ceiling phase, then each node count's rounds (see `measure_rounds`)."""
    runs: list[dict[str, Any]] = []
    ceilings: list[CeilingPhase] = []
    with tempfile.TemporaryDirectory(prefix="charter-bench-") as tmp_name:
        tmp = Path(tmp_name)
        workspace_root = args.workspace.resolve() if args.workspace else tmp
        gen = LoadGenerator(args, tmp)
        pki = bench.make_ceiling_pki(tmp / "ceiling")
        with bench.CeilingServer(pki, loop=args.loop) as server:
            ceilings.append(await measure_ceiling(server, gen, "(before)"))
            if args.network is not None:
                try:
                    target = await target_from_network(args.network)
                    runs.append(await measure_rounds(target, args, gen, server, ceilings))
                except Exception as e:
                    runs.append(failed_run(0, args, e))
            else:
                for nodes in node_counts(args):
                    for frontends in frontend_counts(args):
                        name = f"net{nodes}" if frontends is None else f"net{nodes}-fe{frontends}"
                        try:
                            async with own_network(
                                nodes,
                                workspace_root / name,
                                args.signature_tx_count,
                                args.signature_delay_ms,
                                frontends,
                                args.signature_light_load_delay_ms,
                                args.snapshot_tx_count,
                            ) as target:
                                runs.append(
                                    await measure_rounds(target, args, gen, server, ceilings)
                                )
                        except Exception as e:
                            runs.append(failed_run(nodes, args, e) | {"frontends": frontends})
    return summarise(args, runs, ceilings)


def summarise(
    args: argparse.Namespace, runs: list[dict[str, Any]], ceilings: list[CeilingPhase]
) -> dict[str, Any]:
    assert runs and ceilings
    result: dict[str, Any] = dict(runs[0])
    rates = [c.req_per_s for c in ceilings if c.req_per_s > 0]
    result["ceiling_phases_req_per_s"] = [round(r, 1) for r in rates]
    result["ceiling_errors"] = sum(c.errors for c in ceilings)
    first_error = next((c.first_error for c in ceilings if c.first_error), None)
    if first_error:
        result["ceiling_first_error"] = first_error
    if result.get("ceiling_req_per_s") is None:  # a failed headline run: the run's mean
        result["ceiling_req_per_s"] = _mean(list(rates))
    first, last = runs[0], runs[-1]

    def ratio(name: str, frontends: int | None = first.get("frontends")) -> float | None:
        """The largest node count's figure over the smallest's, both with `frontends`."""
        same = [r for r in runs if r.get("frontends") == frontends]
        a, b = same[0].get(name), same[-1].get(name)
        more_nodes = same[0].get("nodes") != same[-1].get("nodes")
        return round(b / a, 3) if a and b and more_nodes else None

    result["replication_ratio"] = ratio("committed_tx_per_s")
    # The same, each divided by its own ceiling first: robust to load drift between them.
    result["replication_ratio_vs_ceiling"] = ratio("ceiling_ratio")
    # A projection: the same ratio were each process on a core of its own, as each node
    # is on machines of its own in a deployment (here all of them share the two cores).
    result["replication_ratio_own_cores"] = ratio("own_cores_limit_writes_per_s")
    # The latency target is about replication: the headline is the largest node count's.
    result["p99_commit_ms_at_half_load"] = last.get("p99_commit_ms_at_half_load")
    result["p99_commit_ms_at_half_load_by_nodes"] = {
        str(r["nodes"]): r.get("p99_commit_ms_at_half_load") for r in runs
    }
    if args.frontends is not None:
        # Each `frontends` value side by side, and as a ratio of the first one's rate.
        base = first.get("committed_tx_per_s")
        result["by_frontends"] = [
            {
                k: r.get(k)
                for k in (
                    "nodes",
                    "frontends",
                    "committed_tx_per_s",
                    "ceiling_ratio",
                    "enclave_us_per_write",
                    "ordering_us_per_write",
                    "frontends_us_per_write",
                    "host_us_per_write",
                    "projection_writes_per_s",
                )
            }
            | {
                "rate_vs_first": round(r["committed_tx_per_s"] / base, 3)
                if base and r.get("committed_tx_per_s")
                else None
            }
            for r in runs
        ]
        result["replication_ratio_by_frontends"] = {
            str(k): {
                "measured": ratio("committed_tx_per_s", k),
                "own_cores": ratio("own_cores_limit_writes_per_s", k),
            }
            for k in dict.fromkeys(r.get("frontends") for r in runs)
        }
    result["load_generator"] = args.load_generator
    result["paced_client"] = args.paced_client
    result["duration_s"] = args.duration_s
    if args.network is None:
        light = args.signature_light_load_delay_ms
        result["signatures"] = {
            "tx_count": args.signature_tx_count,
            "delay_ms": args.signature_delay_ms,
            # The node's default when not set (only ever shorter than delay_ms).
            "light_load_delay_ms": SignaturesConfig().light_load_delay_ms
            if light is None
            else light,
        }
        result["snapshot_tx_count"] = (
            SnapshotsConfig().tx_count if args.snapshot_tx_count is None else args.snapshot_tx_count
        )
    result["loop"] = args.loop  # of the Python load generator and the ceiling server
    if len(runs) > 1:
        result["runs"] = runs
    result["command"] = " ".join(["scripts/bench.py", *args.argv])
    with contextlib.suppress(OSError):
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    return result


def show_table(result: dict[str, Any]) -> None:
    runs = result.get("runs") or [result]
    table = Table(title=f"Charter node benchmark ({result['load_generator']}, "
                  f"{result['clients']} connections, {result['duration_s']:g} s)")  # fmt: skip
    cols = ("nodes", "frontends", "committed tx/s", "ceiling req/s", "ratio", "enclave µs/w",
            "ordering µs/w", "host µs/w", "loadgen µs/w", "p99 commit ms @½", "receipts/s")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    keys = ("nodes", "frontends", "committed_tx_per_s", "ceiling_req_per_s", "ceiling_ratio",
            "enclave_us_per_write", "ordering_us_per_write", "host_us_per_write",
            "loadgen_us_per_write",
            "p99_commit_ms_at_half_load", "receipts_per_s")  # fmt: skip
    for r in runs:
        table.add_row(*(fmt(r.get(k)) for k in keys))
    out.print(table)
    for r in runs:
        if r.get("error"):
            out.print(f"[red]{r['nodes']} node(s) failed:[/red] {r['error'][:500]}", markup=True)
    if result.get("replication_ratio") is not None:
        out.print(f"replication ratio (tx/s {runs[-1]['nodes']} nodes ÷ {runs[0]['nodes']} node): "
                  f"{result['replication_ratio']:g}")  # fmt: skip
    if result.get("replication_ratio_own_cores") is not None:
        out.print("projected, each process on a core of its own (not measured): "
                  f"{result['replication_ratio_own_cores']:g}")  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=None, help="one node count (else --compare-nodes)")
    p.add_argument("--compare-nodes", default=None, help="node counts measured in turn (1,3)")
    p.add_argument(
        "--load-generator", choices=LOAD_GENERATORS, default="ab", help="ab (default) or python"
    )
    p.add_argument("--clients", type=int, default=64, help="concurrent connections (64)")
    p.add_argument("--duration-s", type=float, default=10.0, help="load time per phase (10)")
    p.add_argument(
        "--latency-duration-s", type=float, default=5.0, help="paced half-load phase (5; 0: none)"
    )
    p.add_argument("--network", type=Path, default=None, help="drive a running network.json")
    p.add_argument("--out", type=Path, default=Path("bench_results.json"), help="results file")
    p.add_argument("--receipts", type=int, default=200, help="receipts to fetch+verify (200)")
    p.add_argument("--rounds", type=int, default=1, help="node phases per count; median (1)")
    p.add_argument(
        "--loop",
        choices=bench.LOOP_NAMES,
        default="auto",
        help="event loop of the Python client and ceiling (auto: uvloop if installed, as nodes)",
    )
    p.add_argument("--workspace", type=Path, default=None, help="keep sandbox workspaces here")
    p.add_argument(
        "--signature-delay-ms",
        type=int,
        default=None,
        help="the own network's signatures.delay_ms (50, the sandbox's)",
    )
    p.add_argument(
        "--signature-tx-count",
        type=int,
        default=None,
        help="the own network's signatures.tx_count (100, the sandbox's)",
    )
    p.add_argument(
        "--snapshot-tx-count",
        type=int,
        default=None,
        help="the own network's snapshots.tx_count (default: the node's, 10000)",
    )
    p.add_argument(
        "--signature-light-load-delay-ms",
        type=int,
        default=None,
        help="the own network's signatures.light_load_delay_ms (default: the node's, 5; 0: off)",
    )
    p.add_argument(
        "--profile-dir",
        type=Path,
        default=None,
        help="py-spy the primary's processes (enclave, frontends, host) and the backups'",
    )
    p.add_argument(
        "--frontends",
        default=None,
        metavar="K[,K...]",
        help="the nodes' frontends option, each value measured in turn (default: the node's)",
    )
    p.add_argument(
        "--paced-client",
        choices=PACED_CLIENTS,
        default="auto",
        help="the half-load phase's writer: native (C; auto's choice with ab) or python",
    )
    p.add_argument(
        "--wan",
        metavar="PROFILE",
        default=None,
        help="measure a namespaced 3-node network under a WAN profile instead (bench_wan.py)",
    )
    args = p.parse_args(argv)
    signature_flags = (
        args.signature_delay_ms,
        args.signature_tx_count,
        args.signature_light_load_delay_ms,
        args.snapshot_tx_count,
    )
    if args.network is not None and signature_flags != (None, None, None, None):
        p.error(
            "--signature-* and --snapshot-tx-count configure the bench's own network, "
            "not a running --network"
        )
    if args.snapshot_tx_count is not None and args.snapshot_tx_count < 1:
        p.error("--snapshot-tx-count must be at least 1")
    args.signature_delay_ms = 50 if args.signature_delay_ms is None else args.signature_delay_ms
    args.signature_tx_count = 100 if args.signature_tx_count is None else args.signature_tx_count
    if not 1 <= args.signature_delay_ms <= SIGNATURE_SETTING_MAX:
        p.error(f"--signature-delay-ms must be in 1..{SIGNATURE_SETTING_MAX}")
    if not 1 <= args.signature_tx_count <= SIGNATURE_SETTING_MAX:
        p.error(f"--signature-tx-count must be in 1..{SIGNATURE_SETTING_MAX}")
    light = args.signature_light_load_delay_ms
    if light is not None and not 0 <= light <= args.signature_delay_ms:
        p.error("--signature-light-load-delay-ms must be in 0..--signature-delay-ms")
    if not 1 <= args.clients <= bench_ab.AB_CONCURRENCY_MAX:
        p.error(f"--clients must be in 1..{bench_ab.AB_CONCURRENCY_MAX}")
    if not 0 < args.duration_s <= bench.DURATION_S_MAX:
        p.error(f"--duration-s must be in (0, {bench.DURATION_S_MAX:g}]")
    if args.load_generator == "ab" and args.duration_s < 1:
        p.error("--duration-s must be at least 1 with ab (its time limit is whole seconds)")
    if not 0 <= args.latency_duration_s <= bench.DURATION_S_MAX:
        p.error(f"--latency-duration-s must be in [0, {bench.DURATION_S_MAX:g}]")
    if not 0 <= args.receipts <= bench.RECEIPTS_MAX:
        p.error(f"--receipts must be in 0..{bench.RECEIPTS_MAX}")
    if not 1 <= args.rounds <= ROUNDS_MAX:
        p.error(f"--rounds must be in 1..{ROUNDS_MAX}")
    if args.network is not None and (args.nodes is not None or args.compare_nodes):
        p.error("--nodes and --compare-nodes start their own networks, not with --network")
    if args.nodes is not None and args.compare_nodes:
        p.error("give --nodes N or --compare-nodes A,B, not both")
    node_counts(args)
    if args.frontends is not None and args.network is not None:
        p.error("--frontends configures the bench's own network, not a running --network")
    try:
        frontend_counts(args)
    except (SystemExit, ValueError) as e:
        p.error(str(e) or "--frontends takes integers such as 0,1,2")
    if args.load_generator == "ab":
        try:
            bench_ab.find_ab()
        except bench_ab.AbError as e:
            p.error(str(e))
    if args.paced_client == "auto":
        args.paced_client = "native" if args.load_generator == "ab" else "python"
    args.paced_exe = None
    if args.paced_client == "native" and args.latency_duration_s > 0:
        try:
            args.paced_exe = bench_paced.build()
        except (bench_paced.PacedToolError, OSError, subprocess.TimeoutExpired) as e:
            p.error(str(e))
    try:
        args.loop = bench.resolve_loop(args.loop)
    except ValueError as e:
        p.error(str(e))
    args.argv = argv
    return args


def main(argv: list[str]) -> int:
    if any(a == "--wan" or a.startswith("--wan=") for a in argv):
        # What distance costs: a namespaced 3-node network per WAN profile (bench_wan.py).
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_wan

        return int(bench_wan.main(argv))
    args = parse_args(argv)
    try:
        result = bench.run_on(args.loop, run(args))
    except KeyboardInterrupt:
        # asyncio.run cancelled the run: every sandbox, ab and the ceiling server were stopped.
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
