"""The `charter` command line: identities, governance, service state, nodes, sandbox, bench.

Receipts and ledgers live in client.cli_ledger; shared options and error handling in
client.cli_common. Entry point `charter = charter.cli:main` (pyproject.toml).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from charter.cli_call import call
from charter.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CertOpt,
    JsonOpt,
    KeyOpt,
    MemberOpt,
    NetworkOpt,
    NodeOpt,
    ServiceCertOpt,
    Target,
    UrlOpt,
    fail,
    guarded,
    print_json,
    print_table,
    resolve_target,
    run_async,
    stdout,
)
from charter.cli_ledger import ledger_app, receipt_app
from charter.cli_members import MemberLabel, dry_run_summary, member_labels, who
from charter.cli_process import PASSTHROUGH, PASSTHROUGH_WITH_HELP, bench, node_app, sandbox
from charter.cli_quote import quote_app
from charter.cli_recovery import recovery_app
from charter.errors import IdentityError, ProtocolError
from charter.identity import PEM_FILE_BYTES_MAX, load_cert_pem, load_json_file, read_bounded
from charter.ledger_dump import clip
from charter.member import (
    Member,
    Proposal,
    get_proposal,
    get_proposal_actions,
    list_proposals,
)
from charter.sdk import CertificateExpiry, CharterClient

log = logging.getLogger(__name__)

# `charter status` warns about a certificate that expires within this many days.
CERT_EXPIRY_WARNING_DAYS = 30

app = typer.Typer(
    rich_markup_mode=None,
    name="charter",
    help="Charter: confidential, verifiable replicated services (CCF-style). "
    "Run `charter COMMAND --help` for each command's options and an example.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(node_app, name="node")
app.add_typer(receipt_app, name="receipt")
app.add_typer(ledger_app, name="ledger")
app.add_typer(quote_app, name="quote")
app.add_typer(recovery_app, name="recovery")


def _client(t: Target, *, tls_identity: bool = False) -> CharterClient:
    if tls_identity:
        return CharterClient(t.url, t.service_cert, cert_path=t.cert, key_path=t.key)
    return CharterClient(t.url, t.service_cert)


def _id_column(header: str) -> Column:
    # Ids are 64 hex digits and get copied into other commands: never cut them, fold them.
    return Column(header, overflow="fold", min_width=16)


def _short(ident: str | None, n: int = 12) -> str:
    return "-" if not ident else (ident[:n] + "…" if len(ident) > n else ident)


# --- keygen -------------------------------------------------------------------------------------


@app.command()
@guarded
def keygen(
    name: Annotated[str, typer.Argument(help="Participant name, e.g. member0 or user1.")],
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the files.")] = Path(),
    enc_key: Annotated[
        bool, typer.Option("--enc-key", help="Also make an RSA-OAEP recovery encryption key.")
    ] = False,
    rsa_bits: Annotated[int, typer.Option(help="RSA key size (>= 2048).")] = 2048,
    days: Annotated[int, typer.Option(help="Certificate validity in days.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make a member or user identity: NAME_privk.pem (0600) and NAME_cert.pem (P-384).

    The folder given with --dir is created if it does not exist.

    \b
    Example: charter keygen user1 --dir workspace/sandbox/users
    """
    from charter.keygen import generate_identity

    r = generate_identity(
        name, directory, encryption_key=enc_key, rsa_bits=rsa_bits, days=days, overwrite=force
    )
    files = {
        "cert": str(r.cert_path),
        "key": str(r.key_path),
        "encryption_key": str(r.enc_priv_path) if r.enc_priv_path else None,
        "encryption_public_key": str(r.enc_pub_path) if r.enc_pub_path else None,
    }
    if as_json:
        print_json({"name": r.name, "id": r.id, **files})
        return
    stdout.print(f"{'id':<22} {r.id}")
    for what, path in files.items():
        if path:
            stdout.print(f"{what:<22} {path}")


# --- governance ---------------------------------------------------------------------------------


def _actions_from_file(path: Path) -> list[dict[str, Any]]:
    doc = load_json_file(path, "proposal file")
    actions = doc.get("actions") if isinstance(doc, dict) else doc
    if not isinstance(actions, list):
        raise IdentityError(
            f'proposal file {path} must hold {{"actions": [...]}} or a list of actions'
        )
    return actions


def _actions_from_flags(
    *,
    open_service: bool,
    service_cert_pem: str | None,
    add_user: list[Path],
    remove_user: list[str],
    add_member: list[Path],
    member_enc_key: Path | None,
    remove_member: list[str],
    trust_node: list[str],
    remove_node: list[str],
    recovery_threshold: int | None = None,
    rekey: bool = False,
) -> list[dict[str, Any]]:
    actions: list[dict[str, Any]] = []
    for cert in add_user:
        actions.append({"name": "set_user", "args": {"cert": load_cert_pem(cert, "user cert")}})
    for uid in remove_user:
        actions.append({"name": "remove_user", "args": {"user_id": uid}})
    if member_enc_key is not None and len(add_member) != 1:
        raise IdentityError("--member-enc-key goes with exactly one --add-member")
    for cert in add_member:
        args: dict[str, Any] = {"cert": load_cert_pem(cert, "member cert")}
        if member_enc_key is not None:
            enc = read_bounded(member_enc_key, PEM_FILE_BYTES_MAX, "encryption public key")
            args["encryption_pub_key"] = enc.decode("ascii", errors="replace")
        actions.append({"name": "set_member", "args": args})
    for mid in remove_member:
        actions.append({"name": "remove_member", "args": {"member_id": mid}})
    for nid in trust_node:
        actions.append({"name": "transition_node_to_trusted", "args": {"node_id": nid}})
    for nid in remove_node:
        actions.append({"name": "remove_node", "args": {"node_id": nid}})
    if recovery_threshold is not None:
        actions.append(
            {"name": "set_recovery_threshold", "args": {"recovery_threshold": recovery_threshold}}
        )
    if rekey:
        actions.append({"name": "trigger_ledger_rekey", "args": {}})
    if open_service:
        args = {"next_service_identity": service_cert_pem} if service_cert_pem else {}
        actions.append({"name": "transition_service_to_open", "args": args})
    return actions


def _print_proposal(p: Proposal) -> None:
    stdout.print(f"proposal {p.proposal_id}")
    stdout.print(f"state    {p.state} ({p.ballot_count} ballot(s))")
    if p.txid is not None:
        stdout.print(f"txid     {p.txid}")
    if p.failure:
        stdout.print(f"failure  {p.failure.get('reason', p.failure)}")


@app.command()
@guarded
def propose(
    file: Annotated[
        Path | None, typer.Argument(help='JSON file: {"actions": [{"name", "args"}]}.')
    ] = None,
    open_service: Annotated[
        bool, typer.Option("--open-service", help="transition_service_to_open")
    ] = False,
    add_user: Annotated[
        list[Path] | None, typer.Option("--add-user", metavar="CERT", help="set_user CERT")
    ] = None,
    remove_user: Annotated[
        list[str] | None, typer.Option("--remove-user", metavar="ID", help="remove_user ID")
    ] = None,
    add_member: Annotated[
        list[Path] | None, typer.Option("--add-member", metavar="CERT", help="set_member CERT")
    ] = None,
    member_enc_key: Annotated[
        Path | None,
        typer.Option("--member-enc-key", metavar="PEM", help="RSA public key for --add-member."),
    ] = None,
    remove_member: Annotated[
        list[str] | None, typer.Option("--remove-member", metavar="ID", help="remove_member ID")
    ] = None,
    trust_node: Annotated[
        list[str] | None,
        typer.Option("--trust-node", metavar="ID", help="transition_node_to_trusted ID"),
    ] = None,
    remove_node: Annotated[
        list[str] | None, typer.Option("--remove-node", metavar="ID", help="remove_node ID")
    ] = None,
    recovery_threshold: Annotated[
        int | None,
        typer.Option("--recovery-threshold", metavar="N", help="set_recovery_threshold N"),
    ] = None,
    rekey: Annotated[bool, typer.Option("--rekey", help="trigger_ledger_rekey")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Ask the service what would happen; store nothing.")
    ] = False,
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    member: MemberOpt = None,
    node: NodeOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Submit a proposal signed by a member, from a JSON file or from flags.

    \b
    Example: charter propose --network workspace/sandbox/network.json --member 0 --add-user workspace/sandbox/users/user1_cert.pem
    """
    t = resolve_target(
        network=network, url=url, service_cert=service_cert, cert=cert, key=key,
        member=member, node=node, identity="member",
    )  # fmt: skip
    from_flags = _actions_from_flags(
        open_service=open_service,
        service_cert_pem=load_cert_pem(t.service_cert, "service certificate")
        if open_service
        else None,
        add_user=add_user or [],
        remove_user=remove_user or [],
        add_member=add_member or [],
        member_enc_key=member_enc_key,
        remove_member=remove_member or [],
        trust_node=trust_node or [],
        remove_node=remove_node or [],
        recovery_threshold=recovery_threshold,
        rekey=rekey,
    )
    if file is not None and from_flags:
        raise IdentityError("give a proposal file or action flags, not both")
    actions = _actions_from_file(file) if file is not None else from_flags
    if not actions:
        raise IdentityError("nothing to propose: give a JSON file or an action flag")
    assert t.cert is not None and t.key is not None

    async def go() -> Any:
        async with _client(t) as c:
            m = Member(c, t.cert, t.key)  # type: ignore[arg-type]
            return await (m.dry_run(actions) if dry_run else m.propose(actions))

    result = run_async(go())
    if dry_run:
        if as_json:
            print_json(result)
        else:
            stdout.print(dry_run_summary(result), markup=False)
        return
    if as_json:
        print_json(result.to_json())
    else:
        _print_proposal(result)


@app.command()
@guarded
def vote(
    proposal_id: Annotated[str, typer.Argument(help="Proposal id (64 hex digits).")],
    approve: Annotated[
        bool | None, typer.Option("--approve/--reject", help="Your ballot (required).")
    ] = None,
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    member: MemberOpt = None,
    node: NodeOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Vote on an open proposal as a member.

    \b
    Example: charter vote 3f2a…e1 --approve --network workspace/sandbox/network.json --member 1
    """
    if approve is None:
        fail("say --approve or --reject", 2)
    t = resolve_target(
        network=network, url=url, service_cert=service_cert, cert=cert, key=key,
        member=member, node=node, identity="member",
    )  # fmt: skip

    async def go() -> Proposal:
        async with _client(t) as c:
            return await Member(c, t.cert, t.key).vote(proposal_id, approve)  # type: ignore[arg-type]

    p = run_async(go())
    print_json(p.to_json()) if as_json else _print_proposal(p)


@app.command()
@guarded
def withdraw(
    proposal_id: Annotated[str, typer.Argument(help="Proposal id (64 hex digits).")],
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    member: MemberOpt = None,
    node: NodeOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Withdraw one of your open proposals.

    \b
    Example: charter withdraw 3f2a…e1 --network workspace/sandbox/network.json --member 0
    """
    t = resolve_target(
        network=network, url=url, service_cert=service_cert, cert=cert, key=key,
        member=member, node=node, identity="member",
    )  # fmt: skip

    async def go() -> Proposal | None:
        async with _client(t) as c:
            return await Member(c, t.cert, t.key).withdraw(proposal_id)  # type: ignore[arg-type]

    p = run_async(go())
    if p is None:
        print_json(None) if as_json else stdout.print("no such proposal (nothing withdrawn)")
        return
    print_json(p.to_json()) if as_json else _print_proposal(p)


@app.command()
@guarded
def ack(
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    member: MemberOpt = None,
    node: NodeOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Activate a newly added member by acknowledging the service's state digest.

    \b
    Example: charter ack --network workspace/sandbox/network.json --member 1
    """
    t = resolve_target(
        network=network, url=url, service_cert=service_cert, cert=cert, key=key,
        member=member, node=node, identity="member",
    )  # fmt: skip

    async def go() -> tuple[str, str]:
        async with _client(t) as c:
            m = Member(c, t.cert, t.key)  # type: ignore[arg-type]
            return m.id, await m.ack()

    member_id, digest = run_async(go())
    if as_json:
        print_json({"memberId": member_id, "stateDigest": digest})
    else:
        stdout.print(f"member {member_id} acknowledged state digest {digest}")


def _show_proposal(t: Target, proposal_id: str, as_json: bool, network: Path | None) -> None:
    async def go() -> tuple[Proposal, list[dict[str, Any]]]:
        async with _client(t) as c:
            return await get_proposal(c, proposal_id), await get_proposal_actions(c, proposal_id)

    p, actions = run_async(go())
    if as_json:
        print_json({**p.to_json(), "actions": actions})
        return
    labels = member_labels(_listing(t, "members"), network)
    _print_proposal(p)
    stdout.print(f"proposer {who(p.proposer_id, labels, 64)}")
    for vote_member, approve in p.final_votes.items():
        ballot = "approve" if approve else "reject"
        stdout.print(f"vote     {who(vote_member, labels, 64)} {ballot}")
    for action in actions:
        # Arguments can be long (PEM certificates): --json has them whole.
        args = clip(action.get("args", {}))
        stdout.print(f"action   {action.get('name')} {args}", markup=False)


@app.command()
@guarded
def proposals(
    state: Annotated[
        str | None, typer.Option("--state", help="Only proposals in this state, e.g. Open.")
    ] = None,
    proposal_id: Annotated[
        str | None, typer.Option("--id", help="Show this one proposal with its actions.")
    ] = None,
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    node: NodeOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """List governance proposals in a table, or show one with its actions (--id).

    \b
    Example: charter proposals --network workspace/sandbox/network.json --state Open
    """
    t = resolve_target(network=network, url=url, service_cert=service_cert, node=node)
    if proposal_id is not None:
        _show_proposal(t, proposal_id, as_json, network)
        return

    async def go() -> list[Proposal]:
        async with _client(t) as c:
            return await list_proposals(c)

    found = [p for p in run_async(go()) if state is None or p.state == state]
    if as_json:
        print_json([p.to_json() for p in found])
        return
    labels = member_labels(_listing(t, "members"), network) if found else {}
    table = Table(_id_column("proposal id"), "proposer", "state", "ballots", "final votes")
    for p in found:
        votes = ", ".join(
            f"{who(k, labels, 8)}: {'yes' if v else 'no'}" for k, v in p.final_votes.items()
        )
        table.add_row(
            p.proposal_id, who(p.proposer_id, labels), p.state, str(p.ballot_count), votes
        )
    print_table(table)


def _listing(t: Target, what: str) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with _client(t) as c:
            if what == "members":
                return await c.members()
            if what == "users":
                return await c.users()
            return await c.nodes()

    return run_async(go())


@app.command()
@guarded
def members(
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    node: NodeOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """List the consortium's members.

    \b
    Example: charter members --network workspace/sandbox/network.json
    """
    t = resolve_target(network=network, url=url, service_cert=service_cert, node=node)
    items = _listing(t, "members")
    if as_json:
        print_json(items)
        return
    labels = member_labels(items, network)
    table = Table("#", "name", _id_column("member id"), "status", "recovery role")
    for m in items:
        label = labels.get(str(m.get("memberId")), MemberLabel(None, None))
        table.add_row(
            "-" if label.number is None else str(label.number),
            label.name or "-",
            str(m.get("memberId", "?")),
            str(m.get("status", "?")),
            str(m.get("recoveryRole", "-")),
        )
    print_table(table)


@app.command()
@guarded
def users(
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    node: NodeOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """List the service's users.

    \b
    Example: charter users --network workspace/sandbox/network.json --json
    """
    t = resolve_target(network=network, url=url, service_cert=service_cert, node=node)
    items = _listing(t, "users")
    if as_json:
        print_json(items)
        return
    table = Table(_id_column("user id"), "user data")
    for u in items:
        table.add_row(str(u.get("userId", "?")), json.dumps(u.get("userData")))
    print_table(table)


@app.command()
@guarded
def nodes(
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    node: NodeOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """List the network's nodes, their status and which is primary.

    \b
    Example: charter nodes --network workspace/sandbox/network.json
    """
    t = resolve_target(network=network, url=url, service_cert=service_cert, node=node)
    items = _listing(t, "nodes")
    if as_json:
        print_json(items)
        return
    table = Table(_id_column("node id"), "status", "primary", "rpc address")
    for n in items:
        rpc = n.get("rpc_interfaces")
        addresses = (
            ", ".join(
                str(i.get("published_address") or i.get("bind_address"))
                for i in rpc.values()
                if isinstance(i, dict)
            )
            if isinstance(rpc, dict)
            else "-"
        )
        table.add_row(
            str(n.get("node_id", "?")),
            str(n.get("status", "?")),
            "yes" if n.get("primary") else "",
            addresses,
        )
    print_table(table)


@app.command()
@guarded
def status(
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    node: NodeOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Show the service status, the node's state and the last committed transaction.

    \b
    Example: charter status --network workspace/sandbox/network.json
    """
    t = resolve_target(network=network, url=url, service_cert=service_cert, node=node)

    async def go() -> tuple[dict[str, Any], CertificateExpiry | None]:
        async with _client(t) as c:
            net = await c.network()
            state = await c.node_state()
            commit = await c.commit()
            try:
                expiry: CertificateExpiry | None = await c.certificates_not_after()
            except ProtocolError:
                expiry = None  # a node (or a CCF service) that does not report them
            return {"network": net, "node": state, "commit": str(commit)}, expiry

    info, expiry = run_async(go())
    now = datetime.datetime.now(datetime.UTC)
    if expiry is None:
        typer.echo("warning: the node does not report its certificates' end dates", err=True)
    for name, not_after in expiry.expiring(now, CERT_EXPIRY_WARNING_DAYS) if expiry else []:
        days = (not_after - now).total_seconds() / 86_400
        action = (
            "set_service_certificate_validity"
            if name == "service"
            else "set_node_certificate_validity"
        )
        typer.echo(
            f"warning: {name} certificate expires {not_after:%Y-%m-%dT%H:%M:%SZ} "
            f"(in {days:.1f} days): renew it by proposing {action}",
            err=True,
        )
    if as_json:
        print_json(info)
        return
    net, st = info["network"], info["node"]
    stdout.print(f"service   {net.get('service_status', '?')} (view {net.get('current_view')})")
    stdout.print(f"primary   {net.get('primary_id', '-')}")
    stdout.print(f"node      {st.get('node_id', '?')} {st.get('state', '?')}")
    stdout.print(f"committed {info['commit']}")
    if expiry is not None:
        stdout.print(f"service certificate valid until {expiry.service:%Y-%m-%dT%H:%M:%SZ}")


app.command()(call)

# Registered last so that `charter --help` lists the everyday commands first.
app.command(context_settings=PASSTHROUGH_WITH_HELP)(sandbox)
app.command(context_settings=PASSTHROUGH)(bench)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: returns the exit status (the console script exits with it).

    Usage errors (unknown option, missing argument) become one `error:` line too, with a
    pointer to the command's --help, instead of typer's multi-line panel.
    """
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("CHARTER_DEBUG") else logging.WARNING,
        format="%(levelname)s %(name)s %(message)s",
    )
    try:
        result = app(argv, prog_name="charter", standalone_mode=False)
    except typer.TyperException as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            return EXIT_USAGE  # the help text has been printed already
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "charter"
        message = " ".join(str(getattr(e, "format_message", e.__str__)()).split())
        typer.echo(f"error: {message} (see `{where} --help`)", err=True)
        return EXIT_USAGE
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("error: interrupted", err=True)
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0
