"""`charter call`: one request to an application endpoint, under any of its auth policies.

As whom: a user's TLS certificate (``--user N`` with ``--network``, or ``--cert``/``--key``),
a JWT (``--bearer TOKEN``, for ``jwt`` endpoints), or a user's COSE_Sign1 signature over the
JSON body (``--sign``, for ``user_cose_sign1`` endpoints: the identity signs instead of
presenting its certificate). Prints the answer's JSON (or text); an error answer exits
non-zero with its code.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from charter.cli_common import (
    CertOpt,
    KeyOpt,
    NetworkOpt,
    NodeOpt,
    ServiceCertOpt,
    UrlOpt,
    guarded,
    print_json,
    resolve_target,
    run_async,
)
from charter.errors import IdentityError
from charter.identity import Identity
from charter.sdk import CharterClient

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@guarded
def call(
    method: Annotated[str, typer.Argument(help="HTTP method: GET, POST, PUT, PATCH or DELETE.")],
    path: Annotated[str, typer.Argument(help="Endpoint path, e.g. /app/log/private/jwt.")],
    body: Annotated[
        str | None, typer.Option("--body", help="JSON request body, e.g. '{\"id\": 1}'.")
    ] = None,
    query: Annotated[
        list[str] | None, typer.Option("--query", metavar="NAME=VALUE", help="Query parameter.")
    ] = None,
    bearer: Annotated[
        str | None,
        typer.Option(
            "--bearer",
            envvar="CHARTER_BEARER_TOKEN",
            metavar="TOKEN",
            help="Send this JWT as Authorization: Bearer (jwt endpoints).",
        ),
    ] = None,
    sign: Annotated[
        bool,
        typer.Option("--sign", help="Sign the JSON body as the user (user_cose_sign1 endpoints)."),
    ] = False,
    user: Annotated[
        int | None,
        typer.Option("--user", metavar="N", min=0, help="User N of the --network file."),
    ] = None,
    network: NetworkOpt = None,
    url: UrlOpt = None,
    service_cert: ServiceCertOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    node: NodeOpt = 0,
) -> None:
    """Call an application endpoint and print the answer.

    \b
    Examples:
      charter call POST /app/log/private --body '{"id": 1, "msg": "hi"}' --user 0 --network N
      charter call GET /app/log/private/jwt --query id=1 --bearer "$TOKEN" --network N
      charter call POST /app/log/private/cose --sign --body '{"id": 2, "msg": "hi"}' --user 0 --network N
    """
    method = method.upper()
    if method not in METHODS:
        raise IdentityError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not path.startswith("/"):
        raise IdentityError(f"the path starts with '/': {path!r}")
    t = resolve_target(
        network=network,
        url=url,
        service_cert=service_cert,
        cert=cert,
        key=key,
        user=user,
        node=node,
    )
    try:
        document: Any = None if body is None else json.loads(body)
    except ValueError as exc:
        raise IdentityError(f"--body is not JSON: {exc}") from None
    params: dict[str, str] = {}
    for item in query or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise IdentityError(f"--query takes NAME=VALUE, got {item!r}")
        params[name] = value
    signer: Identity | None = None
    if sign:
        if t.cert is None or t.key is None:
            raise IdentityError("--sign needs a user identity: --user N or --cert and --key")
        if document is None:
            raise IdentityError("--sign signs the JSON --body: give one")
        signer = Identity.load(t.cert, t.key)

    async def go() -> Any:
        # A signing user signs rather than presenting its certificate over TLS.
        tls_cert, tls_key = (None, None) if signer is not None else (t.cert, t.key)
        async with CharterClient(
            t.url, t.service_cert, cert_path=tls_cert, key_path=tls_key, bearer_token=bearer
        ) as c:
            if signer is not None:
                response = await c.post_signed(path, signer, json=document, method=method)
            else:
                response = await c.request(method, path, json=document, params=params or None)
            return c.check(response).body

    answer = run_async(go())
    if isinstance(answer, (dict, list, bool, int, float)) or answer is None:
        print_json(answer)
    elif isinstance(answer, bytes):
        sys.stdout.buffer.write(answer + b"\n")
    else:
        sys.stdout.write(f"{answer}\n")
