"""Fixtures for the SCITT sample: pyscitt's own environment, one node serving the app with a
policy set by governance, and a signing identity the policy accepts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scitt_testkit import (
    CONTENT_TYPE,
    STATEMENT_BYTES_LIMIT,
    Pyscitt,
    SigningIdentity,
    make_identity,
    pyscitt_venv,
    set_policy,
    start_sandbox,
)

from charter.sandbox import Sandbox


@pytest.fixture(scope="session")
def pyscitt() -> Pyscitt:
    return Pyscitt(pyscitt_venv())


@pytest.fixture(scope="session")
def issuer_identity(pyscitt: Pyscitt, tmp_path_factory: pytest.TempPathFactory) -> SigningIdentity:
    return make_identity(pyscitt, tmp_path_factory.mktemp("issuer"))


@pytest.fixture(scope="session")
def scitt_sandbox(
    tmp_path_factory: pytest.TempPathFactory, issuer_identity: SigningIdentity
) -> Iterator[Sandbox]:
    """One node serving the SCITT app; governance accepts `issuer_identity` for JSON
    statements up to STATEMENT_BYTES_LIMIT bytes."""
    sandbox = start_sandbox(tmp_path_factory.mktemp("scitt") / "sandbox", nodes=1)
    try:
        set_policy(
            sandbox,
            acceptedIssuers=[issuer_identity.issuer],
            acceptedContentTypes=[CONTENT_TYPE],
            maxStatementBytes=STATEMENT_BYTES_LIMIT,
        )
        yield sandbox
    finally:
        sandbox.stop()
