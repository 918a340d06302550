"""Historical queries and receipts at any age, on a real node whose in-memory window is tiny.

Everything older than `memory.receipt_transactions` is read back by the host from the ledger
files, checked by the enclave against the signatures that follow it, and answered after a
`202 Accepted` + `Retry-After` or two. A byte changed on disk is refused with an error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ccf.cose
import pytest
from e2e_support import (
    check_receipt_with_ccf,
    log_tails,
    make_sandbox,
    start_sandbox,
    wait_committed_on,
)

from charter.identity import TxId
from charter.ledger import certs
from charter.ledger.chunks import LedgerReader
from charter.sandbox import Sandbox
from charter.sdk import CharterClient, Response

pytestmark = pytest.mark.e2e

RECEIPTS_IN_MEMORY = 10
OVERWRITES = 1_000
KEY = 7
EARLY_KEY = 99
EARLY_WRITES = 40
SPARSE_KEY = 555
WRITERS = 8
POLL_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    def small_window(i: int, config: dict[str, Any]) -> None:
        config["memory"] = {"raft_log_entries": 50, "receipt_transactions": RECEIPTS_IN_MEMORY}

    sb = make_sandbox(tmp_path_factory.mktemp("e2e-hist") / "sb", 1, small_window)
    start_sandbox(sb)
    try:
        yield sb
    finally:
        sb.stop()


async def poll(
    c: CharterClient, path: str, params: dict[str, str], txid: str | None = None
) -> Response:
    """GET until the answer is not 202 (the node fetches from its ledger meanwhile)."""
    headers = {"x-ms-ccf-transaction-id": txid} if txid else None
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        r = await c.request("GET", path, params=params, headers=headers)
        if r.status != 202:
            return r
        assert "retry-after" in {k.lower() for k in r.headers}, r
        assert time.monotonic() < deadline, f"{path} still 202 after {POLL_TIMEOUT_S}s"
        await asyncio.sleep(0.05)


async def write_many(net: Sandbox, key: int, msgs: list[str]) -> list[TxId]:
    """Write msgs to `key` in order (each write waits for the previous one's answer)."""
    txids = []
    async with net.client(net.nodes[0], user=0) as c:
        for msg in msgs:
            r = c.check(await c.post("/app/log/private", json={"id": key, "msg": msg}))
            assert r.txid is not None
            txids.append(r.txid)
    return txids


@pytest.fixture(scope="module")
def history(net: Sandbox) -> dict[str, list[TxId]]:
    async def go() -> dict[str, list[TxId]]:
        early = await write_many(net, EARLY_KEY, [f"early-{i}" for i in range(EARLY_WRITES)])
        overwrites = await write_many(net, KEY, [f"v{i}" for i in range(OVERWRITES)])
        await wait_committed_on(net, net.nodes[0], overwrites[-1].seqno)
        return {"early": early, "overwrites": overwrites}

    return asyncio.run(go())


def test_receipt_of_transaction_1_verifies_with_ccf_long_after_the_window(
    net: Sandbox, history: dict[str, list[TxId]]
) -> None:
    service_pem = net.service_cert_path.read_text()
    service_key = certs.load_cert(service_pem).public_key()

    async def go() -> None:
        async with net.client(net.nodes[0], user=0) as c:
            commit = await c.commit()
            assert commit.seqno > 1 + 2 * RECEIPTS_IN_MEMORY
            first = TxId(history["early"][0].view, 1)  # one node: one view
            receipt = await c.receipt(first)
            check_receipt_with_ccf(receipt, service_pem)
            cose = await c.cose_receipt(first)
            claims = bytes.fromhex(receipt["leaf_components"]["claims_digest"])
            ccf.cose.verify_receipt(cose, service_key, claims)
            # The same from the app, as CCF's samples serve it.
            old = history["early"][0]
            r = await poll(c, "/app/receipt", {"transaction_id": str(old)})
            assert r.status == 200, r
            check_receipt_with_ccf(r.body, service_pem)

    asyncio.run(go())


def test_private_value_overwritten_1000_times_reads_back_at_each_seqno(
    net: Sandbox, history: dict[str, list[TxId]]
) -> None:
    overwrites = history["overwrites"]

    async def go() -> None:
        async with net.client(net.nodes[0], user=0) as c:
            # The history of the id over the whole range, paged with @nextLink as CCF.
            entries: list[dict[str, Any]] = []
            params = {
                "id": str(KEY),
                "from_seqno": str(overwrites[0].seqno),
                "to_seqno": str(overwrites[-1].seqno),
            }
            path = "/app/log/private/historical/range"
            pages = 0
            while True:
                r = await poll(c, path, params)
                assert r.status == 200, r
                entries.extend(r.body["entries"])
                pages += 1
                link = r.body.get("@nextLink")
                if not link:
                    break
                path, _, query = link.partition("?")
                params = dict(part.split("=", 1) for part in query.split("&"))
            assert [(e["seqno"], e["msg"]) for e in entries] == [
                (t.seqno, f"v{i}") for i, t in enumerate(overwrites)
            ]
            # Each past value at its own transaction id.
            for i, txid in enumerate(overwrites):
                r = await poll(c, "/app/log/private/historical", {"id": str(KEY)}, str(txid))
                assert r.status == 200 and r.body == {"msg": f"v{i}"}, (i, r)
            # Another id was not written by that transaction: 404, not a wrong value.
            r = await poll(c, "/app/log/private/historical", {"id": "12345"}, str(overwrites[5]))
            assert r.status == 404, r
            # A historical receipt with the value.
            r = await poll(
                c, "/app/log/private/historical_receipt", {"id": str(KEY)}, str(overwrites[3])
            )
            assert r.status == 200 and r.body["msg"] == "v3", r
            check_receipt_with_ccf(r.body["receipt"], net.service_cert_path.read_text())

    try:
        asyncio.run(go())
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log_tails(net)}") from None


async def _fetched_entries(c: CharterClient) -> int:
    metrics = await c.get_json("/node/metrics")
    return int(metrics["historical_fetched_entries"])


def test_range_history_of_an_id_reads_back_only_what_the_index_says_it_wrote(
    net: Sandbox, history: dict[str, list[TxId]]
) -> None:
    # The index knows where an id was written: a range over a thousand transactions that
    # never wrote it reads nothing back from the ledger, and one over the whole ledger
    # returns exactly its writes.
    overwrites = history["overwrites"]

    async def go() -> None:
        async with net.client(net.nodes[0], user=0) as c:
            before = await _fetched_entries(c)
            path = "/app/log/private/historical/range"
            span = {"from_seqno": str(overwrites[0].seqno), "to_seqno": str(overwrites[-1].seqno)}
            r = await poll(c, path, {"id": str(EARLY_KEY), **span})
            assert r.status == 200 and r.body["entries"] == [], r
            assert not r.body.get("@nextLink")
            assert await _fetched_entries(c) == before
            # An id written three times among other writes: exactly its writes come back.
            sparse = []
            for i in range(3):
                sparse += await write_many(net, SPARSE_KEY, [f"sparse-{i}"])
                await write_many(net, KEY + 1, [f"filler-{i}-{k}" for k in range(30)])
            await wait_committed_on(net, net.nodes[0], sparse[-1].seqno + 30)
            params = {"id": str(SPARSE_KEY), "from_seqno": str(overwrites[-1].seqno + 1)}
            r = await poll(c, path, params)
            assert r.status == 200, r
            assert [(e["seqno"], e["msg"]) for e in r.body["entries"]] == [
                (t.seqno, f"sparse-{i}") for i, t in enumerate(sparse)
            ]

    asyncio.run(go())


def test_historical_endpoint_needs_a_committed_transaction_id(
    net: Sandbox, history: dict[str, list[TxId]]
) -> None:
    async def go() -> None:
        async with net.client(net.nodes[0], user=0) as c:
            r = await c.get("/app/log/private/historical", params={"id": str(KEY)})
            assert r.status == 400 and r.body["error"]["code"] == "InvalidHeaderValue", r
            r = await poll(c, "/app/log/private/historical", {"id": str(KEY)}, "2.999999999")
            assert r.status == 400, r
            assert r.body["error"]["code"] == "TransactionPendingOrUnknown", r

    asyncio.run(go())


def _tamper_one_byte(ledger_dir: Path, seqno: int) -> None:
    raw = LedgerReader(str(ledger_dir)).get(seqno)
    for path in sorted(ledger_dir.glob("ledger_*.committed")):
        data = bytearray(path.read_bytes())
        at = data.find(raw)
        if at >= 0:
            data[at + len(raw) - 20] ^= 0x01  # inside the encrypted private domain
            path.write_bytes(bytes(data))
            return
    raise AssertionError(f"seqno {seqno} is in no committed chunk")


def test_a_byte_altered_on_disk_is_refused_not_answered(
    net: Sandbox, history: dict[str, list[TxId]]
) -> None:
    target = history["early"][EARLY_WRITES // 2]
    node = net.nodes[0]
    _tamper_one_byte(node.directory / "workspace" / "ledger", target.seqno)

    async def go() -> None:
        async with net.client(node, user=0) as c:
            r = await poll(c, "/app/log/private/historical", {"id": str(EARLY_KEY)}, str(target))
            assert r.status == 500, r
            assert r.body["error"]["code"] == "HistoricalVerificationFailed", r
            assert f"seqno {target.seqno}" in r.body["error"]["message"], r
            r = await poll(c, "/node/receipt", {"transaction_id": str(target)})
            assert r.status == 500 and r.body["error"]["code"] == "HistoricalVerificationFailed"
            # An untouched neighbour still answers.
            other = history["early"][2]
            r = await poll(c, "/app/log/private/historical", {"id": str(EARLY_KEY)}, str(other))
            assert r.status == 200 and r.body == {"msg": "early-2"}, r

    asyncio.run(go())
