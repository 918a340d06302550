"""The `charter sandbox` command: options, the banner, the status line, Ctrl-C.

The network itself (workspace, node processes, governance steps) is `charter.sandbox.Sandbox`;
this module is what a person at a terminal sees of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

from charter.sandbox import DEFAULT_WORKSPACE, SCITT_MODULE, NodeProcess, Sandbox, SandboxError
from charter.sandbox_banner import ACL_MODULE, acl_lines, curl_lines

# ---------------------------------------------------------------------------------------------
# The command: `charter sandbox [--nodes N] [--workspace DIR] [--port-base P] [--app MODULE]`

APPS = {
    "logging": "charter.enclave_app.samples.logging",
    "acl": ACL_MODULE,
    "scitt": SCITT_MODULE,
}
DEFAULT_NODES = 3


async def app_document(sandbox: Sandbox) -> dict[str, Any] | None:
    """The served app's OpenAPI document (`GET /app/api`), or None if it serves none."""
    with contextlib.suppress(Exception):
        async with sandbox.client() as client:
            response = await client.get("/app/api")
            if response.status == 200 and isinstance(response.body, dict):
                return response.body
    return None


def _example_lines(
    sandbox: Sandbox, doc: dict[str, Any] | None, url: str, cert: Path, user: tuple[Path, Path]
) -> list[str]:
    """A ready command that calls the app being served (none if it documents no route)."""
    if sandbox.served_app() == ACL_MODULE:
        return acl_lines(url, cert, *user)
    if doc is None:
        return ["The app serves no OpenAPI document (GET /app/api), so no example call here."]
    return curl_lines(doc, url, cert, *user)


def panel_text(sandbox: Sandbox, doc: dict[str, Any] | None = None) -> str:
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
        *_example_lines(sandbox, doc, first.url, cert, sandbox.user_paths(0)),
        "",
        "Get and verify the receipt of the transaction id it returned (x-ms-ccf-transaction-id):",
        f"  charter receipt get <txid> --network {sandbox.network_path}",
        "",
        "Audit a node's ledger offline (its last chunk is still open while it runs):",
        f"  charter ledger audit {first.directory / 'workspace' / 'ledger'} --include-uncommitted",
    ]
    return "\n".join(lines)


def stopped_text(node: NodeProcess) -> str:
    """What the sandbox says, once, when one of its nodes stops while it runs."""
    assert node.process is not None
    why = node.fatal_reason() or f"exit code {node.process.returncode}"
    return (
        f"\nnode{node.index} stopped ({why}; log {node.log_path}). The others go on; "
        "stop the sandbox and start it again on the same workspace to bring it back."
    )


async def _status_line(sandbox: Sandbox) -> str:
    for node in sandbox.nodes:
        with contextlib.suppress(Exception):
            async with sandbox.client(node) as client:
                network = await client.network()
                commit = await client.get_json("/node/commit")
                primary = str(network.get("primary_id") or "?")[:12]
                return f"primary {primary}…  commit {commit.get('transaction_id')}"
    return "no node answers"


async def _serve(sandbox: Sandbox, *, recover: bool = False) -> int:
    from rich.console import Console

    console = Console()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sandbox.lock()  # before printing anything: a running sandbox is left untouched
    resuming = sandbox.holds_network()
    count = len(sandbox.existing_configs()) if resuming else sandbox.node_count
    if recover:
        count = len(sandbox.configs_to_recover())
        interrupted = sandbox.interrupted_recovery()
        if interrupted is not None:
            console.print(
                f"An earlier --recover did not finish: recovering the network in {interrupted} "
                f"again (what it had started moves to {interrupted}/interrupted<M>/) …"
            )
        console.print(
            f"Recovering the {count}-node network of {sandbox.workspace} from its ledger "
            "(the old nodes move to recovered<N>/) …"
        )
    else:
        verb = "Resuming" if resuming else "Starting"
        console.print(f"{verb} a {count}-node network in {sandbox.workspace} …")
    try:
        await (sandbox.recover() if recover else sandbox.start())
    except BaseException:
        sandbox.stop()
        raise
    doc = await app_document(sandbox)
    # A ruled panel whose lines never wrap, so the commands copy and paste whole.
    console.rule("[bold]Charter sandbox is open")
    console.print(panel_text(sandbox, doc), soft_wrap=True, highlight=False, markup=False)
    console.rule()
    console.print("Press Ctrl-C to stop.")
    last_commit = None
    last_time = time.monotonic()
    reported: set[int] = set()  # nodes whose stop was told (once each)
    try:
        while not stop.is_set():
            line = await _status_line(sandbox)
            for node in sandbox.nodes:
                if node.index in reported or node.process is None:
                    continue
                if node.process.poll() is not None:
                    reported.add(node.index)
                    console.print(stopped_text(node), soft_wrap=True, markup=False)
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


def parser() -> argparse.ArgumentParser:
    """The one help screen of `charter sandbox` (both -h and --help show it)."""
    p = argparse.ArgumentParser(
        prog="charter sandbox",
        description=(
            "Start a local network on 127.0.0.1 serving an app, open it through governance "
            "(members' proposal and ballots), write WORKSPACE/network.json for the --network "
            "option of other charter commands, and keep it up until Ctrl-C. Run again on the "
            "same workspace to resume the same network."
        ),
        epilog="Example: charter sandbox --nodes 3 --workspace workspace/sandbox",
    )
    p.add_argument(
        "--nodes",
        type=int,
        default=None,
        metavar="N",
        help=f"number of nodes (default: {DEFAULT_NODES}); a resumed network keeps its own",
    )
    p.add_argument(
        "--workspace",
        type=Path,
        default=DEFAULT_WORKSPACE,
        metavar="DIR",
        help=f"where keys, configs, ledgers and logs go (default: {DEFAULT_WORKSPACE})",
    )
    p.add_argument(
        "--port-base",
        type=int,
        default=None,
        metavar="PORT",
        help="node i gets RPC port PORT+2i and node-to-node port PORT+2i+1 (default: free "
        "ports the system picks); a resumed network keeps its ports",
    )
    p.add_argument(
        "--app",
        default=None,
        metavar="APP",
        help="logging (default), acl, scitt, or a Python module path with `app = App(...)`; "
        "a resumed network keeps its app",
    )
    p.add_argument(
        "--recover",
        action="store_true",
        help="disaster recovery of a dead network in --workspace: start a recovery node on "
        "the largest ledger left, open it with the members' recovery shares, rejoin the other "
        "nodes (the old node directories move to recovered<N>/)",
    )
    return p


def resume_notes(sandbox: Sandbox, args: argparse.Namespace) -> list[str]:
    """What a resumed network keeps from its first run although the command line differs."""
    configs = sandbox.existing_configs()
    notes = []
    if args.nodes is not None and args.nodes != len(configs):
        notes.append(
            f"--nodes {args.nodes} is ignored: the network resumes with its {len(configs)} node(s)"
        )
    if args.port_base is not None:
        ports = ", ".join(str(c.get("rpc_address")) for c in configs)
        notes.append(
            f"--port-base {args.port_base} is ignored: the nodes resume on their ports ({ports}); "
            "use a new --workspace for other ports"
        )
    served = str(configs[0].get("app")) if configs else None
    if args.app is not None and APPS.get(args.app, args.app) != served:
        notes.append(f"--app {args.app} is ignored: the network resumes serving {served}")
    return notes


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    sandbox = Sandbox(
        args.workspace,
        nodes=args.nodes if args.nodes is not None else DEFAULT_NODES,
        port_base=args.port_base,
        app=APPS.get(args.app or "logging", args.app or "logging"),
    )
    try:
        sandbox.lock()  # first: a running sandbox gets one line and nothing else
        if args.recover:
            if not sandbox.configs_to_recover():
                raise SandboxError(f"--recover: {args.workspace} holds no network to recover")
            if args.nodes is not None or args.port_base is not None or args.app is not None:
                raise SandboxError(
                    "--recover keeps the dead network's node count and app and picks new "
                    "ports: give no --nodes, --port-base or --app with it"
                )
        elif sandbox.holds_network():
            for note in resume_notes(sandbox, args):
                print(f"charter sandbox: note: {note}", file=sys.stderr)
        return asyncio.run(_serve(sandbox, recover=args.recover))
    except SandboxError as exc:
        print(f"charter sandbox: {exc}", file=sys.stderr)
        return 1
