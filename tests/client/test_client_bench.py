"""`charter bench` / scripts/bench.py against a real one-node network and a real ceiling.

The end-to-end test runs the whole benchmark as a user would (through the `charter` command,
which runs scripts/bench.py) for about 2 s with 4 connections (with ab, and with the Python load generator), and checks the promises of its
last stdout line: every field present, figures positive and ordered, the ratio consistent
with the figures it is computed from, and the results file equal to that line.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from client_helpers import UNBOUNDED_ANSWERS

from charter import bench, bench_ab, bench_commit
from charter.identity import TxId

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRED_FIELDS = (
    "committed_tx_per_s",
    "ceiling_req_per_s",
    "ceiling_ratio",
    "p99_commit_ms_at_half_load",
    "enclave_us_per_write",
    "host_us_per_write",
    "load_generator",
    "receipts_per_s",
    "nodes",
    "clients",
)


def _run_bench(tmp_path: Path, *extra: str) -> dict[str, Any]:
    results = tmp_path / "results.json"
    charter = Path(sys.executable).parent / "charter"  # the installed console script
    cmd = [str(charter), "bench", "--nodes", "1", "--clients", "4", "--duration-s", "2"]
    cmd += ["--latency-duration-s", "1", "--receipts", "20", "--out", str(results), *extra]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    last: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads(results.read_text()) == last
    return last


def _check_committed_figures(last: dict[str, Any]) -> None:
    for name in REQUIRED_FIELDS:
        assert last.get(name) is not None, f"{name} missing or null in {last}"
    # One node count: nothing to compare replication with, and the field says so.
    assert "replication_ratio" in last and last["replication_ratio"] is None
    assert last["nodes"] == 1 and last["clients"] == 4
    start, end = TxId.parse(last["marker_start"]), TxId.parse(last["marker_end"])
    # Every write counted lies strictly between the two committed markers, in their view.
    assert start.view == end.view
    assert 0 < last["writes_committed"] <= last["writes_ok"]
    assert last["writes_committed"] <= end.seqno - start.seqno - 1
    assert last["committed_tx_per_s"] == pytest.approx(
        last["writes_committed"] / last["commit_elapsed_s"], rel=0.01
    )
    expected_ratio = last["committed_tx_per_s"] / last["ceiling_req_per_s"]
    assert last["ceiling_ratio"] == pytest.approx(expected_ratio, rel=0.01)
    assert last["enclave_us_per_write"] > 0 and last["loadgen_us_per_write"] > 0
    assert last["ceiling_server_us_per_req"] > 0
    assert last["node_counters_per_write"]["writes"] >= 1.0
    assert 0 < last["p50_commit_ms_at_half_load"] <= last["p99_commit_ms_at_half_load"]
    assert last["half_load_writes_committed"] > 0
    assert isinstance(last["half_load_reached"], bool) and last["half_load_client_us_per_write"] > 0
    assert 0 < last["p50_answer_ms_at_half_load"] <= last["p99_answer_ms_at_half_load"]
    assert last["receipts_verified"] == 20 and last["receipts_failed"] == 0


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_bench_with_ab_counts_only_writes_committed_between_its_markers(tmp_path: Path) -> None:
    last = _run_bench(tmp_path)
    assert last["load_generator"] == "ab" and last["paced_client"] == "native"
    _check_committed_figures(last)
    # ab answers all count: every 2xx write between the committed markers is committed.
    assert last["writes_committed"] == last["writes_ok"]


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_bench_keeps_the_python_load_generator(tmp_path: Path) -> None:
    # Also: the network it starts takes the snapshot interval it is given.
    workspace = tmp_path / "ws"
    last = _run_bench(
        tmp_path,
        "--load-generator",
        "python",
        "--snapshot-tx-count",
        "50",
        "--workspace",
        str(workspace),
    )
    assert last["load_generator"] == "python" and last["paced_client"] == "python"
    _check_committed_figures(last)
    assert last["snapshot_tx_count"] == 50
    assert list(workspace.glob("net1/node0/workspace/snapshots/snapshot_*.committed"))


def test_bench_without_ab_says_how_to_install_it(tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "bench.py"), "--nodes", "1"]
    env = {**os.environ, "PATH": str(tmp_path)}  # a PATH with no ab on it
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=55)
    assert done.returncode == 2
    assert "apt-get install apache2-utils" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--network", "n.json", "--compare-nodes", "1,3"], "not with --network"),
        (["--network", "n.json", "--nodes", "1"], "not with --network"),
        (["--nodes", "1", "--compare-nodes", "1,3"], "not both"),
        (["--load-generator", "ab", "--duration-s", "0.5"], "at least 1 with ab"),
        (["--network", "n.json", "--snapshot-tx-count", "5"], "not a running --network"),
        (["--snapshot-tx-count", "0"], "--snapshot-tx-count must be at least 1"),
    ],
)
def test_bench_refuses_options_it_could_not_honour(
    tmp_path: Path, args: list[str], message: str
) -> None:
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "bench.py"), *args]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=55)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.timeout(60)
def test_bench_reports_null_figures_and_the_error_when_the_network_fails(tmp_path: Path) -> None:
    # A network whose node is not on 127.0.0.1 is refused before any request is sent; the
    # ceiling is still measured and the last line still carries every field.
    service_cert = bench.make_ceiling_pki(tmp_path / "pki").ca_cert
    network = tmp_path / "network.json"
    network.write_text(
        json.dumps(
            {
                "service_cert": str(service_cert),
                "nodes": [{"rpc_address": "10.0.0.1:8000"}],
                "users": [{"cert": "u_cert.pem", "key": "u_privk.pem"}],
            }
        )
    )
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "bench.py"), "--network", str(network)]
    cmd += ["--clients", "2", "--duration-s", "1", "--out", str(tmp_path / "r.json")]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=55)
    assert done.returncode == 1
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert "127.0.0.1" in last["error"]
    for name in ("committed_tx_per_s", "ceiling_ratio", "replication_ratio",
                 "p99_commit_ms_at_half_load", "enclave_us_per_write", "host_us_per_write"):  # fmt: skip
        assert name in last and last[name] is None
    assert last["ceiling_req_per_s"] > 0
    assert last["clients"] == 2 and last["load_generator"] == "ab"


# What `ab -k -q -l -c 4 -t 2 ...` printed against the ceiling server (ApacheBench 2.3).
AB_REPORT = """This is ApacheBench, Version 2.3 <$Revision$>

Server Software:        Python/3.11
Document Path:          /app/log/private
Document Length:        Variable

Concurrency Level:      64
Time taken for tests:   5.003 seconds
Complete requests:      16787
Failed requests:        3
Non-2xx responses:      4
Keep-Alive requests:    16787
Requests per second:    3355.46 [#/sec] (mean)

Percentage of the requests served within a certain time (ms)
  50%     15
  90%     28
  99%     57
 100%    434 (longest request)
"""


def test_ab_report_counts_only_2xx_answers_on_working_connections() -> None:
    report = bench_ab.parse_ab_output(AB_REPORT)
    assert (report.complete, report.failed, report.non_2xx) == (16787, 3, 4)
    assert report.ok == 16780 and report.keep_alive == 16787
    assert report.time_taken_s == 5.003
    assert report.ok_per_s == pytest.approx(16780 / 5.003)
    assert report.percentile_ms(50) == 15 and report.percentile_ms(99) == 57


@pytest.mark.parametrize(
    "text",
    [
        AB_REPORT.replace("Complete requests:", "Completed:"),  # a required line missing
        "apr_socket_recv: Connection reset by peer (104)\n",  # ab gave up: no report
        AB_REPORT.replace("Failed requests:        3", "Failed requests:        99999"),
        AB_REPORT + "x" * bench_ab.AB_OUTPUT_BYTES_MAX,  # larger than any real report
    ],
)
def test_ab_report_that_is_not_one_is_a_typed_error(text: str) -> None:
    with pytest.raises(bench_ab.AbError) as e:
        bench_ab.parse_ab_output(text)
    assert e.value.code == "AbOutputInvalid"


def test_ab_command_keeps_alive_with_the_client_certificate(tmp_path: Path) -> None:
    cmd = bench_ab.ab_command(
        "/usr/bin/ab",
        "https://127.0.0.1:9/app/log/private",
        concurrency=64,
        duration_s=10,
        client_pem_path=tmp_path / "c.pem",
        body_path=tmp_path / "b.json",
    )
    assert "-k" in cmd and cmd[cmd.index("-c") + 1] == "64" and cmd[cmd.index("-t") + 1] == "10"
    assert cmd[cmd.index("-E") + 1] == str(tmp_path / "c.pem")
    assert cmd[cmd.index("-p") + 1] == str(tmp_path / "b.json") and cmd[-1].endswith("/private")


def test_writes_are_not_counted_committed_across_a_view_change() -> None:
    with pytest.raises(bench_commit.CommitCheckError, match="view changed"):
        bench_commit.committed_between(TxId(2, 10), TxId(3, 50), 5)
    with pytest.raises(bench_commit.CommitCheckError, match="only 39 seqnos"):
        bench_commit.committed_between(TxId(2, 10), TxId(2, 50), 40)
    assert bench_commit.committed_between(TxId(2, 10), TxId(2, 50), 39) == 39


def test_commit_latency_runs_from_when_a_write_was_due_to_the_first_commit_seen() -> None:
    sent = [(1.0, TxId(2, 5)), (1.5, TxId(2, 8)), (1.6, TxId(1, 9)), (1.7, TxId(2, 30))]
    observations = [(1.2, 2, 4), (1.25, 2, 6), (2.0, 2, 12), (2.5, 2, 31)]
    latencies = bench_commit.commit_latencies_ms(sent, observations, TxId(2, 31))
    # 5: first seen at 6 (1.25 s); 8: at 12 (2.0 s); 1.9 is of another view: not counted;
    # 30: at 31 (2.5 s).
    assert latencies == pytest.approx((250.0, 500.0, 800.0))
    # With when each counted write was due (the snapshot bench's split by time).
    points = bench_commit.commit_points(sent, observations, TxId(2, 31))
    assert [due for due, _ in points] == [1.0, 1.5, 1.7]
    assert [latency for _, latency in points] == pytest.approx(list(latencies))


def test_percentile_is_a_latency_that_was_seen() -> None:
    latencies = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert bench.percentile_ms(latencies, 50) == 3.0
    assert bench.percentile_ms(latencies, 99) == 5.0
    assert bench.percentile_ms(latencies, 1) == 1.0
    assert bench.percentile_ms([], 50) is None


def test_receipt_sample_spans_the_whole_run() -> None:
    txids = [TxId(2, s) for s in range(100, 0, -1)]
    sample = bench.sample_evenly(txids, 10)
    assert len(sample) == 10
    assert sample[0].seqno == 1 and sample[-1].seqno >= 90
    assert [t.seqno for t in sample] == sorted({t.seqno for t in sample})
    assert bench.sample_evenly(txids[:3], 10) == sorted(txids[:3], key=lambda t: t.seqno)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_ceiling_server_answers_keep_alive_clients_with_a_txid(
    tmp_path: Path, loop: str
) -> None:
    pki = bench.make_ceiling_pki(tmp_path)
    with bench.CeilingServer(pki, loop=bench.resolve_loop(loop)) as server:
        load = await bench.run_load(
            server.url, bench.ceiling_client_context(pki), clients=2, duration_s=0.3
        )
    assert server.process is None  # stopped on exit
    assert load.errors == 0 and load.requests_ok > 0
    assert len(load.txids) == load.requests_ok and load.max_seqno == 1
    assert load.req_per_s > 0 and len(load.latencies_ms) == load.requests_ok


async def test_load_stops_at_the_request_budget(tmp_path: Path) -> None:
    pki = bench.make_ceiling_pki(tmp_path)
    with bench.CeilingServer(pki) as server:
        load = await bench.run_load(
            server.url,
            bench.ceiling_client_context(pki),
            clients=3,
            duration_s=30,
            requests_per_client_max=5,
        )
    assert load.requests_ok == 15
    assert load.elapsed_s < 10


async def test_paced_client_connection_reads_status_and_txid_over_keep_alive_tls(
    tmp_path: Path,
) -> None:
    pki = bench.make_ceiling_pki(tmp_path)
    with bench.CeilingServer(pki) as server:
        conn = await bench_commit._Connection.open(server.url, bench.ceiling_client_context(pki))
        try:
            for _ in range(3):  # the same connection, answer after answer
                assert await conn.post(b'{"id": 1, "msg": "x"}') == (200, "1.1")
        finally:
            conn.close()


@pytest.mark.parametrize(
    ("answer", "message"),
    UNBOUNDED_ANSWERS,
)
async def test_paced_client_refuses_answers_it_cannot_bound(answer: bytes, message: str) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, limit=bench_commit.RESPONSE_HEAD_BYTES_MAX
    )
    conn = bench_commit._Connection(reader, writer, f"127.0.0.1:{port}", "/app/log/private")
    try:
        with pytest.raises(bench_commit.PacedClientError, match=message):
            await conn.post(b"{}")
    finally:
        conn.close()
        server.close()
        await server.wait_closed()


def test_snapshot_stall_bench_finds_the_snapshots_the_primary_started_in_its_log() -> None:
    import datetime
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_snapshot_stall", REPO_ROOT / "scripts" / "bench_snapshot_stall.py"
    )
    assert spec is not None and spec.loader is not None
    stall = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stall)
    log = (
        "2026-12-06 22:50:42,933 enclave INFO x event=snapshot_encoding seqno=10000 role=primary\n"
        "2026-12-06 22:50:42,939 enclave INFO x event=snapshot_encoding seqno=10000 role=backup\n"
        "2026-12-06 22:50:43,020 enclave INFO x event=snapshot_committed seqno=10000\n"
        "2026-12-06 22:50:46,138 enclave INFO x event=snapshot_encoding seqno=20006 role=primary\n"
    )
    local = datetime.datetime(2026, 12, 6, 22, 50, 42, 933_000).timestamp()
    assert stall.snapshot_starts(log) == pytest.approx([local, local + 3.205])


def _bench_script() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_script", REPO_ROOT / "scripts" / "bench.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_replication_ratios_compare_runs_with_the_same_frontends_and_project_own_cores() -> None:
    """With a list of frontends values, each ratio compares the node counts measured with
    the same value; the own-cores projection is bounded by the busiest process."""
    script = _bench_script()

    def run(nodes: int, frontends: int, rate: float, ordering: float, **more: float) -> Any:
        r = {"nodes": nodes, "frontends": frontends, "frontend_processes": frontends}
        r |= {"committed_tx_per_s": rate, "ordering_us_per_write": ordering}
        r |= {"host_us_per_write": 30.0, **more}
        r["own_cores_limit_writes_per_s"] = script.own_cores_limit(r)
        return r

    runs = [
        run(1, 0, 4000.0, 250.0),
        run(1, 1, 3600.0, 200.0, frontends_us_per_write=150.0),
        run(3, 0, 2800.0, 300.0, busiest_backup_process_us_per_write=90.0),
        # The frontend is the busiest process here: 1e6 / 240 µs.
        run(3, 1, 2200.0, 230.0, frontends_us_per_write=240.0),
    ]
    assert runs[0]["own_cores_limit_writes_per_s"] == 4000.0
    assert runs[3]["own_cores_limit_writes_per_s"] == round(1e6 / 240.0)
    args = script.argparse.Namespace(
        frontends=[0, 1], load_generator="ab", paced_client="native", duration_s=8.0, network=None,
        signature_light_load_delay_ms=None, signature_tx_count=100, signature_delay_ms=50,
        snapshot_tx_count=None, loop="uvloop", rounds=1, argv=[],
    )  # fmt: skip
    ceilings = [script.CeilingPhase(6000.0, 150.0, 50.0, 0, None)]
    result = script.summarise(args, runs, ceilings)
    assert result["replication_ratio"] == round(2800 / 4000, 3)  # frontends 0 with 0
    by = result["replication_ratio_by_frontends"]
    assert by["1"]["measured"] == round(2200 / 3600, 3)  # not 2200 / 4000
    assert by["0"]["own_cores"] == round(round(1e6 / 300.0) / 4000.0, 3)
    assert by["1"]["own_cores"] == round(round(1e6 / 240.0) / round(1e6 / 200.0), 3)
    assert result["replication_ratio_own_cores"] == by["0"]["own_cores"]
