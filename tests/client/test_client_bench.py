"""`charter bench` / scripts/bench.py against a real one-node network and a real ceiling.

The end-to-end test runs the whole benchmark as a user would (through the `charter` command,
which runs scripts/bench.py) for about 2 s with 4 clients, and checks the promises of its
last stdout line: every field present, figures positive and ordered, the ratio consistent
with the figures it is computed from, and the results file equal to that line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from charter import bench
from charter.identity import TxId

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRED_FIELDS = (
    "committed_tx_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "ceiling_req_per_s",
    "ceiling_ratio",
    "receipts_per_s",
    "nodes",
    "clients",
)


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_charter_bench_last_line_reports_sane_committed_throughput(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    charter = Path(sys.executable).parent / "charter"  # the installed console script
    cmd = [str(charter), "bench", "--nodes", "1", "--clients", "4"]
    cmd += ["--duration-s", "2", "--receipts", "20", "--out", str(results)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=55)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    for name in REQUIRED_FIELDS:
        assert last.get(name) is not None, f"{name} missing or null in {last}"
    assert last["nodes"] == 1 and last["clients"] == 4
    assert 0 < last["p50_ms"] <= last["p90_ms"] <= last["p99_ms"] < 10_000
    assert 0 < last["writes_committed"] <= last["writes_ok"]
    assert last["committed_tx_per_s"] > 0 and last["ceiling_req_per_s"] > 0
    expected_ratio = last["committed_tx_per_s"] / last["ceiling_req_per_s"]
    assert last["ceiling_ratio"] == pytest.approx(expected_ratio, rel=0.01)
    assert last["receipts_verified"] == 20 and last["receipts_failed"] == 0
    assert last["receipts_per_s"] > 0
    assert json.loads(results.read_text()) == last


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
    cmd += ["--clients", "2", "--duration-s", "0.5", "--out", str(tmp_path / "r.json")]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=55)
    assert done.returncode == 1
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert "127.0.0.1" in last["error"]
    for name in ("committed_tx_per_s", "p50_ms", "p99_ms", "receipts_per_s", "ceiling_ratio"):
        assert name in last and last[name] is None
    assert last["ceiling_req_per_s"] > 0
    assert last["clients"] == 2


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
