"""Fixtures for the ACL-compatible sample: one real node serving it, and user0's SDK client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from acl_testkit import SdkClient, sdk_client, start_sandbox

from charter.sandbox import Sandbox


@pytest.fixture(scope="session")
def acl_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One node serving the ACL app, shared by the area's single-node tests."""
    sandbox = start_sandbox(tmp_path_factory.mktemp("acl") / "sandbox", nodes=1)
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture(scope="session")
def admin(acl_sandbox: Sandbox) -> Iterator[SdkClient]:
    """user0, a governance user, hence an Administrator."""
    with sdk_client(acl_sandbox) as client:
        yield client
