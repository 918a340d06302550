"""The unmodified ACL SDK pages through a large collection on a node that keeps only each
collection's latest entry in memory: every older entry comes back from the ledger through
historical queries, page after page, with the node's memory bounded by its cache limit.

The suite runs 5,000 entries (100 pages over several 2,000-seqno scan windows); the soak
(scripts/soak) runs the issue's 1,000,000.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from acl_testkit import ACL_APP, sdk_client

from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e

WRITERS = 24
COLLECTION = "big"


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    def configure(i: int, config: dict[str, Any]) -> None:
        config["memory"] = {"raft_log_entries": 2_000, "receipt_transactions": 2_000}
        config["historical_cache_soft_limit"] = 16 * 1024 * 1024

    sb = Sandbox(
        tmp_path / "sb", nodes=1, app=ACL_APP, signature_delay_ms=20, configure_node=configure
    )
    try:
        asyncio.run(sb.start())
        yield sb
    finally:
        sb.stop()


def write_entries(sb: Sandbox, count: int) -> str:
    """`count` entries in one collection, contents `e<i>`, i in write order; the last txid."""
    next_index = iter(range(count))
    last: list[tuple[int, str]] = []

    async def writer() -> None:
        async with sb.client(sb.nodes[0], user=0) as c:
            for i in next_index:
                r = c.check(
                    await c.post(
                        "/app/transactions",
                        json={"contents": f"e{i}"},
                        params={"collectionId": COLLECTION},
                    )
                )
                assert r.txid is not None
                last.append((r.txid.seqno, str(r.txid)))

    async def go() -> str:
        await asyncio.gather(*(writer() for _ in range(WRITERS)))
        top = max(last)[1]
        async with sb.client(sb.nodes[0]) as c:
            await c.wait_for_commit(top, timeout_s=120)
        return top

    return asyncio.run(go())


def check_paging(sb: Sandbox, count: int) -> None:
    write_entries(sb, count)
    seen = set()
    previous_seqno = 0
    pages = 0
    with sdk_client(sb) as client:
        for page in client.list_ledger_entries(collection_id=COLLECTION).by_page():
            pages += 1
            for entry in page:
                seqno = int(entry["transactionId"].split(".")[1])
                assert seqno > previous_seqno, "entries come in ledger order"
                previous_seqno = seqno
                assert entry["collectionId"] == COLLECTION
                seen.add(entry["contents"])
    assert len(seen) == count and seen == {f"e{i}" for i in range(count)}
    assert pages >= count // 50


def test_sdk_pages_through_5000_entries_read_back_from_history(sandbox: Sandbox) -> None:
    check_paging(sandbox, 5_000)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_sdk_pages_through_a_collection_of_1000000_entries(sandbox: Sandbox) -> None:
    check_paging(sandbox, 1_000_000)
