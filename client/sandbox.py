"""`charter sandbox`: a local network on 127.0.0.1, opened through real governance.

The sandbox creates a workspace (members' and a user's keys, one config per node), starts
every node as its own pair of processes (`python -m charter.host --config …`), opens the service by
proposal and ballots, writes `network.json`, and stays up until Ctrl-C or SIGTERM. A second
start on the same workspace resumes the same network: each node unseals its identity and
replays its own ledger.

`Sandbox` is also the harness the end-to-end tests use, so what they test is what users run.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charter.keygen import generate_identity
from charter.ledger import service_state as ss
from charter.member import Member
from charter.sdk import REQUEST_TIMEOUT_S_DEFAULT, CharterClient

DEFAULT_WORKSPACE = Path("workspace/sandbox")
# The SCITT sample signs with the address it is reached at as its COSE issuer.
SCITT_MODULE = "charter.enclave_app.samples.scitt"
SCITT_COSE_SUBJECT = "scitt.ccf.signature.v1"
MEMBER_COUNT = 3
SANDBOX_SUBJECT_ALT_NAMES = ("iPAddress:127.0.0.1", "dNSName:localhost")
USER_COUNT = 1
NODE_START_TIMEOUT_S = 60.0
# A recovery node replays the whole old ledger before it reports Started.
RECOVERY_START_TIMEOUT_S = 600.0
POLL_INTERVAL_S = 0.05
# Each try of a wait that polls a node (`wait_for_primary`, `wait_part_of_network`) gives up
# after this, so that one lost packet cannot use up the whole wait: a node that closes a
# connection it will not serve (a joiner not yet trusted) sends a reset, which is not
# retransmitted, and a client whose reset was lost would wait for an answer for its whole
# request timeout.
WAIT_TRY_TIMEOUT_S = 5.0
LOCK_FILE_NAME = "sandbox.pid"
# Bounds the scan for an earlier run's node configs.
NODES_MAX = 64


class SandboxError(Exception):
    """A sandbox step that failed, with a message a person can act on."""


def free_port(taken: set[int] | None = None) -> int:
    """A port nothing listens on now, and not in `taken` (which it joins). The kernel may hand
    back a port it just handed out once its socket is closed, so a caller choosing several
    ports at once passes the ones it already chose."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if taken is None:
            return port
        if port not in taken:
            taken.add(port)
            return port
    raise SandboxError("could not find a free port on 127.0.0.1")


@dataclass(slots=True)
class NodeProcess:
    """One node: its config, its host process, and what the host reported."""

    index: int
    directory: Path
    config_path: Path
    process: subprocess.Popen[bytes] | None = None
    ports: dict[str, Any] = field(default_factory=dict)
    # A command prefix the host process runs under, e.g. `ip netns exec NS` to run the node
    # on another (namespaced) machine; empty: here.
    launcher: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.directory / "node.log"

    @property
    def ports_path(self) -> Path:
        return self.directory / "workspace" / "ports.json"

    @property
    def rpc_address(self) -> str:
        return str(self.ports["rpc_address"])

    @property
    def url(self) -> str:
        return f"https://{self.rpc_address}"

    @property
    def node_id(self) -> str:
        return str(self.ports.get("node_id", ""))

    def start(self) -> None:
        self.ports_path.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                *self.launcher,
                sys.executable,
                "-m",
                "charter.host",
                "--config",
                str(self.config_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_started(self, timeout_s: float = NODE_START_TIMEOUT_S) -> None:
        """Wait until the enclave reported Started (the host writes node_id to ports.json)."""
        deadline = time.monotonic() + timeout_s
        assert self.process is not None
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                reason = self.fatal_reason()
                if reason is not None:
                    # The enclave said why in one line (e.g. an app module that does not
                    # import): that line is the message, not the log's last screen.
                    raise SandboxError(f"node {self.index} stopped: {reason}")
                raise SandboxError(
                    f"node {self.index} exited with code {code}; see {self.log_path}:\n"
                    + _tail(self.log_path)
                )
            with contextlib.suppress(OSError, ValueError):
                ports = json.loads(self.ports_path.read_text())
                if ports.get("node_id"):
                    self.ports = ports
                    return
            time.sleep(POLL_INTERVAL_S)
        raise SandboxError(
            f"node {self.index} did not start in {timeout_s:.0f}s; see {self.log_path}"
        )

    def fatal_reason(self) -> str | None:
        """Why the node stopped, as its host recorded it in ports.json (None if it did not)."""
        with contextlib.suppress(OSError, ValueError):
            reason = json.loads(self.ports_path.read_text()).get("fatal")
            if isinstance(reason, str) and reason:
                return reason
        return None

    def stop(self, timeout_s: float = 10.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill(self) -> None:
        """kill -9 the host and the enclave (a crash, for fault tests)."""
        for pid in (self.ports.get("enclave_pid"), self.ports.get("host_pid")):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        if self.process is not None:
            self.process.wait()


class Sandbox:
    """A network of `nodes` nodes in `workspace`; see the module docstring."""

    def __init__(
        self,
        workspace: Path = DEFAULT_WORKSPACE,
        *,
        nodes: int = 3,
        port_base: int | None = None,
        app: str = "charter.enclave_app.samples.logging",
        signature_tx_count: int = 100,
        signature_delay_ms: int = 50,
        election_timeout_ms: tuple[int, int] = (1000, 2000),
        ledger_chunk_bytes: int = 5_000_000,
        configure_node: Callable[[int, dict[str, Any]], None] | None = None,
        node_launcher: Callable[[int], list[str]] | None = None,
    ) -> None:
        if nodes < 1:
            raise SandboxError("a network needs at least one node")
        self.workspace = workspace.resolve()
        self.node_count = nodes
        self.port_base = port_base
        # Ports this sandbox chose for its nodes: each one distinct.
        self._ports_taken: set[int] = set()
        self.app = app
        self.signature_tx_count = signature_tx_count
        self.signature_delay_ms = signature_delay_ms
        self.election_timeout_ms = election_timeout_ms
        self.ledger_chunk_bytes = ledger_chunk_bytes
        # Lets a caller (tests) adjust each node's config before it is written.
        self.configure_node = configure_node
        # Lets a caller run node i's host process under a command prefix (`NodeProcess.launcher`).
        self.node_launcher = node_launcher
        self.nodes: list[NodeProcess] = []
        self.resumed = False
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ files
    @property
    def network_path(self) -> Path:
        return self.workspace / "network.json"

    @property
    def service_cert_path(self) -> Path:
        return self.workspace / "service_cert.pem"

    def member_paths(self, i: int) -> tuple[Path, Path, Path]:
        d = self.workspace / "members"
        return d / f"member{i}_cert.pem", d / f"member{i}_privk.pem", d / f"member{i}_enc_pubk.pem"

    def user_paths(self, i: int) -> tuple[Path, Path]:
        d = self.workspace / "users"
        return d / f"user{i}_cert.pem", d / f"user{i}_privk.pem"

    @property
    def lock_path(self) -> Path:
        return self.workspace / LOCK_FILE_NAME

    def served_app(self) -> str:
        """The app module the nodes serve: an earlier run's choice wins over `app`."""
        configs = self.existing_configs()
        return str(configs[0].get("app", self.app)) if configs else self.app

    def holds_network(self) -> bool:
        """Whether the workspace holds a network started before (a start resumes it)."""
        return (self.workspace / "node0" / "workspace" / "sealed.bin").exists()

    def existing_configs(self, directory: Path | None = None) -> list[dict[str, Any]]:
        """The node configs an earlier run wrote, in node order (empty for a new workspace);
        those of `directory` (a `recovered<N>/` archive) when given."""
        configs = []
        for i in range(NODES_MAX):
            path = (directory or self.workspace) / f"node{i}" / "node.json"
            if not path.is_file():
                break
            with contextlib.suppress(OSError, ValueError):
                configs.append(json.loads(path.read_text()))
        return configs

    def lock(self) -> None:
        """Claim the workspace for this process, or say who holds it; changes nothing then.

        A second sandbox on a running workspace would bind the same ports, fail, and append
        its failure to the running nodes' logs: refuse before touching anything.
        """
        if self._lock_fd is not None:
            return
        self.workspace.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", errors="replace").strip() or "?"
            os.close(fd)
            raise SandboxError(
                f"a sandbox is already running on this workspace (pid {holder})"
            ) from None
        running = self._running_host_pid()
        if running is not None:
            os.close(fd)
            raise SandboxError(
                f"nodes of an earlier sandbox still run on this workspace (pid {running}); "
                f"stop them (kill {running}) or use another --workspace"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            # Closing drops the flock; the file stays (removing it could race a new holder).
            os.close(self._lock_fd)
            self._lock_fd = None

    def _running_host_pid(self) -> int | None:
        """A host process of this workspace's nodes still alive (e.g. its sandbox was killed)."""
        for i, _ in enumerate(self.existing_configs()):
            config_path = str(self.workspace / f"node{i}" / "node.json")
            with contextlib.suppress(OSError, ValueError, TypeError):
                ports = json.loads(
                    (self.workspace / f"node{i}" / "workspace" / "ports.json").read_text()
                )
                pid = int(ports["host_pid"])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if config_path.encode() in cmdline and b"charter.host" in cmdline:
                    return pid
        return None

    def prepare(self) -> None:
        """Create keys and node configs, or find those of an earlier run (resume)."""
        self.workspace.mkdir(parents=True, exist_ok=True)
        (self.workspace / "members").mkdir(exist_ok=True)
        (self.workspace / "users").mkdir(exist_ok=True)
        for i in range(MEMBER_COUNT):
            if not self.member_paths(i)[0].exists():
                generate_identity(f"member{i}", self.workspace / "members", encryption_key=True)
        for i in range(USER_COUNT):
            if not self.user_paths(i)[0].exists():
                generate_identity(f"user{i}", self.workspace / "users")
        existing = sorted(self.workspace.glob("node*/node.json"))
        self.resumed = bool(existing) and (self.workspace / "node0/workspace/sealed.bin").exists()
        if self.resumed:
            self.node_count = len(existing)
        self.nodes = [self._node(i) for i in range(self.node_count)]

    def _node(self, i: int) -> NodeProcess:
        directory = self.workspace / f"node{i}"
        config_path = directory / "node.json"
        node = NodeProcess(i, directory, config_path)
        if self.node_launcher is not None:
            node.launcher = list(self.node_launcher(i))
        if config_path.exists():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                config = json.loads(config_path.read_text())
                for field in ("rpc_address", "node_to_node_address"):
                    self._ports_taken.add(int(str(config[field]).rpartition(":")[2]))
            return node
        (directory / "workspace").mkdir(parents=True, exist_ok=True)
        if self.port_base is not None:
            rpc, n2n = self.port_base + 2 * i, self.port_base + 2 * i + 1
        else:
            rpc, n2n = free_port(self._ports_taken), free_port(self._ports_taken)
        start: dict[str, Any]
        if i == 0:
            start = {
                "mode": "start",
                "members": [
                    {
                        "cert": str(self.member_paths(m)[0]),
                        "encryption_key": str(self.member_paths(m)[2]),
                    }
                    for m in range(MEMBER_COUNT)
                ],
                "service_config": {"recovery_threshold": 2},
            }
            if self.app == SCITT_MODULE:
                # Receipts name the address the service is reached at, so that verifiers
                # find its keys at https://<issuer>/.well-known/transparency-configuration
                # (pyscitt's DynamicTrustStore); subject as scitt-ccf-ledger's deployments.
                start["cose_signatures"] = {
                    "issuer": f"127.0.0.1:{rpc}",
                    "subject": SCITT_COSE_SUBJECT,
                }
        else:
            start = {
                "mode": "join",
                "join": {
                    "target": self._node_address(0),
                    "service_cert": str(self.service_cert_path),
                },
            }
        config = {
            "workspace": str(directory / "workspace"),
            "rpc_address": f"127.0.0.1:{rpc}",
            "node_to_node_address": f"127.0.0.1:{n2n}",
            "app": self.app,
            "signatures": {
                "tx_count": self.signature_tx_count,
                "delay_ms": self.signature_delay_ms,
            },
            "consensus": {
                "election_timeout_ms": list(self.election_timeout_ms),
                "heartbeat_ms": 100,
            },
            "ledger_chunk_bytes": self.ledger_chunk_bytes,
            # A local sandbox is reached as 127.0.0.1 or as localhost: its certificates name
            # both (a node certificate carries only the names its config lists).
            "rpc_interface": {"subject_alt_names": list(SANDBOX_SUBJECT_ALT_NAMES)},
            "start": start,
        }
        if self.configure_node is not None:
            self.configure_node(i, config)
        config_path.write_text(json.dumps(config, indent=2))
        return node

    def _node_address(self, i: int) -> str:
        config = json.loads((self.workspace / f"node{i}" / "node.json").read_text())
        return str(config["rpc_address"])

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start (or resume) every node and open the service; then write network.json.

        The other nodes boot together: on a resumed network each restarts on its own
        ledger at once; on a new one they start as soon as the service certificate they pin
        exists, join while the members open the service, and are trusted in one proposal."""
        self.lock()
        self.prepare()
        first, rest = self.nodes[0], self.nodes[1:]
        if self.resumed:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                await asyncio.to_thread(node.wait_started)
            for node in rest:
                await self.wait_part_of_network(node)
        else:
            first.start()
            await asyncio.to_thread(first.wait_started)
            self.service_cert_path.write_text(await _fetch_service_cert(first.rpc_address))
            for node in rest:
                node.start()
            await self.open_service()
            await self._admit(rest)
        await self.wait_for_primary()
        self.write_network()

    async def open_service(self) -> None:
        """Members activate, add the user and open the service by proposal and ballots."""
        members = self.member_identities()
        async with self.client() as client:
            for cert, key in members:
                await Member(client, cert, key).ack()
            actions: list[dict[str, Any]] = [
                {"name": "set_user", "args": {"cert": self.user_paths(i)[0].read_text()}}
                for i in range(USER_COUNT)
            ]
            actions.append({"name": "transition_service_to_open", "args": {}})
            await self.pass_proposal(client, actions)

    async def pass_proposal(self, client: CharterClient, actions: list[dict[str, Any]]) -> Any:
        members = self.member_identities()
        proposer = Member(client, *members[0])
        proposal = await proposer.propose(actions)
        for cert, key in members:
            if proposal.state != "Open":
                break
            proposal = await Member(client, cert, key).vote(proposal.proposal_id, True)
        if proposal.state != "Accepted":
            raise SandboxError(f"proposal {proposal.proposal_id} ended {proposal.state}")
        return proposal

    async def trust_node(self, node_id: str) -> None:
        await self.trust_nodes([node_id])

    async def trust_nodes(self, node_ids: list[str]) -> None:
        """Trust joining nodes by one proposal (each must have asked to join)."""
        async with self.client() as client:
            await self.pass_proposal(
                client,
                [
                    {"name": "transition_node_to_trusted", "args": {"node_id": node_id}}
                    for node_id in node_ids
                ],
            )

    async def wait_for_primary(self, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes:
                with contextlib.suppress(Exception):
                    async with self.client(node, request_timeout_s=WAIT_TRY_TIMEOUT_S) as client:
                        network = await client.network()
                        if (
                            network.get("primary_id")
                            and network.get("service_status") == ss.ServiceStatus.OPEN
                        ):
                            return str(network["primary_id"])
            await asyncio.sleep(0.2)
        raise SandboxError("no primary was elected in time")

    async def add_node(self) -> NodeProcess:
        """Grow the network: start one more node, which joins, and trust it by governance."""
        (node,) = await self.add_nodes(1)
        return node

    async def add_nodes(self, count: int) -> list[NodeProcess]:
        """Grow the network by `count` nodes at once: they start together, join, and are
        trusted in one proposal; returns once each serves as part of the network."""
        nodes = [self._node(len(self.nodes) + i) for i in range(count)]
        self.nodes.extend(nodes)
        self.node_count = len(self.nodes)
        for node in nodes:
            node.start()
        await self._admit(nodes)
        self.write_network()
        return nodes

    async def _admit(self, nodes: list[NodeProcess]) -> None:
        """Wait until started joiners have asked to join, trust them all in one proposal,
        and wait until each serves as part of the network."""
        for node in nodes:
            await asyncio.to_thread(node.wait_started)
        if nodes:
            await self.trust_nodes([node.node_id for node in nodes])
        for node in nodes:
            await self.wait_part_of_network(node)

    async def wait_part_of_network(self, node: NodeProcess, timeout_s: float = 30.0) -> None:
        """Wait until a joining node is trusted, holds the secrets, serves TLS and has
        replicated far enough to see the service open (a node that is PartOfNetwork but has
        not yet applied the opening answers /app/ with 503 FrontendNotOpen)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                async with self.client(node, request_timeout_s=WAIT_TRY_TIMEOUT_S) as client:
                    if (await client.node_state()).get("state") == "PartOfNetwork" and (
                        await client.network()
                    ).get("service_status") == ss.ServiceStatus.OPEN:
                        return
            await asyncio.sleep(0.1)
        raise SandboxError(
            f"node {node.index} did not join in {timeout_s:.0f}s; see {node.log_path}"
        )

    async def retire_node(self, node: NodeProcess) -> None:
        """Shrink the network: remove a node by governance (it retires and stops)."""
        for other in self.nodes:
            if other is node or other.process is None or other.process.poll() is not None:
                continue
            with contextlib.suppress(Exception):
                async with self.client(other) as client:
                    await self.pass_proposal(
                        client, [{"name": "remove_node", "args": {"node_id": node.node_id}}]
                    )
                    return
        raise SandboxError(f"no live node accepted the removal of node {node.index}")

    # ------------------------------------------------------------------ disaster recovery
    async def recover(self) -> None:
        """Take this workspace's dead network through disaster recovery with its own members,
        then bring the network back to its size (`charter sandbox --recover`).

        The old nodes' directories, network.json and service certificate move to
        `recovered<N>/` (nothing is deleted). A recovery node starts on a copy of the ledger
        that reaches furthest, under a new service identity; the members open it naming the
        previous and the next identity, and submit their recovery shares (each decrypted here
        with the member's encryption key) until the threshold is met; the private ledger is
        replayed and the service opens. The other nodes then join it afresh."""
        self.lock()
        archive_or_none = self.interrupted_recovery()
        if archive_or_none is not None:
            # An earlier recover() was stopped half-way: recover the network it archived, from
            # the same ledger, not the half-recovered one (whose new secrets no share covers).
            archive = archive_or_none
            self._set_aside_interrupted(archive)
            old_configs = self.existing_configs(archive)
            count = len(old_configs)
            source = self._furthest_ledger(count, archive)
        else:
            old_configs = self.existing_configs()
            if not old_configs or not self.service_cert_path.is_file():
                raise SandboxError(f"{self.workspace} holds no sandbox network to recover")
            count = len(old_configs)
            source = self._furthest_ledger(count, self.workspace)
            archive = self._archive_dead_network(count)
        ledger_copy = archive / f"node{source}" / "workspace" / "ledger"
        previous_cert = archive / "service_cert.pem"
        self.app = str(old_configs[0].get("app", self.app))
        first = self._recovery_node(ledger_copy, previous_cert)
        self.nodes = [first]
        first.start()
        await asyncio.to_thread(first.wait_started, RECOVERY_START_TIMEOUT_S)
        self.service_cert_path.write_text(await _fetch_service_cert(first.rpc_address))
        await self._open_recovered(previous_cert.read_text(), self.service_cert_path.read_text())
        rest = [self._node(i) for i in range(1, count)]
        self.nodes.extend(rest)
        for node in rest:
            node.start()
        await self._admit(rest)
        await self.wait_for_primary()
        self.write_network()

    def interrupted_recovery(self) -> Path | None:
        """The `recovered<N>/` archive of an earlier `recover()` that did not finish (it
        writes network.json last), or None. Its dead network is the one to recover still."""
        if self.network_path.exists():
            return None
        k = 1
        while (self.workspace / f"recovered{k}").exists():
            k += 1
        if k == 1:
            return None
        archive = self.workspace / f"recovered{k - 1}"
        if not (archive / "service_cert.pem").is_file() or not self.existing_configs(archive):
            return None
        return archive

    def configs_to_recover(self) -> list[dict[str, Any]]:
        """The configs of the nodes `recover()` will bring back."""
        archive = self.interrupted_recovery()
        return self.existing_configs(archive) if archive is not None else self.existing_configs()

    def _set_aside_interrupted(self, archive: Path) -> None:
        """Move what an interrupted recover() started (its nodes, its new service certificate)
        into `archive/interrupted<M>/`: nothing is deleted, and node<i>/ are free again."""
        m = 1
        while (archive / f"interrupted{m}").exists():
            m += 1
        aside = archive / f"interrupted{m}"
        aside.mkdir()
        for i in range(NODES_MAX):
            node_dir = self.workspace / f"node{i}"
            if not node_dir.exists():
                break
            node_dir.rename(aside / f"node{i}")
        if self.service_cert_path.exists():
            self.service_cert_path.rename(aside / "service_cert.pem")
        self._ports_taken.clear()

    def _furthest_ledger(self, count: int, directory: Path) -> int:
        """Which old node left the largest ledger (any node's may serve: the recovery cuts it
        back to its last valid signature; the largest holds the most of what committed)."""
        from charter.cli_recovery_start import ledger_copy_plan

        best: tuple[int, int] | None = None
        for i in range(count):
            ledger = directory / f"node{i}" / "workspace" / "ledger"
            try:
                plan = ledger_copy_plan(ledger)
            except ValueError:
                continue
            reach = sum(path.stat().st_size for path, _ in plan)
            if best is None or reach > best[0]:
                best = (reach, i)
        if best is None:
            raise SandboxError(f"no node of {self.workspace} left a ledger to recover from")
        return best[1]

    def _archive_dead_network(self, count: int) -> Path:
        k = 1
        while (self.workspace / f"recovered{k}").exists():
            k += 1
        archive = self.workspace / f"recovered{k}"
        archive.mkdir()
        for i in range(count):
            (self.workspace / f"node{i}").rename(archive / f"node{i}")
        self.service_cert_path.rename(archive / "service_cert.pem")
        if self.network_path.exists():
            self.network_path.rename(archive / "network.json")
        self._ports_taken.clear()
        return archive

    def _recovery_node(self, ledger: Path, previous_cert: Path) -> NodeProcess:
        """Node 0 of the recovered network: the sandbox's own config, in start mode
        `recover`, over a copy of the old ledger (`charter recovery start`'s layout)."""
        from charter.cli_recovery_start import ledger_copy_plan

        node = self._node(0)
        copy = node.directory / "workspace" / "ledger"
        copy.mkdir(parents=True, exist_ok=True)
        try:
            plan = ledger_copy_plan(ledger)
        except ValueError as exc:
            raise SandboxError(f"cannot recover: {exc}") from None
        for path, name in plan:
            shutil.copy2(path, copy / name)
        previous = node.directory / "previous_service_cert.pem"
        shutil.copy2(previous_cert, previous)
        config = json.loads(node.config_path.read_text())
        config["start"] = {"mode": "recover", "previous_service_identity": str(previous)}
        node.config_path.write_text(json.dumps(config, indent=2))
        return node

    async def _open_recovered(self, previous_cert: str, next_cert: str) -> None:
        """The members' part: open naming both identities, then shares up to the threshold."""
        async with self.client() as client:
            await self.pass_proposal(
                client,
                [
                    {
                        "name": "transition_service_to_open",
                        "args": {
                            "previous_service_identity": previous_cert,
                            "next_service_identity": next_cert,
                        },
                    }
                ],
            )
            await self._wait_service_status(client, ss.ServiceStatus.WAITING_FOR_RECOVERY_SHARES)
            for i, (cert, key) in enumerate(self.member_identities()):
                status = await client.recovery_status()
                waiting = (
                    status.get("serviceStatus") == ss.ServiceStatus.WAITING_FOR_RECOVERY_SHARES
                )
                if not waiting or not status.get("stillNeeded"):
                    break  # the threshold is met: the private ledger is being replayed
                await Member(client, cert, key).recover(self.member_encryption_key(i))
            await self._wait_service_status(client, ss.ServiceStatus.OPEN)

    async def _wait_service_status(
        self, client: CharterClient, status: str, timeout_s: float = RECOVERY_START_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + timeout_s
        seen: object = None
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                seen = (await client.network()).get("service_status")
                if seen == status:
                    return
            await asyncio.sleep(0.1)
        raise SandboxError(f"the recovered service did not reach {status} (it is {seen})")

    def member_encryption_key(self, i: int) -> Path:
        """Member i's RSA encryption private key (recovery shares are encrypted to it)."""
        return self.workspace / "members" / f"member{i}_enc_privk.pem"

    def member_identities(self) -> list[tuple[Path, Path]]:
        return [self.member_paths(i)[:2] for i in range(MEMBER_COUNT)]

    def client(
        self,
        node: NodeProcess | None = None,
        *,
        user: int | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
    ) -> CharterClient:
        live = [n for n in self.nodes if n.process is not None and n.process.poll() is None]
        target = node or (live[0] if live else self.nodes[0])
        cert = key = None
        if user is not None:
            cert, key = self.user_paths(user)
        return CharterClient(
            target.url,
            self.service_cert_path,
            cert_path=cert,
            key_path=key,
            request_timeout_s=request_timeout_s,
        )

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.unlock()

    def write_network(self) -> None:
        doc = {
            "service_cert": str(self.service_cert_path),
            "nodes": [
                {
                    "node_id": node.node_id,
                    "rpc_address": node.rpc_address,
                    "host_pid": node.ports.get("host_pid"),
                    "enclave_pid": node.ports.get("enclave_pid"),
                    "ledger_dir": str(node.directory / "workspace" / "ledger"),
                    "snapshots_dir": str(node.directory / "workspace" / "snapshots"),
                    "log": str(node.log_path),
                }
                for node in self.nodes
            ],
            "members": [
                {
                    "id": _cert_id(self.member_paths(i)[0]),
                    "cert": str(self.member_paths(i)[0]),
                    "key": str(self.member_paths(i)[1]),
                    "encryption_key": str(self.member_paths(i)[2]).replace(
                        "_enc_pubk", "_enc_privk"
                    ),
                }
                for i in range(MEMBER_COUNT)
            ],
            "users": [
                {
                    "id": _cert_id(self.user_paths(i)[0]),
                    "cert": str(self.user_paths(i)[0]),
                    "key": str(self.user_paths(i)[1]),
                }
                for i in range(USER_COUNT)
            ],
        }
        tmp = self.network_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(self.network_path)


def _cert_id(path: Path) -> str:
    from charter.ledger import certs

    return certs.cert_id(path.read_text())


async def _fetch_service_cert(address: str) -> str:
    """The service certificate, read once from the node this sandbox just started itself."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
    writer.write(
        f"GET /node/network HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    data = await reader.read()
    writer.close()
    body = data.split(b"\r\n\r\n", 1)[1]
    cert = json.loads(body)["service_certificate"]
    if not isinstance(cert, str) or "BEGIN CERTIFICATE" not in cert:
        raise SandboxError("the first node did not return a service certificate")
    return cert


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
