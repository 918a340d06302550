"""The operator guide's "Deploying across organisations", followed on one machine: each
organisation's node on its own namespaced machine with its own address and the guide's
nftables firewall, the others joining across organisations by the first node's address,
monitoring by a Prometheus-style scrape, and a rolling restart that takes a backup of each
node's ledger and sealed state on the way.

One machine cannot hold real separate routers: node-to-node traffic reaches a node through the
lab's proxy on the bridge, so the bridge address stands in the firewall's peer set for the
WAN in between.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

import pytest
from e2e_support import ccf_validate, primary_index, wait_committed_on, wait_ready, write
from netlab import N2N_PORT, PROFILES, RPC_PORT, NetLab
from wan_net import WanNet, wan_network

from charter.sandbox import NodeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("netns_ready")]

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"
PROMETHEUS_ACCEPT = "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
NODES = 3


def guide_firewall(peers: list[str]) -> str:
    """The guide's nftables ruleset, with this machine's peers in its set."""
    text = GUIDE.read_text()
    section = text[text.index("## Deploying across organisations") :]
    found = re.search(r"```nft\n(.*?)```", section, re.DOTALL)
    assert found, "the walkthrough shows no nftables ruleset"
    rules = found.group(1)
    assert (
        f"tcp dport {RPC_PORT} accept" in rules and f"tcp dport {N2N_PORT} ip saddr @peers" in rules
    )
    return re.sub(r"elements = \{[^}]*\}", "elements = { " + ", ".join(peers) + " }", rules)


def apply_firewalls(lab: NetLab) -> None:
    for i in range(NODES):
        peers = [lab.ip(j) for j in range(NODES) if j != i] + [lab.gateway_ip]
        lab.exec(i, "nft", "-f", "-", stdin=guide_firewall(peers))


_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()
    print("open")
except OSError:
    print("closed")
"""


def reachable_from(lab: NetLab, machine: int, address: str) -> bool:
    host, _, port = address.rpartition(":")
    return lab.exec(machine, sys.executable, "-c", _CONNECT, host, port).strip() == "open"


async def scrape(net: WanNet, node: NodeProcess) -> str:
    async with net.sb.client(node) as c:
        r = await c.request("GET", "/node/metrics", headers={"accept": PROMETHEUS_ACCEPT})
    assert r.status == 200 and r.headers.get("content-type", "").startswith("text/plain"), r
    body = r.body
    return body.decode() if isinstance(body, bytes) else str(body)


async def walkthrough(net: WanNet, backups: Path) -> None:
    sb, lab = net.sb, net.lab
    # 4. Joining across organisations: every other node joined by node 0's own address.
    for node in sb.nodes[1:]:
        assert f'"target": "{lab.rpc_address(0)}"' in node.config_path.read_text()
    # 3. Firewall: a machine outside the consortium (the spare one) reaches the RPC port but
    # not the node-to-node port.
    outsider = NODES
    assert reachable_from(lab, outsider, lab.rpc_address(0))
    assert not reachable_from(lab, outsider, lab.n2n_address(0))
    # 7. Monitoring: each node answers a Prometheus scrape; exactly one says it is primary.
    texts = [await scrape(net, node) for node in sb.nodes]
    assert sum("charter_is_primary 1" in t.splitlines() for t in texts) == 1, texts
    # 6. + 5. Rolling restart, one node at a time, with a backup of each stopped node; the
    # service keeps committing throughout.
    for node in sb.nodes:
        node.stop()
        workspace = node.directory / "workspace"
        backup = backups / f"node{node.index}"
        shutil.copytree(workspace / "ledger", backup / "ledger")
        for name in ("sealed.bin", "virtual_sealing_key.bin"):
            shutil.copy2(workspace / name, backup / name)
        p = await primary_index(sb, exclude=node.index)
        txid = await write(sb, sb.nodes[p], 100 + node.index, f"while node{node.index} restarts")
        await wait_committed_on(sb, sb.nodes[p], txid.seqno)
        node.start()
        await asyncio.to_thread(node.wait_started)
        await wait_ready(sb, node)
        await wait_committed_on(sb, node, txid.seqno)
        assert ccf_validate(backup / "ledger")["transactions"] > 0
    after = [await scrape(net, node) for node in sb.nodes]
    assert all('state="PartOfNetwork"' in t for t in after)


def test_the_operator_guides_multi_machine_walkthrough_works(tmp_path: Path) -> None:
    with wan_network(
        tmp_path / "consortium",
        NODES,
        PROFILES["lan"],
        spare_machines=1,
        extra_config={"ledger_chunk_bytes": 4096},
        prepare=apply_firewalls,
    ) as net:
        asyncio.run(walkthrough(net, tmp_path / "backups"))
