"""Shared helpers for the end-to-end tests: networks of real node processes, and checks.

Everything here drives real processes through their public surfaces (HTTPS, files on disk,
signals); nothing is mocked. Failures carry the tail of every node's log, because an
end-to-end failure without the nodes' own story is not actionable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography import x509

from charter.errors import CharterError
from charter.identity import TxId
from charter.ledger.chunks import LedgerReader
from charter.ledger.receipt import verify_json_receipt
from charter.sandbox import WAIT_TRY_TIMEOUT_S, NodeProcess, Sandbox

# Short timeouts so that elections and commits happen in well under a second on 2 cores.
ELECTION_TIMEOUT_MS = (300, 600)
SIGNATURE_DELAY_MS = 20
LEDGER_CHUNK_BYTES = 4096
READY_TIMEOUT_S = 30.0
COMMIT_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 25
# The folders a node runs (host + enclave) and where the wheel installs each, as pyproject.toml's
# package-dir maps them (`client/` is `charter` itself); see `snapshot_code`.
NODE_PACKAGES = {
    "client": "charter",
    "enclave_app": "charter/enclave_app",
    "ledger": "charter/ledger",
    "consensus": "charter/consensus",
    "governance": "charter/governance",
    "host": "charter/host",
}
REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# A frozen copy of the node code


@contextlib.contextmanager
def snapshot_code(directory: Path) -> Iterator[Path]:
    """Run node processes from a copy of the code taken now.

    A node's measurement is a hash of the enclave's source files, and a joining node must
    present an accepted one: if the files change while a network runs (several engineers edit
    this tree at once), later joiners would be refused. Nodes started from one snapshot all
    run, and measure, the same code. The copy is laid out as the wheel installs it (a `charter`
    package), so that `python -m charter.host` finds it on PYTHONPATH before the editable
    install's finder (which sys.meta_path consults last) maps `charter` back to this tree.
    PYTHONSAFEPATH keeps `python -m charter.host` from preferring the working directory over
    PYTHONPATH.
    """
    target = directory / "code"
    for folder, installed_as in NODE_PACKAGES.items():
        shutil.copytree(
            REPO_ROOT / folder,
            target / installed_as,
            ignore=shutil.ignore_patterns("__pycache__"),
            dirs_exist_ok=True,
        )
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PYTHONSAFEPATH")}
    os.environ["PYTHONPATH"] = str(target)
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield target
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------------------------------------
# App code outside the code copy: one version of an app per node


def app_version(directory: Path, module: str, *, note: str = "") -> Path:
    """A copy of the logging sample as top-level module `module` in `directory`.

    A `note` is appended as a comment: the app behaves the same but is another version of
    the code, with its own measurement (the measurement covers the app module's bytes).
    """
    source = (REPO_ROOT / "enclave_app" / "samples" / "logging.py").read_text()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{module}.py").write_text(source + (f"\n# {note}\n" if note else ""))
    return directory


@contextlib.contextmanager
def app_on_path(directory: Path) -> Iterator[None]:
    """Node processes started inside the block find app modules in `directory` as well.

    A node's host passes PYTHONPATH on to its enclave, so nodes started from different
    blocks serve different versions of the same app module; nodes already running keep
    theirs.
    """
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (saved, str(directory)) if p)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


_MEASURE = """
import sys
from charter.enclave_app.platform import code_measurement
print(code_measurement(app_module=sys.argv[1]))
"""


def measure_code(app_dir: Path, module: str) -> str:
    """The code measurement of nodes serving `module` from `app_dir`, computed from the code
    on disk as a member would before approving it (operator guide, rolling upgrade)."""
    with app_on_path(app_dir):
        proc = subprocess.run(
            [sys.executable, "-c", _MEASURE, module],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    measurement = proc.stdout.strip()
    assert len(measurement) == 64, proc
    return measurement


# ---------------------------------------------------------------------------------------------
# Networks


def make_sandbox(
    workspace: Path,
    nodes: int,
    configure_node: Callable[[int, dict[str, Any]], None] | None = None,
    *,
    app: str = "charter.enclave_app.samples.logging",
) -> Sandbox:
    return Sandbox(
        workspace,
        nodes=nodes,
        app=app,
        signature_tx_count=100,
        signature_delay_ms=SIGNATURE_DELAY_MS,
        election_timeout_ms=ELECTION_TIMEOUT_MS,
        ledger_chunk_bytes=LEDGER_CHUNK_BYTES,
        configure_node=configure_node,
    )


# Workspace -> indexes of the nodes that did not serve as PartOfNetwork the moment
# `Sandbox.start()` returned (it promises they all do); checked by a test.
NOT_SERVING_AT_START: dict[Path, list[int]] = {}


async def serving_now(sb: Sandbox, node: NodeProcess) -> bool:
    """One try, no waiting: does `node` answer /node/state over TLS as PartOfNetwork?"""
    try:
        async with sb.client(node, request_timeout_s=WAIT_TRY_TIMEOUT_S) as c:
            return (await c.node_state()).get("state") == "PartOfNetwork"
    except CharterError:
        return False


def start_sandbox(sb: Sandbox) -> Sandbox:
    """Start the network and wait until every node serves as part of it; stop all on failure."""

    async def go() -> None:
        await sb.start()
        NOT_SERVING_AT_START[sb.workspace] = [
            node.index for node in sb.nodes if not await serving_now(sb, node)
        ]
        for node in sb.nodes:
            await wait_ready(sb, node)

    try:
        asyncio.run(go())
    except BaseException as exc:
        tails = log_tails(sb)
        sb.stop()
        raise AssertionError(f"the network did not start\n{tails}") from exc
    return sb


@contextlib.contextmanager
def running_sandbox(
    workspace: Path, nodes: int, configure_node: Callable[[int, dict[str, Any]], None]
) -> Iterator[Sandbox]:
    """A started network (`make_sandbox` + `start_sandbox`), always stopped afterwards: the
    body of a module's network fixture."""
    sb = start_sandbox(make_sandbox(workspace, nodes, configure_node))
    try:
        yield sb
    finally:
        sb.stop()


def alive(node: NodeProcess) -> bool:
    return node.process is not None and node.process.poll() is None


def log_tails(sb: Sandbox, lines: int = LOG_TAIL_LINES) -> str:
    out = []
    for node in sb.nodes:
        try:
            text = node.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = ["(no log)"]
        state = "alive" if alive(node) else "down"
        out.append(f"----- node{node.index} ({state}) {node.log_path}")
        out.extend(text)
    return "\n".join(out)


async def wait_ready(sb: Sandbox, node: NodeProcess, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until `node` answers /node/state over TLS as PartOfNetwork (a joiner is Pending, and
    serves no TLS, until governance trusts it and it has the service's secrets)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            async with sb.client(node, request_timeout_s=WAIT_TRY_TIMEOUT_S) as c:
                state = await c.node_state()
                if state.get("state") == "PartOfNetwork":
                    return
                last = state
        except CharterError as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"node{node.index} not ready after {timeout_s}s: {last}\n{log_tails(sb)}")


async def primary_index(sb: Sandbox, timeout_s: float = 20.0, exclude: int | None = None) -> int:
    """Index of the node the live nodes agree is primary (and which says so itself)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ids = {n.node_id: n.index for n in sb.nodes}
        for node in sb.nodes:
            if not alive(node) or node.index == exclude:
                continue
            with contextlib.suppress(CharterError):
                async with sb.client(node) as c:
                    primary = (await c.network()).get("primary_id")
                if primary in ids and ids[primary] != exclude and alive(sb.nodes[ids[primary]]):
                    async with sb.client(sb.nodes[ids[primary]]) as c:
                        if (await c.network()).get("primary_id") == primary:
                            return ids[primary]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no primary agreed on in {timeout_s}s\n{log_tails(sb)}")


async def commit_seqno(sb: Sandbox, node: NodeProcess) -> int:
    async with sb.client(node) as c:
        return (await c.commit()).seqno


async def wait_committed_on(
    sb: Sandbox, node: NodeProcess, seqno: int, timeout_s: float = COMMIT_TIMEOUT_S
) -> int:
    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline:
        with contextlib.suppress(CharterError):
            last = await commit_seqno(sb, node)
            if last >= seqno:
                return last
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"node{node.index} commit {last} < {seqno} after {timeout_s}s\n{log_tails(sb)}"
    )


async def write(
    sb: Sandbox, node: NodeProcess, key: int, msg: str, *, public: bool = False
) -> TxId:
    path = "/app/log/public" if public else "/app/log/private"
    async with sb.client(node, user=0) as c:
        r = c.check(await c.post(path, json={"id": key, "msg": msg}))
    assert r.txid is not None, f"a write answered without a transaction id: {r}"
    return r.txid


async def read(sb: Sandbox, node: NodeProcess, key: int, *, public: bool = False) -> str | None:
    path = "/app/log/public" if public else "/app/log/private"
    async with sb.client(node, user=0) as c:
        r = await c.get(path, params={"id": str(key)})
    if r.status == 404:
        return None
    c.check(r)  # raises the typed error for anything but 2xx
    msg = r.body["msg"]
    assert isinstance(msg, str)
    return msg


# ---------------------------------------------------------------------------------------------
# Ledger and receipt checks (CCF's own tools are the oracle)

_CCF_VALIDATE = """
import json, sys
import ccf.ledger
validator = ccf.ledger.LedgerValidator(accept_deprecated_entry_types=False)
ledger = ccf.ledger.Ledger([sys.argv[1]], committed_only=True)
count = 0
for chunk in ledger:
    for tx in chunk:
        validator.add_transaction(tx)
        count += 1
print(json.dumps({"txid": str(validator.last_verified_txid()), "chunks": len(ledger),
                  "transactions": count, "status": validator.service_status}))
"""


def ccf_validate(ledger_dir: Path) -> dict[str, Any]:
    """Validate the committed chunks of a ledger directory with ccf.ledger's validator.

    In a subprocess: LedgerValidator keeps node certificates in class-level state.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _CCF_VALIDATE, str(ledger_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"ccf.ledger rejects {ledger_dir} (files {sorted(p.name for p in ledger_dir.iterdir())}):"
            f"\n{proc.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def committed_entries(ledger_dir: Path, up_to: int | None = None) -> dict[int, bytes]:
    """Entries of the committed chunk files (seqno -> raw bytes), as our reader sees them."""
    entries: dict[int, bytes] = {}
    reader = LedgerReader(str(ledger_dir), committed_only=True)
    for seqno, raw in reader.entries(1, up_to):
        entries[seqno] = bytes(raw)
    return entries


def committed_chunk_end(ledger_dir: Path) -> int:
    """Last seqno covered by a `.committed` chunk file (0 if none)."""
    end = 0
    for path in ledger_dir.glob("ledger_*-*.committed"):
        end = max(end, int(path.name.removeprefix("ledger_").split(".")[0].split("-")[1]))
    return end


def check_receipt_with_ccf(receipt: dict[str, Any], service_cert_pem: str) -> bytes:
    """Verify a JSON receipt with ccf.receipt and with ours; both must agree on the root."""
    import ccf.receipt

    components = receipt["leaf_components"]
    leaf = hashlib.sha256(
        bytes.fromhex(components["write_set_digest"])
        + hashlib.sha256(components["commit_evidence"].encode()).digest()
        + bytes.fromhex(components["claims_digest"])
    ).hexdigest()
    root = ccf.receipt.root(leaf, receipt["proof"])
    node_cert = x509.load_pem_x509_certificate(receipt["cert"].encode())
    service_cert = x509.load_pem_x509_certificate(service_cert_pem.encode())
    ccf.receipt.verify(root, receipt["signature"], node_cert)
    endorsements = [
        x509.load_pem_x509_certificate(e.encode()) for e in receipt.get("service_endorsements", [])
    ]
    ccf.receipt.check_endorsements(node_cert, service_cert, endorsements)
    ours = verify_json_receipt(receipt, service_cert_pem)
    assert ours.hex() == root, f"our root {ours.hex()} != ccf.receipt's {root}"
    return ours


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def send_raw(address: str, data: bytes, linger_s: float = 0.2) -> None:
    """Open a TCP connection to `address`, send `data` as is, and close."""
    host, _, port = address.rpartition(":")
    _, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(linger_s)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def log_text(node: NodeProcess) -> str:
    return node.log_path.read_text(errors="replace")
