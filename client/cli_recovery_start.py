"""`charter recovery start`: the operator's one command to start a recovery node.

It lays out a node directory as `charter node` uses it (`node.json` beside `workspace/`),
copies the old ledger's chunk files into the new workspace's ledger directory (the copy is
the node's: the old files are never changed), keeps the previous service certificate
beside the config, writes a `start.mode: recover` config naming it, and starts the node.
With `--detach` it waits until the node has replayed the old ledger, writes the new service
certificate to `service_cert.pem` and prints what the members need next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from charter.cli_common import fail, guarded, stdout
from charter.identity import PEM_FILE_BYTES_MAX, read_bounded
from charter.ledger import certs
from charter.ledger.chunks import parse_chunk_name
from charter.ledger.errors import LedgerError

DEFAULT_APP = "charter.enclave_app.samples.logging"
# How long `--detach` waits for the node to replay the old ledger and report Started.
START_TIMEOUT_S = 600.0
POLL_INTERVAL_S = 0.1
# The first answer of the node this command started (its service certificate) is small.
NETWORK_ANSWER_BYTES_MAX = 256 * 1024


def ledger_copy_plan(ledger: Path) -> list[tuple[Path, str]]:
    """The chunk files of an old ledger directory, each with its name in the copy; raises
    `ValueError` saying why when there is nothing to copy.

    `.ignored` and `.recovery` files are left out (as ccf.ledger reads a ledger). Completed
    chunks are copied without `.committed`: what the old service committed is for the
    recovery to establish, and it cuts the copy back to its last valid signature, which a
    damaged copy may put inside a chunk the old node had marked committed (the node's host
    never truncates committed chunks). The new service marks them committed again as its
    own commit passes them."""
    if not ledger.is_dir():
        raise ValueError(f"{ledger} is not a directory")
    files = []
    for path in sorted(ledger.iterdir()):
        if not path.is_file() or not path.name.startswith("ledger_"):
            continue
        try:
            name = parse_chunk_name(path.name)
        except LedgerError:
            continue
        if name.ignored or name.recovery:
            continue
        copy = f"ledger_{name.first}" + (f"-{name.last}" if name.last is not None else "")
        files.append((path, copy))
    if not files:
        raise ValueError(f"{ledger} holds no ledger chunk files (ledger_*)")
    return files


def _ledger_files(ledger: Path) -> list[tuple[Path, str]]:
    try:
        return ledger_copy_plan(ledger)
    except ValueError as exc:
        fail(f"--ledger {exc}")


def write_recovery_node(
    directory: Path,
    ledger: Path,
    previous_service_cert: Path,
    *,
    rpc_address: str,
    node_to_node_address: str,
    app: str,
    ledger_chunk_bytes: int | None = None,
) -> Path:
    """Lay out the recovery node's directory; returns its config path."""
    pem = read_bounded(previous_service_cert, PEM_FILE_BYTES_MAX, "previous service certificate")
    try:
        certs.load_cert(pem)
    except LedgerError as exc:
        fail(f"--previous-service-cert {previous_service_cert}: {exc}")
    files = _ledger_files(ledger)
    workspace = directory / "workspace"
    ledger_dir = workspace / "ledger"
    if ledger_dir.exists() and any(ledger_dir.iterdir()):
        fail(f"{ledger_dir} already holds a ledger: give a new --dir")
    if (workspace / "sealed.bin").exists():
        fail(f"{workspace} holds a node's sealed state: give a new --dir")
    ledger_dir.mkdir(parents=True, exist_ok=True)
    for path, copy in files:
        shutil.copy2(path, ledger_dir / copy)
    previous = directory / "previous_service_cert.pem"
    previous.write_bytes(pem)
    config: dict[str, Any] = {
        "workspace": str(workspace),
        "rpc_address": rpc_address,
        "node_to_node_address": node_to_node_address,
        "app": app,
        "start": {"mode": "recover", "previous_service_identity": str(previous)},
    }
    if ledger_chunk_bytes is not None:
        config["ledger_chunk_bytes"] = ledger_chunk_bytes
    config_path = directory / "node.json"
    config_path.write_text(json.dumps(config, indent=2))
    return config_path


async def _service_cert(address: str) -> str:
    """The new service certificate, read from the node this command has just started."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the node was started here a moment ago
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
    writer.write(
        f"GET /node/network HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    data = await reader.read(NETWORK_ANSWER_BYTES_MAX)
    writer.close()
    doc = json.loads(data.split(b"\r\n\r\n", 1)[1])
    return str(doc["service_certificate"])


def _wait_started(process: subprocess.Popen[bytes], ports_path: Path, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        ports: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            ports = json.loads(ports_path.read_text())
        if ports.get("fatal"):
            fail(f"the recovery node stopped: {ports['fatal']}")
        if ports.get("node_id"):
            return ports
        if process.poll() is not None:
            fail(f"the recovery node exited with code {process.returncode}; see {log}")
        time.sleep(POLL_INTERVAL_S)
    fail(f"the recovery node did not start in {START_TIMEOUT_S:.0f}s; see {log}")


@guarded
def recovery_start(
    ledger: Annotated[
        Path, typer.Option("--ledger", help="Copy of the old ledger directory (any node's).")
    ],
    previous_service_cert: Annotated[
        Path, typer.Option("--previous-service-cert", help="The old service's certificate.")
    ],
    directory: Annotated[
        Path, typer.Option("--dir", help="New node directory (node.json, workspace/).")
    ],
    rpc_address: Annotated[str, typer.Option("--rpc-address")] = "127.0.0.1:0",
    node_to_node_address: Annotated[str, typer.Option("--node-to-node-address")] = "127.0.0.1:0",
    app: Annotated[str, typer.Option("--app", help="The application module.")] = DEFAULT_APP,
    ledger_chunk_bytes: Annotated[
        int | None,
        typer.Option(
            "--ledger-chunk-bytes", help="The config's ledger_chunk_bytes (node default)."
        ),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Run in the background; return once it serves.")
    ] = False,
) -> None:
    """Start a recovery node on a copy of an old ledger (start mode `recover`).

    \b
    Example: charter recovery start --ledger backup/ledger \\
        --previous-service-cert backup/service_cert.pem --dir workspace/recovery
    """
    config = write_recovery_node(
        directory,
        ledger,
        previous_service_cert,
        rpc_address=rpc_address,
        node_to_node_address=node_to_node_address,
        app=app,
        ledger_chunk_bytes=ledger_chunk_bytes,
    )
    cmd = [sys.executable, "-m", "charter.host", "--config", str(config)]
    if not detach:
        os.execv(cmd[0], cmd)
    log = directory / "node.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    ports = _wait_started(process, directory / "workspace" / "ports.json", log)
    service_cert = directory / "service_cert.pem"
    service_cert.write_text(asyncio.run(_service_cert(str(ports["rpc_address"]))))
    stdout.print(
        json.dumps(
            {
                "node_id": ports["node_id"],
                "rpc_address": ports["rpc_address"],
                "host_pid": ports.get("host_pid"),
                "service_cert": str(service_cert),
                "previous_service_cert": str(directory / "previous_service_cert.pem"),
                "log": str(log),
            }
        )
    )
