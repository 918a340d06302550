"""Indexing on real processes: the logging sample's `/app/log/{private,public}/index` over
thousands of writes to a few ids, with a tiny in-memory bound so that most index buckets live
on the host as sealed blobs.

The answers are checked against the ledger files read with CCF's own `ccf.ledger` (for the
public map, whose writes are in clear) and against the transaction ids the writes were given
(for the private map, encrypted in the ledger); the host's blob files must exist and hold no
key in clear; a blob altered on disk gives a clear error, never a wrong answer; and a
restarted node (which rebuilds its indexes from its ledger) answers the same.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import log_tails, make_sandbox, start_sandbox, wait_committed_on, wait_ready

from charter.enclave_app.kv import U64
from charter.identity import TxId
from charter.sandbox import NodeProcess, Sandbox
from charter.sdk import CharterClient

pytestmark = pytest.mark.e2e

BUCKETS_IN_MEMORY = 2
SEQNOS_PER_BUCKET = 256  # the logging sample's
IDS = (7, 8, 9)
WRITES_PER_ID = 700  # of each kind: 2 x 3 x 700 = 4,200 writes
CONCURRENCY = 24
SNAPSHOT_TX_COUNT = 1000  # so that a node joining later starts from a snapshot


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    def tiny_index_memory(i: int, config: dict[str, Any]) -> None:
        config["indexing"] = {"buckets_in_memory": BUCKETS_IN_MEMORY}
        config["snapshots"] = {"tx_count": SNAPSHOT_TX_COUNT}

    sb = make_sandbox(tmp_path_factory.mktemp("e2e-index") / "sb", 1, tiny_index_memory)
    start_sandbox(sb)
    try:
        yield sb
    finally:
        sb.stop()


async def _write_all(sb: Sandbox, node: NodeProcess) -> dict[tuple[str, int], list[int]]:
    """Every write, spread over ids and both maps; returns (kind, id) -> seqnos."""
    jobs = [
        (kind, i, n) for n in range(WRITES_PER_ID) for i in IDS for kind in ("private", "public")
    ]
    written: dict[tuple[str, int], list[int]] = {}
    async with sb.client(node, user=0) as c:

        async def one(kind: str, key: int, n: int) -> tuple[str, int, TxId]:
            r = c.check(await c.post(f"/app/log/{kind}", json={"id": key, "msg": f"m{n}"}))
            assert r.txid is not None
            return kind, key, r.txid

        for start in range(0, len(jobs), CONCURRENCY):
            for kind, key, txid in await asyncio.gather(
                *(one(*job) for job in jobs[start : start + CONCURRENCY])
            ):
                written.setdefault((kind, key), []).append(txid.seqno)
    return {k: sorted(v) for k, v in written.items()}


async def _index(
    c: CharterClient, kind: str, key: int, from_seqno: int = 1, to_seqno: int | None = None
) -> tuple[list[int], int, int]:
    """All seqnos of `key` from the index, following @nextLink; (seqnos, pages, 202s)."""
    params = {"id": str(key), "from_seqno": str(from_seqno)}
    if to_seqno is not None:
        params["to_seqno"] = str(to_seqno)
    path = f"/app/log/{kind}/index"
    seqnos: list[int] = []
    pages = pending = 0
    for _ in range(10_000):
        r = await c.get(path, params=params)
        if r.status == 202:
            assert int(r.headers["retry-after"]) >= 1
            pending += 1
            await asyncio.sleep(0.02)
            continue
        c.check(r)
        pages += 1
        seqnos.extend(r.body["seqnos"])
        next_link = r.body.get("@nextLink")
        if next_link is None:
            return seqnos, pages, pending
        path, _, query = next_link.partition("?")
        params = dict(urllib.parse.parse_qsl(query))
    raise AssertionError("the index never finished paging")


_READ_PUBLIC_WRITES = """
import json, sys
import ccf.ledger
ledger = ccf.ledger.Ledger([sys.argv[1]], committed_only=False)
public, private = {}, []
for chunk in ledger:
    for tx in chunk:
        domain = tx.get_public_domain()
        for key in domain.get_tables().get("public:records", {}):
            public.setdefault(key.hex(), []).append(domain.get_seqno())
        if tx.get_private_domain_size():
            private.append(domain.get_seqno())
print(json.dumps({"public": public, "private": private}))
"""


def _ledger_writes(ledger_dir: Path) -> tuple[dict[bytes, list[int]], set[int]]:
    """(public:records key -> seqnos, seqnos with a private domain) from `ccf.ledger`."""
    proc = subprocess.run(
        [sys.executable, "-c", _READ_PUBLIC_WRITES, str(ledger_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found = json.loads(proc.stdout)
    return {bytes.fromhex(k): v for k, v in found["public"].items()}, set(found["private"])


def _workspace(node: NodeProcess) -> Path:
    return node.directory / "workspace"


async def test_index_answers_exact_seqnos_with_buckets_on_the_host_and_after_restart(
    net: Sandbox,
) -> None:
    node = net.nodes[0]
    written = await _write_all(net, node)
    last = max(max(v) for v in written.values())
    await wait_committed_on(net, node, last)

    # The index answers exactly what was written, paging through buckets fetched back.
    answers: dict[tuple[str, int], list[int]] = {}
    async with net.client(node, user=0) as c:
        fetched_back = 0
        for (kind, key), seqnos in sorted(written.items()):
            got, pages, pending = await _index(c, kind, key, 1, last)
            assert got == seqnos, f"{kind} id {key}: index differs from the writes"
            assert pages > 1  # the range spans more buckets than one page may
            fetched_back += pending
            answers[(kind, key)] = got
        assert fetched_back > 0, "no query had to wait for a bucket from the host"
        # An id never written has no seqnos.
        assert (await _index(c, "private", 12345, 1, last))[0] == []

    # The ledger files (all up to `last` is committed), read with CCF's own tools, agree for
    # the public map; the private answers are entries with an encrypted private domain (not
    # readable without the ledger secret).
    public_writes, private_seqnos = _ledger_writes(_workspace(node) / "ledger")
    for key in IDS:
        expected = [s for s in public_writes.get(U64.encode(key), []) if s <= last]
        assert answers[("public", key)] == expected
        assert set(answers[("private", key)]) <= private_seqnos

    # Blobs exist on the host's disk and hold no key and no plaintext bucket.
    blobs = sorted((_workspace(node) / "index_blobs").rglob("*.blob"))
    total_buckets = last // SEQNOS_PER_BUCKET
    assert len(blobs) >= 2 * (total_buckets - BUCKETS_IN_MEMORY - 1), [p.name for p in blobs]
    for path in blobs:
        data = path.read_bytes()
        assert b"CIX1" not in data
        for key in IDS:
            assert U64.encode(key) not in data, f"{path} holds id {key} in clear"

    # The host alters one blob of an old bucket: the query answers an error, not seqnos.
    strategy_dir = _workspace(node) / "index_blobs" / "seqnos_by_key.records"
    victim = strategy_dir / "1.blob"
    assert victim.exists(), sorted(p.name for p in strategy_dir.iterdir())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    first, end = SEQNOS_PER_BUCKET, 2 * SEQNOS_PER_BUCKET - 1
    async with net.client(node, user=0) as c:
        # Make sure bucket 1 is not among the buckets held in memory: read recent ones.
        await _index(c, "private", IDS[0], last - SEQNOS_PER_BUCKET, last)
        status = 202
        for _ in range(500):
            r = await c.get(
                "/app/log/private/index",
                params={"id": str(IDS[0]), "from_seqno": str(first), "to_seqno": str(end)},
            )
            status = r.status
            if status != 202:
                break
            await asyncio.sleep(0.02)
        assert status == 502, r
        assert r.body["error"]["code"] == "IndexBlobRejected"
        assert "failed authentication" in r.body["error"]["message"]

    # A restart rebuilds the indexes from the node's own ledger; the answers stay the same.
    node.stop()
    node.start()
    await asyncio.to_thread(node.wait_started)
    await wait_ready(net, node)
    async with net.client(node, user=0) as c:
        for (kind, key), expected in sorted(answers.items()):
            # 202 until the restarted node has committed (and so indexed) up to `last`.
            got, _, _ = await _index(c, kind, key, 1, last)
            assert got == expected, f"after restart: {kind} id {key}\n{log_tails(net)}"


async def test_a_node_joined_from_a_snapshot_says_which_seqnos_its_index_covers(
    net: Sandbox,
) -> None:
    first = net.nodes[0]
    async with net.client(first, user=0) as c:
        # History to join after (the other test may have written it, on this worker or not).
        while (await c.commit()).seqno <= 2 * SNAPSHOT_TX_COUNT:
            await asyncio.gather(
                *(
                    c.post("/app/log/private", json={"id": IDS[n % len(IDS)], "msg": "j"})
                    for n in range(CONCURRENCY * 4)
                )
            )
        last = (await c.commit()).seqno
    joiner = await net.add_node()
    async with net.client(joiner, user=0) as c:
        # From seqno 1: refused, saying where the index starts (the snapshot's seqno + 1).
        r = await c.get("/app/log/private/index", params={"id": str(IDS[0]), "from_seqno": "1"})
        assert r.status == 400, r
        assert r.body["error"]["code"] == "IndexRangeNotCovered"
        message = r.body["error"]["message"]
        covers_from = int(message.split("starts at seqno ")[1].split(" ")[0])
        assert SNAPSHOT_TX_COUNT < covers_from <= last + 1, message
    # From there on it answers, as the first node does over the same range (written to
    # after the join, so that the range is never empty).
    async with net.client(first, user=0) as c:
        for n in range(50):
            r = c.check(await c.post("/app/log/private", json={"id": IDS[0], "msg": f"a{n}"}))
    assert r.txid is not None
    last = r.txid.seqno
    await wait_committed_on(net, first, last)
    await wait_committed_on(net, joiner, last)
    async with net.client(joiner, user=0) as c:
        got, _, _ = await _index(c, "private", IDS[0], covers_from, last)
        for _ in range(500):  # 202 while a bucket is read back from the host
            r = c.check(await c.get("/app/log/private/index", params={"id": str(IDS[0])}))
            if r.status != 202:
                break
            await asyncio.sleep(0.02)
        assert r.status == 200 and "covers_from" in r.body, r
        assert r.body["covers_from"] == covers_from and r.body["indexed_to"] >= last
    async with net.client(first, user=0) as c:
        expected, _, _ = await _index(c, "private", IDS[0], covers_from, last)
    assert len(expected) >= 50
    assert got == expected
