"""A Charter network across a WAN, each node on its own network stack (issue 22).

Three namespaced machines, 40 ms ± 10 ms one way between them, one link at 120 ms and 0.5%
of packets lost (the `wan` profile): the production Raft timeouts elect and keep one
primary, followers forward, a node cut off by the firewall catches up, a node joins from a
snapshot, and a concurrent history stays linearizable. The short run is part of
./scripts/test; the soak runs the cut for a minute under every profile (./scripts/soak).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from netlab import PROFILES, WanProfile
from wan_net import WanNet, wan_network
from wan_scenario import (
    check_own_addresses,
    cut_off_node_catches_up,
    forwarded_write_commits,
    linearizable_history,
    primary_loss_elects_another,
    settle_election,
    snapshot_join_catches_up,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("netns_ready")]

SNAPSHOT_TX_COUNT = 100


def run_scenario(
    workspace: Path, profile: WanProfile, *, isolated_s: float, writes: int, ops: int
) -> None:
    # Small chunks, so that the joiner commits whole chunk files soon after it starts.
    extra = {"snapshots": {"tx_count": SNAPSHOT_TX_COUNT}, "ledger_chunk_bytes": 4096}
    with wan_network(workspace, 3, profile, spare_machines=1, extra_config=extra) as net:
        check_own_addresses(net)
        asyncio.run(steps(net, isolated_s=isolated_s, writes=writes, ops=ops))


async def steps(net: WanNet, *, isolated_s: float, writes: int, ops: int) -> None:
    profile = net.profile
    if True:
        primary, _ = await settle_election(net)
        await forwarded_write_commits(net, primary)
        await linearizable_history(
            net, primary, clients=4, ops_per_client=ops, keys=3, seed=len(profile.name)
        )
        await cut_off_node_catches_up(net, primary, isolated_s=isolated_s, writes=writes)
        primary, _ = await primary_loss_elects_another(net, primary)
        await snapshot_join_catches_up(net, primary, writes=SNAPSHOT_TX_COUNT + 20)
        # The proxy carried every link: the WAN's delay was really in the way.
        assert len(net.proxy.links_opened) >= 6, net.proxy.links_opened


def test_wan_profile_elects_forwards_catches_up_and_stays_linearizable(tmp_path: Path) -> None:
    run_scenario(tmp_path / "wan", PROFILES["wan"], isolated_s=8.0, writes=150, ops=10)


@pytest.mark.soak
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("profile", ["wan", "intercontinental", "lossy"])
def test_soak_a_node_cut_off_for_a_minute_catches_up_under_each_profile(
    tmp_path: Path, profile: str
) -> None:
    run_scenario(tmp_path / profile, PROFILES[profile], isolated_s=60.0, writes=2000, ops=25)
