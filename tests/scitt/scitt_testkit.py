"""Helpers for the SCITT tests: real sandboxes serving the SCITT app, and Microsoft's client
`pyscitt` 0.10.1 run as separate processes from a virtual environment of its own.

`pyscitt_venv()` builds that environment once with scripts/pyscitt-venv (python -m venv +
pip install pyscitt==0.10.1; reused while present, locked against parallel workers). The
`scitt` command line signs, submits and validates; `pyscitt_driver.py`, run by the same
environment's interpreter, does with pyscitt's library what the command line has no command
for (making a signing identity, fetching a receipt, the parameters).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]
SCITT_APP = "charter.enclave_app.samples.scitt"
DRIVER = Path(__file__).with_name("pyscitt_driver.py")
DATA = Path(__file__).with_name("data")
CONTENT_TYPE = "application/json"
STATEMENT_BYTES_LIMIT = 4096
PYSCITT_TIMEOUT_S = 120


def pyscitt_venv() -> Path:
    done = subprocess.run(
        [str(ROOT / "scripts" / "pyscitt-venv")],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert done.returncode == 0, f"building pyscitt's venv failed:\n{done.stderr[-4000:]}"
    return Path(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Pyscitt:
    """Microsoft's client, in its own environment."""

    venv: Path

    def run(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        # A clean environment: nothing of Charter's venv leaks into the client's; `env` adds
        # what a user would set (SSL_CERT_FILE).
        env = {
            "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/"),
            **(env or {}),
        }
        done = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=PYSCITT_TIMEOUT_S,
        )
        if check:
            assert done.returncode == 0, (
                f"{args[0]} {args[1]} failed ({done.returncode}):\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
            )
        return done

    def scitt(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.venv / "bin" / "scitt"), *args, check=check)

    def driver(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.venv / "bin" / "python"), str(DRIVER), *args, check=check, env=env)


@dataclass(frozen=True)
class SigningIdentity:
    key: Path
    chain: Path
    issuer: str


def make_identity(client: Pyscitt, directory: Path) -> SigningIdentity:
    issuer = client.driver("identity", str(directory)).stdout.strip().splitlines()[-1]
    assert issuer.startswith("did:x509:0:sha256:")
    return SigningIdentity(directory / "key.pem", directory / "chain.pem", issuer)


def sign(
    client: Pyscitt,
    identity: SigningIdentity,
    statement: bytes,
    out: Path,
    *,
    content_type: str = CONTENT_TYPE,
) -> Path:
    """`scitt sign` with a did:x509 issuer in the CWT claims (--uses-cwt)."""
    source = out.with_suffix(".json")
    source.write_bytes(statement)
    client.scitt(
        "sign",
        "--statement", str(source),
        "--key", str(identity.key),
        "--x5c", str(identity.chain),
        "--content-type", content_type,
        "--issuer", identity.issuer,
        "--uses-cwt",
        "--out", str(out),
    )  # fmt: skip
    return out


def start_sandbox(
    workspace: Path, nodes: int, configure_node: Callable[[int, dict[str, Any]], None] | None = None
) -> Sandbox:
    sandbox = Sandbox(
        workspace,
        nodes=nodes,
        app=SCITT_APP,
        signature_delay_ms=20,
        configure_node=configure_node,
    )
    try:
        asyncio.run(sandbox.start())
    except BaseException:
        sandbox.stop()
        raise
    return sandbox


def set_policy(sandbox: Sandbox, **policy: Any) -> None:
    """Members pass a `set_scitt_configuration` proposal."""

    async def go() -> None:
        async with sandbox.client() as client:
            await sandbox.pass_proposal(
                client,
                [
                    {
                        "name": "set_scitt_configuration",
                        "args": {"configuration": {"policy": policy}},
                    }
                ],
            )

    asyncio.run(go())


def url_of(sandbox: Sandbox, node: int = 0) -> str:
    return sandbox.nodes[node].url
