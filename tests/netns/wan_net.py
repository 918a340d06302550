"""A Charter network whose nodes each run on their own namespaced machine, behind a WAN
profile: `wan_network(workspace, nodes, profile)` yields a `WanNet` (the lab, the delay
proxy, and the `Sandbox` that drives the nodes through their public surfaces).

Nodes bind their own address (`NetLab.rpc_address(i)`, the same ports on every machine), so
their certificates carry that IP as SAN and clients verify it; each node publishes the delay
proxy's port for it as its node-to-node address, so every link gets the profile's delay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e_support import log_tails, start_sandbox
from netlab import DelayProxy, NetLab, WanProfile

from charter.sandbox import Sandbox

# The product's defaults (enclave_app.interface.ConsensusConfig); a test may pass others to
# measure them.
DEFAULT_ELECTION_TIMEOUT_MS = (1000, 2000)
DEFAULT_HEARTBEAT_MS = 100
SIGNATURE_DELAY_MS = 50


@dataclass(slots=True)
class WanNet:
    lab: NetLab
    proxy: DelayProxy
    sb: Sandbox
    profile: WanProfile


@contextlib.contextmanager
def wan_network(
    workspace: Path,
    nodes: int,
    profile: WanProfile,
    *,
    spare_machines: int = 0,
    election_timeout_ms: tuple[int, int] = DEFAULT_ELECTION_TIMEOUT_MS,
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS,
    extra_config: dict[str, Any] | None = None,
    seed: int = 0,
    prepare: Callable[[NetLab], None] | None = None,
) -> Iterator[WanNet]:
    """Start `nodes` nodes (and leave `spare_machines` machines for joiners) under `profile`;
    stop and tear down everything on the way out, whatever happened. `prepare(lab)` runs
    once the machines exist, before any node starts (e.g. to set up their firewalls)."""
    lab = NetLab(nodes + spare_machines)

    def place(i: int, config: dict[str, Any]) -> None:
        config["rpc_address"] = lab.rpc_address(i)
        # Each machine's certificate names its own address (and nothing else), as an
        # operator's would.
        config["rpc_interface"] = {"subject_alt_names": [f"iPAddress:{lab.ip(i)}"]}
        config["node_to_node_address"] = lab.n2n_address(i)
        config["published_node_to_node_address"] = lab.proxy_address(i)
        config["consensus"] = {
            "election_timeout_ms": list(election_timeout_ms),
            "heartbeat_ms": heartbeat_ms,
        }
        if config["start"]["mode"] == "join":
            config["start"]["join"]["target"] = lab.rpc_address(0)
        config.update(extra_config or {})

    with lab:
        proxy = DelayProxy(lab, profile, seed=seed).start()
        sb = Sandbox(
            workspace,
            nodes=nodes,
            signature_delay_ms=SIGNATURE_DELAY_MS,
            election_timeout_ms=election_timeout_ms,
            configure_node=place,
            node_launcher=lab.launcher,
        )
        try:
            lab.set_loss(profile.loss_ratio)
            if prepare is not None:
                prepare(lab)
            start_sandbox(sb)
            yield WanNet(lab, proxy, sb, profile)
        except BaseException as exc:
            if not isinstance(exc, AssertionError | KeyboardInterrupt):
                print(log_tails(sb))
            raise
        finally:
            sb.stop()
            proxy.stop()
