"""The one request pipeline of a node: route → service open → auth → forward or
backpressure → invoke → commit.

What the pipeline needs of the node is the `Backend` protocol; this module imports nothing
of `enclave_app.node`. Lookups on the hot path never parse JSON per request: the service's
status and users' data are cached and refreshed by KV hooks on their tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from charter.enclave_app import auth
from charter.enclave_app.app import (
    AllOf,
    App,
    Caller,
    HttpResponse,
    error_response,
)
from charter.enclave_app.kv import MapChange, Store, Tx
from charter.enclave_app.rate_limit import RateLimiter
from charter.governance import tables as gt
from charter.ledger import service_state as ss

LOG = logging.getLogger(__name__)

TXID_HEADER = "x-ms-ccf-transaction-id"
RETRY_AFTER_S = "1"
# Writes are refused (503) while more than this many bytes of frames wait for the host.
HOST_BACKLOG_BYTES_MAX = 32 * 1024 * 1024
# Join requests per source address: a joiner polls every 0.5 s; several may share an address.
JOIN_PATH = "/node/join"
JOIN_RATE_PER_S = 4.0
JOIN_BURST = 8
# Maps only the service itself writes (governance, signatures, configuration).
RESERVED_MAP_PREFIX = ss.SERVICE_TABLE_PREFIX
# Users whose data is cached at once (the cache is rebuilt from the table past this).
USER_DATA_CACHED_MAX = 100_000
# Policies whose verdict depends only on the TLS peer certificate and the KV state (the
# maps in CALLER_MAPS), so it is remembered per (policies, certificate) until those change.
CERT_POLICIES: frozenset[str] = frozenset({"user_cert", "member_cert", "any_cert", "none"})
CALLER_MAPS = (gt.USERS_CERTS, gt.MEMBERS_CERTS, gt.USERS_INFO)
# Callers remembered at once (the memory is emptied past this: ~1 KiB each with the DER).
CALLERS_CACHED_MAX = 4_096


class AuthError(Exception):
    """The caller's credentials meet none of the endpoint's policies."""


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A request sent on to the primary; its answer arrives via `on_forward_response`."""

    forward_id: int
    primary: str


class Backend(Protocol):
    """What the pipeline asks of the node."""

    @property
    def ready(self) -> bool:
        """Raft and the node's identity exist."""

    @property
    def is_primary(self) -> bool: ...

    @property
    def uncommitted_tx_count(self) -> int: ...

    def host_backlog_bytes(self) -> int: ...

    def now_s(self) -> int: ...

    def forward(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        peer_der: bytes | None,
    ) -> HttpResponse | Forwarded: ...

    def commit(self, tx: Tx, claims_digest: bytes | None) -> tuple[int, int]: ...


class Frontend:
    """Serves requests for one node over its `Backend`."""

    def __init__(
        self,
        backend: Backend,
        store: Store,
        routes: App,
        runtime_view: Any,
        *,
        max_uncommitted_tx_count: int,
        clock_s: Callable[[], float],
        metrics: dict[str, int],
    ) -> None:
        self.backend = backend
        self.store = store
        self.routes = routes
        self.runtime_view = runtime_view
        self.max_uncommitted_tx_count = max_uncommitted_tx_count
        self.clock_s = clock_s
        self.metrics = metrics
        self.join_limiter = RateLimiter(rate_per_s=JOIN_RATE_PER_S, burst=JOIN_BURST)
        self._service_status: str | None = None
        # user id -> its `users.info` data (absent: not read yet since the table changed)
        self._user_data: dict[str, Any] = {}
        # (policies, peer certificate DER) -> the caller they admitted, for certificate
        # policies only; emptied whenever a map in CALLER_MAPS changes (any reason).
        self._callers: dict[tuple[tuple[str | AllOf, ...], bytes], Caller] = {}
        # policies -> whether they are all in CERT_POLICIES
        self._cert_only: dict[tuple[str | AllOf, ...], bool] = {}
        store.add_hook(gt.SERVICE_INFO, self._service_changed)
        store.add_hook(gt.USERS_INFO, self._users_changed)
        for map_name in CALLER_MAPS:
            store.add_hook(map_name, self._callers_changed)

    # ------------------------------------------------------------------ caches
    def _service_changed(self, change: MapChange | None = None) -> None:
        info = gt.service_info(self.store.begin())
        self._service_status = None if info is None else str(info.get("status"))

    def _users_changed(self, change: MapChange) -> None:
        for key in change.keys:
            self._user_data.pop(gt.key_to_id(key), None)
        if change.reason == "restore":
            self._user_data.clear()

    def _callers_changed(self, change: MapChange) -> None:
        self._callers.clear()

    @property
    def service_status(self) -> str | None:
        return self._service_status

    def _user_data_of(self, tx: Tx, user_id: str, key: bytes) -> Any:
        data = self._user_data.get(user_id)
        if data is None:
            info = tx.get(gt.USERS_INFO, key)
            data = gt.load_json(info, what="user info") if info else {}
            if len(self._user_data) >= USER_DATA_CACHED_MAX:
                self._user_data.clear()
            self._user_data[user_id] = data
        return data

    # ------------------------------------------------------------------ auth
    def authenticate(
        self,
        policies: tuple[str | AllOf, ...],
        tx: Tx,
        peer_der: bytes | None,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> auth.Authenticated:
        """The caller under the endpoint's policies (`enclave_app.auth`), or raise
        `auth.AuthFailure`. A certificate's verdict under certificate policies is remembered
        until the users' or members' maps change (refusals are not remembered)."""
        headers = headers or {}
        cacheable = peer_der is not None and self._cert_only.get(policies)
        if cacheable is None:
            cacheable = self._cert_only[policies] = all(
                isinstance(p, str) and p in CERT_POLICIES for p in policies
            )
        if cacheable:
            assert peer_der is not None
            caller = self._callers.get((policies, peer_der))
            if caller is not None:
                return auth.Authenticated(caller, body, headers)
        authenticated = auth.authenticate(
            policies,
            tx,
            peer_der=peer_der,
            headers=headers,
            body=body,
            now_s=self.backend.now_s(),
            user_data=self._user_data_of,
        )
        if cacheable and authenticated.signed is None:
            assert peer_der is not None
            if len(self._callers) >= CALLERS_CACHED_MAX:
                self._callers.clear()
            self._callers[(policies, peer_der)] = authenticated.caller
        return authenticated

    # ------------------------------------------------------------------ the pipeline
    def handle(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        peer_der: bytes | None,
        *,
        source: str | None = None,
        forwarded: bool = False,
    ) -> HttpResponse | Forwarded:
        """Serve one HTTP request, or hand back a `Forwarded` whose answer will come.
        `source` is the client's address (the IP of the TCP peer), for rate limits."""
        if not forwarded:
            self.metrics["requests"] += 1
        if (
            path == JOIN_PATH
            and source is not None
            and not self.join_limiter.allow(source, self.clock_s())
        ):
            # Anyone may ask to join: bound what one source can make the service do.
            response: HttpResponse | Forwarded = HttpResponse(
                429,
                error_response("Too many join requests", code="TooManyRequests").body,
                {"Retry-After": RETRY_AFTER_S},
                "application/json",
            )
        else:
            response = self._pipeline(method, path, query, headers, body, peer_der, forwarded)
        if not forwarded and isinstance(response, HttpResponse) and response.status >= 400:
            self.metrics["errors"] += 1
        return response

    def _pipeline(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        peer_der: bytes | None,
        forwarded: bool,
    ) -> HttpResponse | Forwarded:
        backend = self.backend
        # 1. route
        match = self.routes.match(method, path)
        if match is None:
            return self.routes.no_route_response(method, path)
        endpoint = match.endpoint
        if not backend.ready:
            return unavailable("The node is starting", code="ServiceNotReady")
        # 2. service open
        if path.startswith("/app/") and endpoint.include_in_api and self._service_status != "Open":
            return unavailable("The service is not open yet", code="FrontendNotOpen")
        # 3. auth
        tx = self.store.begin()
        try:
            authenticated = self.authenticate(
                endpoint.auth, tx, peer_der, headers=headers, body=body
            )
        except auth.AuthFailure as failure:
            return error_response(failure.message, code=failure.code)
        caller, payload = authenticated.caller, authenticated.body
        # 4. forward or backpressure
        if not endpoint.read_only:
            if not backend.is_primary:
                if forwarded:
                    return unavailable("The primary changed; retry", code="NotPrimary")
                # The primary authenticates again: it gets the request as the caller sent it.
                return backend.forward(method, path, query, headers, body, peer_der)
            limit = self.max_uncommitted_tx_count
            if limit and backend.uncommitted_tx_count >= limit:
                return unavailable("Retry later", code="TooManyPendingTransactions")
            if backend.host_backlog_bytes() > HOST_BACKLOG_BYTES_MAX:
                # The host is not taking ledger writes as fast as they come: refuse more
                # rather than queue them without bound (frames with writes are never dropped).
                return unavailable("The host is behind writing the ledger", code="HostBacklog")
        # 5. invoke
        outcome = self.routes.invoke(
            match,
            tx=tx,
            caller=caller,
            body=payload,
            query=query,
            headers=authenticated.headers,
            runtime=self.runtime_view,
        )
        response = outcome.response
        if not outcome.commit:
            return response
        # 6. commit
        if not path.startswith(("/gov/", "/node/")):
            reserved = [m for m in tx.write_set() if m.startswith(RESERVED_MAP_PREFIX)]
            if reserved:
                LOG.error("event=app_wrote_reserved_map path=%s", endpoint.path)
                return error_response(
                    "Applications may not write the service's own maps", code="InternalError"
                )
        # A signed request may not be played again (read-only ones change nothing).
        if authenticated.signed is not None:
            auth.record_signed(tx, authenticated, now_s=backend.now_s())
        view, seqno = backend.commit(tx, outcome.claims_digest)
        return HttpResponse(
            response.status,
            response.body,
            {**response.headers, TXID_HEADER: f"{view}.{seqno}"},
            response.content_type,
        )


def unavailable(message: str, *, code: str) -> HttpResponse:
    response = error_response(message, code=code)
    return HttpResponse(503, response.body, {"Retry-After": RETRY_AFTER_S}, response.content_type)
