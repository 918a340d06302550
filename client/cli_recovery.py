"""`charter recovery`: the members' side of disaster recovery.

    charter recovery share --network workspace/sandbox/network.json --member 1
    charter recovery status --network workspace/sandbox/network.json

`share` fetches the member's encrypted share from the service, decrypts it here with the
member's RSA encryption private key, and submits it as a COSE-signed `recovery_share`
request; `status` shows who holds a share, who has submitted one and how many are still
needed. `start` is the operator's (`cli_recovery_start.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from charter.cli_common import (
    CertOpt,
    JsonOpt,
    KeyOpt,
    MemberOpt,
    NetworkOpt,
    NodeOpt,
    ServiceCertOpt,
    UrlOpt,
    guarded,
    print_json,
    print_table,
    resolve_target,
    run_async,
    stdout,
)
from charter.cli_members import short_id
from charter.cli_recovery_start import recovery_start
from charter.errors import IdentityError
from charter.identity import Network
from charter.member import Member
from charter.sdk import CharterClient

recovery_app = typer.Typer(
    rich_markup_mode=None,
    help="Disaster recovery: start a recovery node (operator), submit recovery shares "
    "(members), see how many are still needed.",
    no_args_is_help=True,
)
recovery_app.command("start")(recovery_start)

EncKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--enc-key",
        metavar="PEM",
        help="Your RSA encryption private key (default: the --network file's, for --member).",
    ),
]


@recovery_app.command("share")
@guarded
def share(
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    member: MemberOpt = None,
    enc_key: EncKeyOpt = None,
    node: NodeOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Fetch your encrypted recovery share, decrypt it locally, and submit it (signed).

    \b
    Example: charter recovery share --network workspace/sandbox/network.json --member 1
    """
    t = resolve_target(
        network=network, url=url, service_cert=service_cert, cert=cert, key=key,
        member=member, node=node, identity="member",
    )  # fmt: skip
    if enc_key is None:
        if network is None:
            raise IdentityError("give --enc-key (your RSA encryption private key) or --network")
        enc_key = Network.load(network).member_encryption_key(member or 0)

    async def go() -> tuple[str, dict[str, Any]]:
        async with CharterClient(t.url, t.service_cert) as c:
            m = Member(c, t.cert, t.key)  # type: ignore[arg-type]
            return m.id, await m.recover(enc_key)

    member_id, result = run_async(go())
    if as_json:
        print_json({"memberId": member_id, **result})
        return
    stdout.print(f"member {member_id}: {result.get('message', '')}")


@recovery_app.command("status")
@guarded
def status(
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    node: NodeOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Who holds a recovery share, who has submitted one, how many are still needed.

    \b
    Example: charter recovery status --network workspace/sandbox/network.json
    """
    t = resolve_target(network=network, url=url, service_cert=service_cert, node=node)

    async def go() -> dict[str, Any]:
        async with CharterClient(t.url, t.service_cert) as c:
            return await c.recovery_status()

    result = run_async(go())
    if as_json:
        print_json(result)
        return
    submitted = set(result.get("submittedMembers") or [])
    stdout.print(
        f"service {result.get('serviceStatus')}: {result.get('submittedCount')} of "
        f"{result.get('recoveryThreshold')} shares submitted, "
        f"{result.get('stillNeeded')} still needed"
    )
    table = Table("recovery member", "submitted")
    for member_id in result.get("recoveryMembers") or []:
        table.add_row(short_id(member_id, 64), "yes" if member_id in submitted else "no")
    print_table(table)
