"""Signatures under light load, on one real node: with `signatures.delay_ms` far away,
a write served while the node keeps up is committed by a signature
`signatures.light_load_delay_ms` after the last, as the runtime counts the writes each
event-loop turn serves (`Node.end_turn`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import make_sandbox, start_sandbox, wait_committed_on, write

from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e

DELAY_MS = 20_000
LIGHT_LOAD_DELAY_MS = 5


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    def configure(_: int, config: dict[str, Any]) -> None:
        config["signatures"] = {
            "tx_count": 1_000,
            "delay_ms": DELAY_MS,
            "light_load_delay_ms": LIGHT_LOAD_DELAY_MS,
        }

    workspace = tmp_path_factory.mktemp("e2e-light") / "sb"
    sb = start_sandbox(make_sandbox(workspace, nodes=1, configure_node=configure))
    try:
        yield sb
    finally:
        sb.stop()


async def test_a_write_under_light_load_commits_long_before_the_signature_delay(
    net: Sandbox,
) -> None:
    node = net.nodes[0]
    # A commit first, so a signature has just gone out whichever rule signed it: a write
    # now would wait the whole `delay_ms` (20 s) for the next one without the light-load rule.
    first = await write(net, node, 1, "light load 0")
    await wait_committed_on(net, node, first.seqno, timeout_s=2 * DELAY_MS / 1000)
    for i in range(1, 4):
        txid = await write(net, node, 1 + i, f"light load {i}")
        await wait_committed_on(net, node, txid.seqno, timeout_s=DELAY_MS / 4000)
