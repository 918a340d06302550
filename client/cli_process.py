"""`charter node start|join|recover`, `charter sandbox` and `charter bench`: processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from charter.cli_common import fail, guarded, stdout
from charter.errors import IdentityError
from charter.identity import load_json_file

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_SCRIPT = REPO_ROOT / "scripts" / "bench.py"

node_app = typer.Typer(help="Run a node process.", no_args_is_help=True, rich_markup_mode=None)


def _node_command(config: Path) -> list[str]:
    doc = load_json_file(config, "node config")
    if not isinstance(doc, dict):
        raise IdentityError(f"node config {config} must be a JSON object")
    return [sys.executable, "-m", "charter.host", "--config", str(config)]


def _exec_node(config: Path, print_only: bool) -> None:
    cmd = _node_command(config)
    if print_only:
        stdout.print(" ".join(cmd))
        return
    # Replace this process: signals and the exit status then belong to the node itself.
    os.execv(cmd[0], cmd)


PrintCmdOpt = Annotated[
    bool, typer.Option("--print-command", help="Print the command instead of running it.")
]


@node_app.command("start")
@guarded
def node_start(
    config: Annotated[Path, typer.Argument(help="Node config (JSON) that starts a network.")],
    print_command: PrintCmdOpt = False,
) -> None:
    """Start the first node of a new network (runs `python -m charter.host --config FILE`).

    \b
    Example: charter node start workspace/sandbox/node0/node.json
    """
    _exec_node(config, print_command)


@node_app.command("join")
@guarded
def node_join(
    config: Annotated[Path, typer.Argument(help="Node config (JSON) that joins a network.")],
    print_command: PrintCmdOpt = False,
) -> None:
    """Start a node that joins an existing network (its config names the target node).

    \b
    Example: charter node join workspace/sandbox/node1/node.json
    """
    _exec_node(config, print_command)


@node_app.command("recover")
@guarded
def node_recover(
    config: Annotated[Path, typer.Argument(help="Node config (JSON) that recovers a network.")],
    print_command: PrintCmdOpt = False,
) -> None:
    """Start a node in recovery mode on an old ledger (its config says so).

    \b
    Example: charter node recover workspace/sandbox/node0/recover.json
    """
    _exec_node(config, print_command)


PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
# `charter sandbox --help` must show the sandbox's own (argparse) help, as -h does: one screen.
PASSTHROUGH_WITH_HELP = {**PASSTHROUGH, "help_option_names": []}


@guarded
def sandbox(ctx: typer.Context) -> None:
    """Start a local network serving the sample app, open it, and keep it up until Ctrl-C.

    Options: --nodes N, --workspace DIR, --port-base PORT, --app logging|acl|scitt|MODULE
    (see `charter sandbox --help`, the same screen as -h).

    \b
    Example: charter sandbox --nodes 3 --workspace workspace/sandbox
    """
    try:
        from charter.sandbox_command import run
    except ImportError:
        fail("the sandbox is not available in this version (client/sandbox_command.py is missing)")
    code = run(list(ctx.args))
    raise typer.Exit(int(code or 0))


@guarded
def bench(ctx: typer.Context) -> None:
    """Run the benchmark (scripts/bench.py); extra arguments go to it (`charter bench -h`
    lists them: --nodes, --clients, --duration-s, --network, --out, --compare-nodes, …).

    \b
    Example: charter bench --network workspace/sandbox/network.json --clients 32
    """
    script = BENCH_SCRIPT
    if not script.is_file():
        fail(f"the benchmark is not available in this version ({script} is missing)")
    done = subprocess.run([sys.executable, str(script), *ctx.args], check=False)
    raise typer.Exit(done.returncode)
