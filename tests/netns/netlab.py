"""Hosts that are real network stacks: one Linux network namespace per node, on a bridge.

`NetLab(nodes)` creates, with `ip`, a bridge in the caller's namespace (the "LAN" or "WAN",
with an address of its own: the test process talks to nodes through it, as a client would)
and one namespace per node, joined to the bridge by a veth pair, each with its own address
(10.X.Y.i+1/24). Every name carries a tag unique to this lab (pid + counter), so parallel
pytest-xdist workers never collide; `close()` deletes everything it created, and the lab is
a context manager so a failing test still cleans up.

Each node's host process runs inside its namespace (`launcher(i)` = `ip netns exec NS`), binds
its own address with the same ports on every "machine" (`RPC_PORT`, `N2N_PORT`), and so
names that address in its certificate (the node's IP SAN: there is no DNS here and we do not
touch /etc/hosts).

Faults are made where a real network makes them:
- nftables rules in each node's namespace (`inet charter` table): `cut(src, dst)` drops what
  `src` sends to `dst` (a one-way cut: each direction of node-to-node traffic is its own TCP
  connection), `isolate(i)` cuts both ways to every peer, `heal()` removes all cuts, and
  `set_loss(ratio)` drops that share of every packet a node sends (`numgen random`).
- delay and jitter: this kernel has no netem, so `DelayProxy` (asyncio, on a thread of the
  test process) stands between every pair of nodes. Each node publishes a port of the proxy
  as its node-to-node address; the proxy knows the dialling node by its source address, so
  it delays each link (src -> dst) by its own profile, keeping TCP's byte order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

RPC_PORT = 8443
N2N_PORT = 8444
PROXY_PORT_BASE = 9100
NODES_MAX = 16
COMMAND_TIMEOUT_S = 30.0
# The proxy reads at most this much at once, and queues at most this many chunks per
# direction of a link (64 MiB): past that it stops reading, and TCP pushes back.
PROXY_CHUNK_BYTES = 64 * 1024
PROXY_QUEUE_CHUNKS_MAX = 1024
PROXY_CONNECT_TIMEOUT_S = 5.0
_counter = itertools.count()


class NetLabUnavailable(Exception):
    """Namespaces cannot be made here (not root, no `ip`/`nft`): the reason, for a skip."""


@dataclass(frozen=True, slots=True)
class LinkDelay:
    """One-way delay of a link: uniform in [delay_ms - jitter_ms, delay_ms + jitter_ms]."""

    delay_ms: float
    jitter_ms: float = 0.0

    def sample_s(self, rng: random.Random) -> float:
        low = max(0.0, self.delay_ms - self.jitter_ms)
        return rng.uniform(low, self.delay_ms + self.jitter_ms) / 1000.0


@dataclass(frozen=True, slots=True)
class WanProfile:
    """What distance does to node-to-node traffic: a default one-way delay per link, some
    slower links (unordered pairs of node indexes), and a share of packets lost."""

    name: str
    delay: LinkDelay
    loss_ratio: float = 0.0
    slow_links: dict[frozenset[int], LinkDelay] = field(default_factory=dict)

    def link(self, src: int, dst: int) -> LinkDelay:
        return self.slow_links.get(frozenset((src, dst)), self.delay)

    def describe(self) -> str:
        slow = ", ".join(
            f"{'-'.join(map(str, sorted(k)))} at {v.delay_ms:g} ms"
            for k, v in self.slow_links.items()
        )
        return (
            f"{self.name}: {self.delay.delay_ms:g} ms ± {self.delay.jitter_ms:g} ms one way, "
            f"{self.loss_ratio * 100:g}% loss" + (f", {slow}" if slow else "")
        )


PROFILES: dict[str, WanProfile] = {
    # Same rack: only the proxy's own cost.
    "lan": WanProfile("lan", LinkDelay(0.0)),
    # The profile: three data centres on one continent, one of them far.
    "wan": WanProfile(
        "wan", LinkDelay(40.0, 10.0), 0.005, {frozenset((0, 2)): LinkDelay(120.0, 10.0)}
    ),
    # Organisations on three continents.
    "intercontinental": WanProfile("intercontinental", LinkDelay(120.0, 20.0), 0.01),
    # A poor link everywhere: much loss.
    "lossy": WanProfile("lossy", LinkDelay(40.0, 10.0), 0.03),
}


def _run(*args: str, check: bool = True, stdin: str | None = None) -> str:
    proc = subprocess.run(
        list(args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def ensure_nftables() -> None:
    """Install Debian's nftables package when `nft` is missing (as .ci/run does for
    chromium); a failure leaves it missing, and `NetLab.create` says so."""
    if shutil.which("nft") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=300, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "nftables"], capture_output=True, timeout=300, env=env
        )


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    ensure_nftables()
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: iproute2 / nftables)"
    probe = f"chprobe{os.getpid()}"
    try:
        _run("ip", "netns", "add", probe)
    except RuntimeError as exc:
        return f"cannot create a network namespace: {exc}"
    _run("ip", "netns", "del", probe, check=False)
    return None


def _subnet_free(prefix: str) -> bool:
    return f" {prefix}." not in " " + _run("ip", "-4", "addr", "show").replace("inet ", " ")


class NetLab:
    """`nodes` namespaces on one bridge; see the module docstring."""

    def __init__(self, nodes: int) -> None:
        assert 1 <= nodes <= NODES_MAX
        self.nodes = nodes
        n = next(_counter)
        self.tag = f"{os.getpid() % 100000:05d}{n % 100:02d}"
        seed = os.getpid() * 131 + n
        self.prefix = ""
        for attempt in range(64):
            candidate = f"10.{200 + (seed + attempt) // 250 % 50}.{(seed + attempt) % 250}"
            if _subnet_free(candidate):
                self.prefix = candidate
                break
        if not self.prefix:
            raise NetLabUnavailable("no free 10.x.y.0/24 subnet for the lab")
        self.bridge = f"chb{self.tag}"
        self._created_ns: list[str] = []
        self._bridge_created = False

    # ------------------------------------------------------------------ names and addresses
    def ns(self, i: int) -> str:
        return f"ch{self.tag}n{i}"

    def ip(self, i: int) -> str:
        return f"{self.prefix}.{i + 1}"

    @property
    def gateway_ip(self) -> str:
        """The bridge's address: the test process (clients, the delay proxy) lives here."""
        return f"{self.prefix}.254"

    def rpc_address(self, i: int) -> str:
        return f"{self.ip(i)}:{RPC_PORT}"

    def n2n_address(self, i: int) -> str:
        return f"{self.ip(i)}:{N2N_PORT}"

    def proxy_address(self, i: int) -> str:
        return f"{self.gateway_ip}:{PROXY_PORT_BASE + i}"

    def index_of(self, ip: str) -> int | None:
        for i in range(self.nodes):
            if self.ip(i) == ip:
                return i
        return None

    def launcher(self, i: int) -> list[str]:
        """The command prefix that runs a program on node i's "machine"."""
        return ["ip", "netns", "exec", self.ns(i)]

    def exec(self, i: int, *args: str, stdin: str | None = None) -> str:
        return _run(*self.launcher(i), *args, stdin=stdin)

    # ------------------------------------------------------------------ lifecycle
    def create(self) -> NetLab:
        reason = unavailable_reason()
        if reason is not None:
            raise NetLabUnavailable(reason)
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self._bridge_created = True
            _run("ip", "addr", "add", f"{self.gateway_ip}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i in range(self.nodes):
                ns, veth = self.ns(i), f"chv{self.tag}{i}"
                _run("ip", "netns", "add", ns)
                self._created_ns.append(ns)
                _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _run("ip", "link", "set", veth, "master", self.bridge, "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                self.exec(i, "nft", "-f", "-", stdin=_BASE_RULES)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Delete what this lab created. Processes still running in its namespaces were
        started in them by this lab's user: they are killed first (by pid)."""
        for ns in self._created_ns:
            pids = _run("ip", "netns", "pids", ns, check=False).split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            _run("ip", "netns", "del", ns, check=False)
        self._created_ns = []
        if self._bridge_created:
            _run("ip", "link", "del", self.bridge, check=False)
            self._bridge_created = False

    def __enter__(self) -> NetLab:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ faults (nftables)
    def cut(self, src: int, dst: int) -> None:
        """Drop everything `src` sends to `dst` (directly, or through dst's proxy port)."""
        port = PROXY_PORT_BASE + dst
        rules = (
            f"add rule inet charter cuts ip daddr {self.ip(dst)} drop\n"
            f"add rule inet charter cuts ip daddr {self.gateway_ip} tcp dport {port} drop\n"
        )
        self.exec(src, "nft", "-f", "-", stdin=rules)

    def isolate(self, i: int) -> None:
        """Cut node i off from every peer, both ways (clients on the bridge still reach it)."""
        for j in range(self.nodes):
            if j != i:
                self.cut(i, j)
                self.cut(j, i)

    def heal(self) -> None:
        for i in range(self.nodes):
            self.exec(i, "nft", "flush", "chain", "inet", "charter", "cuts")

    def set_loss(self, ratio: float) -> None:
        """Drop `ratio` of the packets every node sends (0 removes the rule)."""
        assert 0.0 <= ratio < 1.0
        per_100k = round(ratio * 100_000)
        for i in range(self.nodes):
            rules = "flush chain inet charter loss\n"
            if per_100k:
                rules += (
                    f'add rule inet charter loss oifname "eth0" '
                    f"numgen random mod 100000 < {per_100k} drop\n"
                )
            self.exec(i, "nft", "-f", "-", stdin=rules)

    def ruleset(self, i: int) -> str:
        return self.exec(i, "nft", "list", "table", "inet", "charter")


# The table every node namespace starts with: an output hook that jumps to the cut and loss
# chains, both empty until a test adds rules.
_BASE_RULES = """
table inet charter {
    chain cuts {
    }
    chain loss {
    }
    chain output {
        type filter hook output priority 0; policy accept;
        jump cuts
        jump loss
    }
}
"""


@contextlib.contextmanager
def netlab(nodes: int) -> Iterator[NetLab]:
    lab = NetLab(nodes)
    with lab:
        yield lab


# ---------------------------------------------------------------------------------------------
# Delay and jitter: a TCP proxy per link


class DelayProxy:
    """Listens on `lab.proxy_address(j)` for every node j and forwards to j's real
    node-to-node port, delaying each direction by the profile's link delay. Its own asyncio
    loop runs on a daemon thread; `start()`/`stop()` are called from any thread."""

    def __init__(self, lab: NetLab, profile: WanProfile, *, seed: int = 0) -> None:
        self.lab = lab
        self.profile = profile
        self.rng = random.Random(seed)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.links_opened: dict[tuple[int, int], int] = {}

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(COMMAND_TIMEOUT_S)

    def start(self) -> DelayProxy:
        self._thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        for j in range(self.lab.nodes):
            host, _, port = self.lab.proxy_address(j).rpartition(":")

            async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter, dst: int = j) -> None:
                await self._serve(r, w, dst)

            server = await asyncio.start_server(serve, host, int(port), reuse_address=True)
            self._servers.append(server)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dst: int
    ) -> None:
        task = asyncio.current_task()
        if task is not None:  # stopped with the proxy, like the pumps
            self._tasks.add(task)  # type: ignore[arg-type]
            task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]
        peer_ip = writer.get_extra_info("peername")[0]
        src = self.lab.index_of(peer_ip)
        if src is None:
            writer.close()
            return
        self.links_opened[(src, dst)] = self.links_opened.get((src, dst), 0) + 1
        host, _, port = self.lab.n2n_address(dst).rpartition(":")
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port)), PROXY_CONNECT_TIMEOUT_S
            )
        except (TimeoutError, OSError):
            writer.close()
            return
        tasks = [
            asyncio.ensure_future(self._pump(reader, up_writer, self.profile.link(src, dst))),
            asyncio.ensure_future(self._pump(up_reader, writer, self.profile.link(dst, src))),
        ]
        for task in tasks:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: LinkDelay
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(PROXY_QUEUE_CHUNKS_MAX)

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.write_eof()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        last_due = 0.0
        try:
            while True:
                data = await reader.read(PROXY_CHUNK_BYTES)
                # Jitter never reorders a stream: a chunk leaves no earlier than the one before.
                last_due = max(last_due, time.monotonic() + delay.sample_s(self.rng))
                await queue.put((last_due, data))
                if not data:
                    break
            await sender
        except (OSError, ConnectionError):
            pass
        finally:
            sender.cancel()


def wait_port(address: str, timeout_s: float = 10.0) -> None:
    """Until something accepts TCP connections at `address`."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), 1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
