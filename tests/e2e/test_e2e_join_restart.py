"""A joining node that crashes while it waits for governance (Pending) restarts under the
same identity; once trusted it must join and catch up like any other node, and the service
must keep committing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from e2e_support import (
    log_tails,
    make_sandbox,
    read,
    start_sandbox,
    wait_committed_on,
    wait_ready,
    write,
)

from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e


@pytest.fixture
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = start_sandbox(make_sandbox(tmp_path_factory.mktemp("e2e-joinrestart") / "sb", nodes=1))
    try:
        yield sb
    finally:
        sb.stop()


async def test_pending_joiner_restarted_before_trust_joins_and_catches_up(net: Sandbox) -> None:
    before = await write(net, net.nodes[0], 1, "before the join")
    # Sandbox.add_node would trust the node at once; here the node waits Pending first.
    joiner = net._node(len(net.nodes))
    net.nodes.append(joiner)
    net.node_count = len(net.nodes)
    joiner.start()
    await asyncio.to_thread(joiner.wait_started)
    node_id = joiner.node_id
    await asyncio.sleep(1.0)  # Pending: the primary neither contacts nor replicates to it
    joiner.kill()
    joiner.start()
    await asyncio.to_thread(joiner.wait_started)
    assert joiner.node_id == node_id, "a restarted joiner keeps its identity"

    await net.trust_node(node_id)
    await wait_ready(net, joiner)
    after = await write(net, net.nodes[0], 2, "after the join")
    await wait_committed_on(net, net.nodes[0], after.seqno)
    await wait_committed_on(net, joiner, after.seqno)
    assert await read(net, joiner, 1) == "before the join", log_tails(net)
    assert await read(net, joiner, 2) == "after the join", log_tails(net)
    async with net.client(joiner) as c:
        assert await c.tx_status(before) == "Committed"
