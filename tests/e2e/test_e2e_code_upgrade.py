"""Code upgrades on live networks of real node processes: the code that runs is approved code.

A rolling upgrade (docs/operator-guide.md, "Upgrading the code"): a 3-node network serves
version A of an app (a copy of the logging sample outside the code copy, on PYTHONPATH) under
a continuous write load; members approve version B's measurement (the same app with a changed
comment); three B nodes join and are trusted; the three A nodes are retired one by one, the
primary first, so leadership moves to a B node; members withdraw A's measurement. Every write
that was answered 200 is then committed and readable on the B nodes, their ledger validates
with ccf.ledger (and is the same on each), and an A node can no longer join.

And the restart rule: a node running when its measurement is removed runs on (as in CCF);
restarted from its sealed state, it stops and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    alive,
    app_on_path,
    app_version,
    ccf_validate,
    commit_seqno,
    committed_chunk_end,
    committed_entries,
    log_tails,
    make_sandbox,
    measure_code,
    primary_index,
    start_sandbox,
    wait_committed_on,
)

from charter.errors import CharterError
from charter.identity import TxId
from charter.sandbox import NodeProcess, Sandbox, SandboxError

pytestmark = pytest.mark.e2e

APP = "upgrade_logging"  # the same module name in both versions' directories
STEP_TIMEOUT_S = 20.0


@dataclass
class WriteLoad:
    """Writes unique private records without pause through every live node it may use."""

    sb: Sandbox
    avoid: set[int] = field(default_factory=set)  # nodes being retired
    answered: dict[int, tuple[str, TxId]] = field(default_factory=dict)  # every 200
    failed: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def targets(self) -> list[NodeProcess]:
        return [
            n
            for n in self.sb.nodes
            if alive(n) and n.index not in self.avoid and n.ports.get("rpc_address")
        ]

    async def run(self) -> None:
        key = 0
        while not self.stop.is_set():
            live = self.targets()
            node = live[key % len(live)]
            msg = f"v{key}"
            try:
                async with self.sb.client(node, user=0) as c:
                    r = await c.post("/app/log/private", json={"id": key, "msg": msg})
                if r.status == 200:
                    assert r.txid is not None, r
                    self.answered[key] = (msg, r.txid)
                else:
                    self.failed += 1
            except CharterError:
                self.failed += 1
                await asyncio.sleep(0.05)
            key += 1
            await asyncio.sleep(0.005)

    async def until_answered(self, more: int) -> None:
        target = len(self.answered) + more
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while len(self.answered) < target:
            assert time.monotonic() < deadline, f"the write load stalled\n{log_tails(self.sb)}"
            await asyncio.sleep(0.05)


async def _measurement_of(sb: Sandbox, node: NodeProcess) -> str:
    async with sb.client(node) as c:
        quote = await c.get_json("/node/quotes/self")
    assert quote["format"] == "Insecure_Virtual", quote
    return str(quote["measurement"])


async def _propose(sb: Sandbox, via: NodeProcess, actions: list[dict[str, Any]]) -> None:
    async with sb.client(via) as c:
        await sb.pass_proposal(c, actions)


async def _node_statuses(sb: Sandbox, via: NodeProcess) -> dict[str, str]:
    async with sb.client(via) as c:
        return {n["node_id"]: n["status"] for n in await c.nodes()}


async def _retire(sb: Sandbox, node: NodeProcess, witness: NodeProcess) -> None:
    """`remove_node` by governance; until `witness` lists it Retired and its process ends."""
    await sb.retire_node(node)
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(CharterError):
            if (await _node_statuses(sb, witness)).get(node.node_id) == "Retired" and not alive(
                node
            ):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"node{node.index} did not retire\n{log_tails(sb)}")


async def _final_statuses(
    sb: Sandbox, node: NodeProcess, writes: dict[int, tuple[str, TxId]]
) -> dict[int, str]:
    """Each write's /node/tx status on `node`, once none is Pending any more."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    statuses: dict[int, str] = {}
    async with sb.client(node) as c:
        while True:
            for key, (_, txid) in writes.items():
                if statuses.get(key) in (None, "Pending", "Unknown"):
                    statuses[key] = await c.tx_status(txid)
            if all(s in ("Committed", "Invalid") for s in statuses.values()):
                return statuses
            assert time.monotonic() < deadline, {k: s for k, s in statuses.items() if s}
            await asyncio.sleep(0.1)


async def test_rolling_upgrade_under_writes_moves_the_network_to_new_code_losing_nothing(
    tmp_path: Path,
) -> None:
    version_a = app_version(tmp_path / "app-a", APP)
    version_b = app_version(tmp_path / "app-b", APP, note="version B: a new build of the app")
    measurement_a = measure_code(version_a, APP)
    measurement_b = measure_code(version_b, APP)
    assert measurement_a != measurement_b

    sb = make_sandbox(tmp_path / "sb", nodes=3, app=APP)
    with app_on_path(version_a):
        await asyncio.to_thread(start_sandbox, sb)
    load = WriteLoad(sb)
    task = asyncio.get_running_loop().create_task(load.run())
    try:
        old = list(sb.nodes)
        for node in old:  # what the nodes report is what members computed from the code
            assert await _measurement_of(sb, node) == measurement_a
        await load.until_answered(10)

        # 1. Members approve B's measurement (the A nodes keep running, untouched).
        await _propose(
            sb,
            old[0],
            [{"name": "add_virtual_measurement", "args": {"measurement": measurement_b}}],
        )
        # 2. Three nodes running B join and are trusted, under the load.
        with app_on_path(version_b):
            new = await sb.add_nodes(3)
        for node in new:
            assert await _measurement_of(sb, node) == measurement_b
        await load.until_answered(5)
        statuses = await _node_statuses(sb, new[0])
        assert all(statuses[n.node_id] == "Trusted" for n in old + new), statuses

        # 3. The A nodes retire one by one: the primary whenever it is an A node, so the
        # first to go is the primary and leadership ends on a B node.
        retired_primaries = 0
        while remaining := [n for n in old if n.index not in load.avoid]:
            primary = await primary_index(sb)
            node = next((n for n in remaining if n.index == primary), remaining[-1])
            retired_primaries += node.index == primary
            load.avoid.add(node.index)
            await _retire(sb, node, new[0])
            await primary_index(sb, exclude=node.index)
            await load.until_answered(5)
        assert retired_primaries >= 1
        assert await primary_index(sb) in {n.index for n in new}

        # 4. Members withdraw A's measurement: only B may join from now on.
        await _propose(
            sb,
            new[0],
            [{"name": "remove_virtual_measurement", "args": {"measurement": measurement_a}}],
        )
        async with sb.client(new[0]) as c:
            policy = await c.get_json(
                "/gov/service/join-policy", params={"api-version": "2024-07-01"}
            )
        assert policy["virtual"]["measurements"] == [measurement_b], policy
        upgraded_at = await commit_seqno(sb, new[0])
        await load.until_answered(10)
        # Keep writing until the committed chunk files cover the upgrade, for ccf.ledger.
        deadline = time.monotonic() + STEP_TIMEOUT_S
        ledgers = [n.directory / "workspace" / "ledger" for n in new]
        while min(committed_chunk_end(d) for d in ledgers) < upgraded_at:
            assert time.monotonic() < deadline, f"chunks not committed\n{log_tails(sb)}"
            await asyncio.sleep(0.1)
    finally:
        load.stop.set()
        with contextlib.suppress(BaseException):
            await task
    try:
        # Every write answered 200, before, during and after the upgrade, is committed...
        assert len(load.answered) >= 40, (len(load.answered), load.failed)
        last_seqno = max(txid.seqno for _, txid in load.answered.values())
        for node in new:
            await wait_committed_on(sb, node, last_seqno)
        statuses = await _final_statuses(sb, new[0], load.answered)
        lost = sorted(k for k, s in statuses.items() if s != "Committed")
        assert not lost, [(k, str(load.answered[k][1]), statuses[k]) for k in lost]
        # ... and readable on every B node (all keys on one, a sample on the others).
        for i, node in enumerate(new):
            keys = sorted(load.answered)
            async with sb.client(node, user=0) as c:
                for key in keys if i == 0 else keys[:: max(1, len(keys) // 20)]:
                    r = await c.get("/app/log/private", params={"id": str(key)})
                    assert r.status == 200, (node.index, key, r)
                    assert r.body["msg"] == load.answered[key][0], (node.index, key)
        # The B nodes' ledgers hold the whole history: one validates with CCF's tools, and
        # the others' committed entries are the same bytes.
        result = await asyncio.to_thread(ccf_validate, ledgers[0])
        validated = int(result["txid"].split(".")[1])
        assert validated >= upgraded_at, result
        reference = committed_entries(ledgers[0], validated)
        for directory in ledgers[1:]:
            assert committed_entries(directory, validated) == reference, directory

        # 5. A node running A is refused at join now, and says why. (The sandbox points
        # joiners at node 0, retired: this one asks a B node.)
        def join_via_new(index: int, config: dict[str, Any]) -> None:
            config["start"]["join"]["target"] = new[0].rpc_address

        sb.configure_node = join_via_new
        with app_on_path(version_a), pytest.raises(SandboxError, match="InvalidQuote"):
            await sb.add_node()
    finally:
        sb.stop()


async def test_a_node_whose_measurement_was_removed_runs_on_but_is_refused_on_restart(
    tmp_path: Path,
) -> None:
    version_a = app_version(tmp_path / "app-a", APP)
    measurement_a = measure_code(version_a, APP)
    sb = make_sandbox(tmp_path / "sb", nodes=1, app=APP)
    with app_on_path(version_a):
        await asyncio.to_thread(start_sandbox, sb)
    try:
        node = sb.nodes[0]
        await _propose(
            sb,
            node,
            [
                {"name": "add_virtual_measurement", "args": {"measurement": "ab" * 32}},
                {"name": "remove_virtual_measurement", "args": {"measurement": measurement_a}},
            ],
        )
        # Running, it carries on: writes commit as before.
        async with sb.client(node, user=0) as c:
            r = c.check(await c.post("/app/log/private", json={"id": 1, "msg": "still here"}))
            assert r.txid is not None
            await c.wait_for_commit(r.txid, timeout_s=STEP_TIMEOUT_S)

        # Restarted from its sealed state, it stops before rejoining, with the reason.
        node.stop()
        with app_on_path(version_a):
            node.start()
        with pytest.raises(SandboxError) as stopped:
            await asyncio.to_thread(node.wait_started)
        reason = str(stopped.value)
        assert f"UnapprovedCode: this node's code measurement {measurement_a}" in reason, reason
        assert "public:ccf.gov.nodes.virtual.measurements" in reason
        assert not alive(node)
    finally:
        sb.stop()
