"""The console's files and the explorer's ledger reads, over HTTP (no browser)."""

from __future__ import annotations

import asyncio

import pytest

from charter.enclave_app.console import (
    CONTENT_SECURITY_POLICY,
    ENTRIES_PER_READ_MAX,
    Console,
    _entries_query,
)
from charter.enclave_app.interface import ConsoleConfig
from charter.sandbox import Sandbox


def test_console_files_are_served_with_their_types_and_a_strict_policy() -> None:
    console = Console(ConsoleConfig())
    for path, content_type in (
        ("/console", "text/html; charset=utf-8"),
        ("/console/", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/crypto.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
    ):
        response = console.static("GET", path, {})
        assert response.status == 200, path
        assert response.content_type == content_type
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY


def test_console_serves_only_its_own_files() -> None:
    console = Console(ConsoleConfig())
    for path in ("/console/../node.py", "/console/main.py", "/console/nothing.js", "/console/x/"):
        assert console.static("GET", path, {}).status == 404, path
    assert console.static("POST", "/console/app.js", {}).status == 405
    etag = console.static("GET", "/console/app.js", {}).headers["ETag"]
    assert console.static("GET", "/console/app.js", {"If-None-Match": etag}).status == 304


def test_a_disabled_console_serves_nothing() -> None:
    console = Console(ConsoleConfig(enabled=False))
    assert console.static("GET", "/console/", {}).status == 404


def test_ledger_reads_are_refused_when_the_config_admits_nobody() -> None:
    console = Console(ConsoleConfig(ledger_explorer=[]))

    async def never(first: int, last: int) -> object:
        raise AssertionError("no entry is read for a refused caller")

    response = asyncio.run(console.ledger_entries(None, "GET", "", None, never))  # type: ignore[arg-type]
    assert response.status == 403
    assert b"LedgerExplorerDisabled" in response.body


def test_ledger_reads_are_bounded() -> None:
    assert _entries_query("from_seqno=5&count=7") == (5, 7)
    for query in (
        "from_seqno=0",
        f"count={ENTRIES_PER_READ_MAX + 1}",
        "count=0",
        "from_seqno=x",
        "other=1",
        "a=" + "1" * 300,
    ):
        with pytest.raises(ValueError):
            _entries_query(query)


@pytest.mark.e2e
def test_the_explorer_serves_checked_entries_to_users_and_nothing_to_anonymous_callers(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    sb = Sandbox(tmp_path_factory.mktemp("console-http") / "sandbox", nodes=1)
    try:
        asyncio.run(sb.start())
        asyncio.run(_check_explorer(sb))
    finally:
        sb.stop()


async def _check_explorer(sb: Sandbox) -> None:
    async with sb.client(user=0) as user:
        r = user.check(await user.post("/app/log/private", json={"id": 1, "msg": "secret"}))
        assert r.txid is not None
        await user.wait_for_commit(r.txid, timeout_s=15)
        seqno = r.txid.seqno
        doc = await user.get_json(
            "/node/ledger/entries", params={"from_seqno": str(seqno), "count": "1"}
        )
        (entry,) = doc["entries"]
        assert entry["seqno"] == seqno and entry["txid"] == str(r.txid)
        assert entry["leaf_checked"] is True
        assert entry["private"]["encrypted"] is True
        assert b"secret" not in repr(entry).encode()
        page = await user.get("/console/")
        assert page.status == 200
        assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    async with sb.client() as anonymous:
        refused = await anonymous.get("/node/ledger/entries")
        assert refused.status == 401
