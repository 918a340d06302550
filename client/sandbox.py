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
import json
import os
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
from charter.member import Member
from charter.sdk import CharterClient

DEFAULT_WORKSPACE = Path("workspace/sandbox")
SCITT_COSE_SUBJECT = "scitt.ccf.signature.v1"
MEMBER_COUNT = 3
USER_COUNT = 1
NODE_START_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.05


class SandboxError(Exception):
    """A sandbox step that failed, with a message a person can act on."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(slots=True)
class NodeProcess:
    """One node: its config, its host process, and what the host reported."""

    index: int
    directory: Path
    config_path: Path
    process: subprocess.Popen[bytes] | None = None
    ports: dict[str, Any] = field(default_factory=dict)

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
            [sys.executable, "-m", "charter.host", "--config", str(self.config_path)],
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
    ) -> None:
        if nodes < 1:
            raise SandboxError("a network needs at least one node")
        self.workspace = workspace.resolve()
        self.node_count = nodes
        self.port_base = port_base
        self.app = app
        self.signature_tx_count = signature_tx_count
        self.signature_delay_ms = signature_delay_ms
        self.election_timeout_ms = election_timeout_ms
        self.ledger_chunk_bytes = ledger_chunk_bytes
        # Lets a caller (tests) adjust each node's config before it is written.
        self.configure_node = configure_node
        self.nodes: list[NodeProcess] = []
        self.resumed = False

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
        if config_path.exists():
            return node
        (directory / "workspace").mkdir(parents=True, exist_ok=True)
        if self.port_base is not None:
            rpc, n2n = self.port_base + 2 * i, self.port_base + 2 * i + 1
        else:
            rpc, n2n = free_port(), free_port()
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
            if self.app == APPS["scitt"]:
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
        """Start (or resume) every node and open the service; then write network.json."""
        self.prepare()
        first = self.nodes[0]
        first.start()
        await asyncio.to_thread(first.wait_started)
        if not self.resumed:
            self.service_cert_path.write_text(await _fetch_service_cert(first.rpc_address))
            await self.open_service()
        for node in self.nodes[1:]:
            node.start()
            await asyncio.to_thread(node.wait_started)
            if not self.resumed:
                await self.trust_node(node.node_id)
            await self.wait_part_of_network(node)
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
        async with self.client() as client:
            await self.pass_proposal(
                client, [{"name": "transition_node_to_trusted", "args": {"node_id": node_id}}]
            )

    async def wait_for_primary(self, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes:
                with contextlib.suppress(Exception):
                    async with self.client(node) as client:
                        network = await client.network()
                        if network.get("primary_id") and network.get("service_status") == "Open":
                            return str(network["primary_id"])
            await asyncio.sleep(0.2)
        raise SandboxError("no primary was elected in time")

    async def add_node(self) -> NodeProcess:
        """Grow the network: start one more node, which joins, and trust it by governance."""
        node = self._node(len(self.nodes))
        self.nodes.append(node)
        self.node_count = len(self.nodes)
        node.start()
        await asyncio.to_thread(node.wait_started)
        await self.trust_node(node.node_id)
        await self.wait_part_of_network(node)
        self.write_network()
        return node

    async def wait_part_of_network(self, node: NodeProcess, timeout_s: float = 30.0) -> None:
        """Wait until a joining node is trusted, holds the secrets and serves TLS."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                async with self.client(node) as client:
                    if (await client.node_state()).get("state") == "PartOfNetwork":
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

    def member_identities(self) -> list[tuple[Path, Path]]:
        return [self.member_paths(i)[:2] for i in range(MEMBER_COUNT)]

    def client(self, node: NodeProcess | None = None, *, user: int | None = None) -> CharterClient:
        live = [n for n in self.nodes if n.process is not None and n.process.poll() is None]
        target = node or (live[0] if live else self.nodes[0])
        cert = key = None
        if user is not None:
            cert, key = self.user_paths(user)
        return CharterClient(target.url, self.service_cert_path, cert_path=cert, key_path=key)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()

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


# ---------------------------------------------------------------------------------------------
# The command: `charter sandbox [--nodes N] [--workspace DIR] [--port-base P] [--app MODULE]`

APPS = {
    "logging": "charter.enclave_app.samples.logging",
    "acl": "charter.enclave_app.samples.acl",
    "scitt": "charter.enclave_app.samples.scitt",
}


def _example_lines(
    sandbox: Sandbox, url: str, cert: Path, user_cert: Path, user_key: Path
) -> list[str]:
    """A ready command that writes a record with the app being served."""
    if sandbox.app == APPS["acl"]:
        return [
            "Write a ledger entry as user0 (Azure Confidential Ledger API; see docs/acl.md):",
            f"  curl '{url}/app/transactions?api-version=2022-05-13' --cacert {cert} \\",
            f"    --cert {user_cert} --key {user_key} \\",
            """    -H 'Content-Type: application/json' -d '{"contents": "hello"}' -i""",
        ]
    return [
        "Write a private record as user0:",
        f"  curl {url}/app/log/private --cacert {cert} \\",
        f"    --cert {user_cert} --key {user_key} \\",
        """    -H 'Content-Type: application/json' -d '{"id": 1, "msg": "hello"}' -i""",
    ]


def panel_text(sandbox: Sandbox) -> str:
    user_cert, user_key = sandbox.user_paths(0)
    first = sandbox.nodes[0]
    cert = sandbox.service_cert_path
    lines = ["Nodes:"]
    for node in sandbox.nodes:
        lines.append(
            f"  node{node.index}  {node.url}  id {node.node_id[:16]}…  log {node.log_path}"
        )
    lines += [
        "",
        f"Service certificate: {cert}",
        f"Members (keys, certs): {sandbox.workspace / 'members'}",
        f"Users (keys, certs):   {sandbox.workspace / 'users'}",
        f"Network description:   {sandbox.network_path}",
        f"Console (browser):     {first.url}/console",
        "",
        *_example_lines(sandbox, first.url, cert, user_cert, user_key),
        "",
        "Get and verify the receipt of the transaction id it returned (x-ms-ccf-transaction-id):",
        f"  charter receipt get <txid> --network {sandbox.network_path} --verify",
        "",
        "Audit a node's ledger offline (its last chunk is still open while it runs):",
        f"  charter ledger audit {first.directory / 'workspace' / 'ledger'} --include-uncommitted",
    ]
    return "\n".join(lines)


async def _status_line(sandbox: Sandbox) -> str:
    for node in sandbox.nodes:
        with contextlib.suppress(Exception):
            async with sandbox.client(node) as client:
                network = await client.network()
                commit = await client.get_json("/node/commit")
                primary = str(network.get("primary_id") or "?")[:12]
                return f"primary {primary}…  commit {commit.get('transaction_id')}"
    return "no node answers"


async def _serve(sandbox: Sandbox) -> int:
    from rich.console import Console

    console = Console()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    verb = "Resuming" if sandbox.workspace.joinpath("network.json").exists() else "Starting"
    console.print(f"{verb} a {sandbox.node_count}-node network in {sandbox.workspace} …")
    try:
        await sandbox.start()
    except BaseException:
        sandbox.stop()
        raise
    # A ruled panel whose lines never wrap, so the commands copy and paste whole.
    console.rule("[bold]Charter sandbox is open")
    console.print(panel_text(sandbox), soft_wrap=True, highlight=False, markup=False)
    console.rule()
    console.print("Press Ctrl-C to stop.")
    last_commit = None
    last_time = time.monotonic()
    try:
        while not stop.is_set():
            line = await _status_line(sandbox)
            for node in sandbox.nodes:
                if node.process is not None and node.process.poll() is not None:
                    console.print(f"node{node.index} stopped (code {node.process.returncode})")
            now = time.monotonic()
            seqno = line.rpartition(".")[2] if "commit" in line else None
            rate = ""
            if seqno and seqno.isdigit() and last_commit is not None:
                rate = f"  {(int(seqno) - last_commit) / max(now - last_time, 1e-6):.0f} tx/s"
            if seqno and seqno.isdigit():
                last_commit, last_time = int(seqno), now
            if console.is_terminal:
                console.print(f"\r{line}{rate}      ", end="")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
    finally:
        console.print("\nStopping the network …")
        await asyncio.to_thread(sandbox.stop)
        console.print("Stopped.")
    return 0


def run(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="charter sandbox", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    parser.add_argument("--workspace", type=Path, default=DEFAULT_WORKSPACE)
    parser.add_argument("--port-base", type=int, default=None, help="first port (else free ports)")
    parser.add_argument(
        "--app", default="logging", help="logging (default), acl, scitt, or a module path"
    )
    args = parser.parse_args(argv)
    sandbox = Sandbox(
        args.workspace, nodes=args.nodes, port_base=args.port_base, app=APPS.get(args.app, args.app)
    )
    try:
        return asyncio.run(_serve(sandbox))
    except SandboxError as exc:
        print(f"charter sandbox: {exc}", file=sys.stderr)
        return 1
