"""Shared pieces of the `charter` command line: options, target resolution, errors, output.

Every command runs inside `guarded`, which turns any failure into one line on stderr and a
non-zero exit status: a user of the command line never sees a traceback (set CHARTER_DEBUG=1
to get one).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from charter.errors import CharterError, IdentityError, LedgerAuditFailed
from charter.identity import Network
from charter.ledger.errors import LedgerError

log = logging.getLogger(__name__)

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

P = ParamSpec("P")
T = TypeVar("T")

stdout = Console(highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print one line to stderr and exit with `code`."""
    line = " ".join(str(message).split())
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def guarded(fn: Callable[P, T]) -> Callable[P, T]:
    """Run a command so that every failure is one clear line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own exits and usage errors already print their message
        except LedgerAuditFailed as e:
            where = f"first bad seqno {e.seqno}: " if e.seqno is not None else ""
            fail(f"ledger audit failed: {where}{e.message}")
        except CharterError as e:
            fail(str(e))
        except LedgerError as e:
            fail(f"ledger: {e}")
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        except ModuleNotFoundError as e:
            if os.environ.get("CHARTER_DEBUG"):
                raise
            fail(f"this command needs module {e.name}, which is not available in this install")
        except (ValueError, OSError) as e:
            if os.environ.get("CHARTER_DEBUG"):
                raise
            fail(str(e) or type(e).__name__)
        except Exception as e:
            if os.environ.get("CHARTER_DEBUG"):
                raise
            fail(f"unexpected {type(e).__name__}: {e} (set CHARTER_DEBUG=1 for a traceback)")

    return wrapper


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# Piped output has no terminal width; rich would assume 80 columns and fold 64-digit ids,
# which breaks `charter members | grep`. Tables sent to a pipe get this width instead.
PIPE_TABLE_WIDTH = 240


def print_table(table: Table) -> None:
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=PIPE_TABLE_WIDTH)
    console.print(table)


def print_json(value: Any) -> None:
    # Plain print, not rich: scripts parse this, so no markup, colour or wrapping.
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


# --- common options -----------------------------------------------------------------------------

NetworkOpt = Annotated[
    Path | None,
    typer.Option(
        "--network",
        envvar="CHARTER_NETWORK",
        help="A sandbox's network.json: fills --url, --service-cert and identities.",
    ),
]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", envvar="CHARTER_URL", help="Node address, e.g. https://127.0.0.1:8000."),
]
ServiceCertOpt = Annotated[
    Path | None,
    typer.Option(
        "--service-cert", envvar="CHARTER_SERVICE_CERT", help="Service certificate (PEM) to pin."
    ),
]
CertOpt = Annotated[Path | None, typer.Option("--cert", help="Your certificate (PEM).")]
KeyOpt = Annotated[Path | None, typer.Option("--key", help="Your private key (PEM).")]
MemberOpt = Annotated[
    int | None,
    typer.Option(
        "--member",
        metavar="N",
        help="Use member N of the --network file as identity (default: member 0).",
        min=0,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
NodeOpt = Annotated[
    int, typer.Option("--node", help="With --network: which node to talk to.", min=0)
]


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect and as whom, after flags, environment and network.json are merged."""

    url: str
    service_cert: Path
    cert: Path | None
    key: Path | None


def _load_network(network: Path | None) -> Network | None:
    return Network.load(network) if network is not None else None


def resolve_target(
    *,
    network: Path | None,
    url: str | None,
    service_cert: Path | None,
    cert: Path | None = None,
    key: Path | None = None,
    member: int | None = None,
    user: int | None = None,
    node: int = 0,
    identity: str | None = None,
) -> Target:
    """Merge the options; `identity` = "member" or "user" when the command needs one."""
    net = _load_network(network)
    if url is None and net is not None:
        if not net.urls:
            raise IdentityError(f"network file {net.path} lists no nodes")
        if node >= len(net.urls):
            raise IdentityError(f"network file {net.path} has {len(net.urls)} node(s); no {node}")
        url = net.urls[node]
    if url is None:
        raise IdentityError("no service address: give --url or --network")
    if "://" not in url:
        url = f"https://{url}"
    if service_cert is None and net is not None:
        service_cert = net.service_cert
    if service_cert is None:
        raise IdentityError("no service certificate: give --service-cert or --network")
    if member is not None and user is not None:
        raise IdentityError("give --member or --user, not both")
    if (cert is None) != (key is None):
        raise IdentityError("give both --cert and --key, or neither")
    if cert is None and (member is not None or user is not None):
        if net is None:
            raise IdentityError("--member/--user need --network")
        cert, key = net.member(member) if member is not None else net.user(user or 0)
    if cert is None and identity is not None:
        if net is None:
            raise IdentityError(f"this command needs a {identity} identity: give --cert and --key")
        cert, key = net.member(0) if identity == "member" else net.user(0)
    return Target(url=url, service_cert=service_cert, cert=cert, key=key)
