"""The primary's refresh of JWT issuers' signing keys (issuers set with ``auto_refresh``).

Every `key_refresh_interval_s` (node config ``jwt``), the primary fetches, for each issuer
with ``auto_refresh``, ``{issuer}/.well-known/openid-configuration`` and then the document's
``jwks_uri`` (as CCF), over TLS verified against the issuer's governed CA bundle
(``ca_cert_bundle_name``) and nothing else. Keys that differ from the recorded ones are
written in one transaction through the node's commit path, so every node agrees on them
(backups apply the entry; they never fetch). A failed fetch changes nothing and is logged; the
next interval tries again. Only this loop awaits anything: the write itself is synchronous.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from charter.governance import jwt as gov_jwt

if TYPE_CHECKING:
    import aiohttp

    from charter.enclave_app.interface import JwtConfig
    from charter.enclave_app.node import Node

LOG = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 10.0
# The discovery document is small; the JWKS is bounded like keys set by proposal.
DISCOVERY_BYTES_MAX = 64 * 1024
WELL_KNOWN = "/.well-known/openid-configuration"


class RefreshError(Exception):
    """An issuer's keys could not be fetched or were not acceptable."""


async def _get_json(session: aiohttp.ClientSession, url: str, limit_bytes: int) -> Any:
    if urlsplit(url).scheme != "https":
        raise RefreshError(f"{url} is not an https URL")
    async with session.get(url, allow_redirects=False) as response:
        if response.status != 200:
            raise RefreshError(f"{url} answered {response.status}")
        body = await response.content.read(limit_bytes + 1)
        if len(body) > limit_bytes:
            raise RefreshError(f"{url} answered more than {limit_bytes} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise RefreshError(f"{url} did not answer JSON") from None


async def fetch_issuer_keys(issuer: str, ca_bundle_pem: str) -> dict[str, str]:
    """kid → SPKI PEM of the issuer's current keys, trusting only `ca_bundle_pem`."""
    import aiohttp  # here, not at import: a third of the enclave's start-up, used by few

    context = ssl.create_default_context(cadata=ca_bundle_pem)
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        discovery = await _get_json(session, issuer.rstrip("/") + WELL_KNOWN, DISCOVERY_BYTES_MAX)
        jwks_uri = discovery.get("jwks_uri") if isinstance(discovery, dict) else None
        if not isinstance(jwks_uri, str):
            raise RefreshError("the discovery document has no jwks_uri")
        jwks = await _get_json(session, jwks_uri, gov_jwt.JWKS_BYTES_MAX)
    try:
        return gov_jwt.parse_jwks(jwks)
    except ValueError as exc:
        raise RefreshError(f"the JWKS is not acceptable: {exc}") from None


class JwtKeyRefresher:
    """Refreshes auto-refreshed issuers' keys while this node is the primary."""

    def __init__(self, node: Node, config: JwtConfig, on_commit: Callable[[], None]) -> None:
        self.node = node
        self.interval_s = config.key_refresh_interval_s
        self.on_commit = on_commit
        self.attempts = 0
        self.successes = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh_once()
            except Exception as exc:  # a bug here must not end the loop
                LOG.error("event=jwt_refresh_failed error=%s", type(exc).__name__)

    def _targets(self) -> list[tuple[str, dict[str, Any], str]]:
        node = self.node
        if not node.is_primary or node.service_status() != "Open":
            return []
        tx = node.store.begin()
        targets = []
        for issuer, metadata in gov_jwt.issuers(tx).items():
            bundle_name = metadata.get("ca_cert_bundle_name")
            if metadata.get("auto_refresh") and isinstance(bundle_name, str):
                bundle = gov_jwt.ca_bundle(tx, bundle_name)
                if bundle is not None:
                    targets.append((issuer, metadata, bundle))
        return targets

    async def refresh_once(self) -> int:
        """Fetch every auto-refreshed issuer's keys; returns how many issuers changed."""
        import aiohttp

        changed = 0
        for issuer, metadata, bundle in self._targets():
            self.attempts += 1
            try:
                keys = await fetch_issuer_keys(issuer, bundle)
            except (RefreshError, aiohttp.ClientError, ssl.SSLError, OSError, TimeoutError) as exc:
                LOG.warning(
                    "event=jwt_refresh_fetch_failed issuer=%s error=%s", issuer, type(exc).__name__
                )
                continue
            self.successes += 1
            if self._write(issuer, metadata, keys):
                changed += 1
        return changed

    def _write(self, issuer: str, metadata: dict[str, Any], keys: dict[str, str]) -> bool:
        node = self.node
        # The fetch awaited: only a node still primary writes, and only for an issuer that
        # governance has not changed meanwhile.
        if not node.is_primary:
            return False
        tx = node.store.begin()
        if gov_jwt.issuer_metadata(tx, issuer) != metadata:
            return False
        if not gov_jwt.set_issuer_keys(tx, issuer, keys):
            return False
        node.commit_tx(tx)
        self.on_commit()
        LOG.info("event=jwt_keys_refreshed issuer=%s keys=%d", issuer, len(keys))
        return True


def start(node: Node, config: JwtConfig, on_commit: Callable[[], None]) -> asyncio.Task[None]:
    """Start the refresh loop (the runtime keeps the task)."""
    return asyncio.get_running_loop().create_task(JwtKeyRefresher(node, config, on_commit).run())
