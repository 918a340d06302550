"""The application framework: endpoints over the KV store, in the style of CCF's apps.

An app developer writes::

    app = App("logging")

    @app.post("/log/private", auth="user_cert", body=LogRecord)
    def record(ctx: Context) -> bool:
        ctx.tx.view("records", U64, STR).put(ctx.body.id, ctx.body.msg)
        return True

The node runtime owns sockets, TLS and authentication; this module is pure. For each request
it calls `App.match` (or `App.no_route_response` when that finds nothing), authenticates the
caller against ``match.endpoint.auth``, begins a KV transaction and calls `App.invoke`, which
validates the input, runs the handler and renders the `Outcome`: the HTTP response, whether
the transaction must be committed (a write endpoint that answered 2xx with writes) and its
optional claims digest. Bad input never reaches the handler, so it changes nothing.
"""

from __future__ import annotations

import logging
import re
import traceback
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from charter.enclave_app.app_openapi import build_openapi
from charter.enclave_app.errors import HttpError, error_status

# Re-exported: apps declare policies and read callers through this module.
from charter.enclave_app.policies import (
    ANONYMOUS as ANONYMOUS,
)
from charter.enclave_app.policies import (
    AUTH_POLICIES as AUTH_POLICIES,
)
from charter.enclave_app.policies import (
    COSE_POLICIES as COSE_POLICIES,
)
from charter.enclave_app.policies import (
    AllOf as AllOf,
)
from charter.enclave_app.policies import (
    AuthPolicy as AuthPolicy,
)
from charter.enclave_app.policies import (
    Caller as Caller,
)
from charter.enclave_app.policies import (
    all_of as all_of,
)

if TYPE_CHECKING:
    from charter.enclave_app.indexing.strategy import IndexStrategy
    from charter.enclave_app.kv import Tx

S = TypeVar("S", bound="IndexStrategy[Any]")

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE")
ENDPOINT_MODES: tuple[str, ...] = ("readwrite", "readonly", "historical")
# The header naming the transaction a historical endpoint is asked about (CCF's).
TXID_HEADER = "x-ms-ccf-transaction-id"
_TXID = re.compile(r"(0|[1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,18})")

BODY_BYTES_MAX_DEFAULT = 1 << 20
PATH_BYTES_MAX = 4096
QUERY_BYTES_MAX = 8192
QUERY_FIELDS_MAX = 64
# A 422 message lists at most this many failing fields, so error bodies stay small.
VALIDATION_ERRORS_LISTED_MAX = 20
CLAIMS_DIGEST_BYTES = 32

JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
BINARY_CONTENT_TYPE = "application/octet-stream"

# Renders any JSON-able value, pydantic models nested in dicts and lists included.
_JSON_ANY: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(Any)

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


# --------------------------------------------------------------------------------------------
# Values exchanged with handlers and with the runtime


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler may return to choose the status, headers or content type. ``body`` is
    rendered like a plain return value (JSON for dict/list/model, text for str, raw bytes)."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A rendered response: what the runtime writes to the wire."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    content_type: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of `App.invoke`: commit the transaction only if ``commit`` is True."""

    response: HttpResponse
    commit: bool
    claims_digest: bytes | None


Handler = Callable[["Context"], Any]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route. ``path`` is the full template (prefix included), e.g. ``/app/log/{id}``."""

    method: str
    path: str
    handler: Handler
    auth: tuple[str | AllOf, ...]
    read_only: bool
    body_model: Any
    query_model: type[pydantic.BaseModel] | None
    path_model: type[pydantic.BaseModel] | None
    response_model: Any
    max_body_bytes: int
    summary: str
    description: str
    app_name: str
    include_in_api: bool
    # "readwrite", "readonly" or "historical" (CCF's endpoint modes).
    mode: str
    params: tuple[str, ...]
    pattern: re.Pattern[str] | None
    body_adapter: pydantic.TypeAdapter[Any] | None


@dataclass(frozen=True, slots=True)
class Match:
    """A route found for a request; ``path_params`` are percent-decoded strings."""

    endpoint: Endpoint
    path_params: Mapping[str, str]


class Context:
    """What a handler sees: the transaction, the caller and the validated request."""

    __slots__ = (
        "_claims_digest",
        "body",
        "caller",
        "endpoint",
        "headers",
        "historical",
        "path",
        "query",
        "response_headers",
        "runtime",
        "status",
        "tx",
    )

    def __init__(
        self,
        *,
        tx: Tx,
        caller: Caller,
        endpoint: Endpoint,
        body: Any,
        query: Any,
        path: Any,
        headers: Mapping[str, str],
        runtime: Any = None,
    ) -> None:
        self.tx = tx
        self.caller = caller
        # The node's read-only view for apps (`enclave_app.runtime_view.RuntimeView`), or
        # None when a handler runs outside a node (unit tests).
        self.runtime = runtime
        self.endpoint = endpoint
        # A validated model instance when the endpoint declared one, else raw bytes / strings.
        self.body = body
        self.query = query
        self.path = path
        # Request headers, names lower-cased.
        self.headers = headers
        # None: 200 for a returned value, 204 for None. A handler may set any status.
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self._claims_digest: bytes | None = None
        # A historical endpoint's state at the requested transaction
        # (`enclave_app.node.historical.HistoricalState`); None elsewhere.
        self.historical: Any = None

    def set_header(self, name: str, value: str) -> None:
        self.response_headers[name] = value

    def set_status(self, status: int) -> None:
        self.status = status

    def set_claims_digest(self, digest: bytes) -> None:
        """Bind a 32-byte digest of application claims into this transaction's ledger leaf,
        so that its receipt proves the claims."""
        if not isinstance(digest, bytes) or len(digest) != CLAIMS_DIGEST_BYTES:
            raise ValueError("a claims digest is 32 bytes")
        self._claims_digest = digest

    @property
    def claims_digest(self) -> bytes | None:
        return self._claims_digest


# --------------------------------------------------------------------------------------------
# Rendering


def error_response(message: str, *, code: str, status: int | None = None) -> HttpResponse:
    """The JSON error answer for `code`, with its status from `STATUS_BY_CODE`; `status` is
    only for an application's own codes, which have no row (see `HttpError`)."""
    status = error_status(code, status)
    body = _JSON_ANY.dump_json({"error": {"code": code, "message": message}})
    return HttpResponse(status, body, {}, JSON_CONTENT_TYPE)


def _render_body(body: Any) -> tuple[bytes, str | None]:
    if body is None:
        return b"", None
    if body is True or body is False:
        # A write's usual answer (`true`, as CCF's samples): no serialiser for one word.
        return (b"true" if body else b"false"), JSON_CONTENT_TYPE
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), BINARY_CONTENT_TYPE
    if isinstance(body, str):
        return body.encode("utf-8"), TEXT_CONTENT_TYPE
    if isinstance(body, pydantic.BaseModel):
        return body.model_dump_json(by_alias=True).encode("utf-8"), JSON_CONTENT_TYPE
    return _JSON_ANY.dump_json(body, by_alias=True), JSON_CONTENT_TYPE


def _render(result: Any, ctx: Context) -> HttpResponse:
    headers = dict(ctx.response_headers)
    if isinstance(result, Response):
        status = result.status
        body, content_type = _render_body(result.body)
        headers.update(result.headers)
        content_type = result.content_type or content_type
    else:
        body, content_type = _render_body(result)
        status = ctx.status or (204 if result is None else 200)
    if not 100 <= status <= 599:
        raise ValueError(f"bad HTTP status {status}")
    return HttpResponse(status, body, headers, content_type)


def _is_json_content_type(value: str | None) -> bool:
    """No Content-Type, or `application/json` (parameters such as charset allowed)."""
    if value is None:
        return True
    return value.partition(";")[0].strip().lower() == JSON_CONTENT_TYPE


def _validation_message(where: str, exc: pydantic.ValidationError) -> str:
    # Never echo the input: it may be a private value.
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:VALIDATION_ERRORS_LISTED_MAX]:
        loc = ".".join(str(part) for part in (where, *error["loc"]))
        parts.append(f"{loc}: {error['msg']}")
    return "; ".join(parts)


def _historical_state(ctx: Context, runtime: Any) -> Any:
    """The state a historical endpoint is asked about, None while the node fetches it."""
    text = ctx.headers.get(TXID_HEADER)
    if text is None:
        raise HttpError(f"Missing {TXID_HEADER} header", code="InvalidHeaderValue")
    found = _TXID.fullmatch(text)
    if found is None:
        raise HttpError(
            f"{TXID_HEADER} is not a transaction id (view.seqno)", code="InvalidHeaderValue"
        )
    if runtime is None:
        raise HttpError("historical endpoints need a node", code="InternalError")
    return runtime.historical_state(int(found.group(1)), int(found.group(2)))


def _not_yet_available(txid: str) -> HttpResponse:
    """CCF's answer while a historical state is being fetched: 202, ask again later."""
    body = _JSON_ANY.dump_json(
        {
            "status": "Pending",
            "message": f"Historical transaction {txid} is not currently available.",
        }
    )
    return HttpResponse(202, body, {"Retry-After": HISTORICAL_RETRY_AFTER_S}, JSON_CONTENT_TYPE)


HISTORICAL_RETRY_AFTER_S = "1"


# --------------------------------------------------------------------------------------------
# The application


def _compile_template(path: str) -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    if not path.startswith("/"):
        raise ValueError(f"a path template starts with '/': {path!r}")
    params = tuple(_PARAM.findall(path))
    if len(set(params)) != len(params):
        raise ValueError(f"repeated path parameter in {path!r}")
    literal = _PARAM.sub("", path)
    if "{" in literal or "}" in literal or "?" in path:
        raise ValueError(f"malformed path template {path!r}")
    if not params:
        return None, ()
    regex, last = [], 0
    for found in _PARAM.finditer(path):
        regex.append(re.escape(path[last : found.start()]))
        regex.append(f"(?P<{found.group(1)}>[^/]+)")
        last = found.end()
    regex.append(re.escape(path[last:]))
    return re.compile("".join(regex)), params


def _docs(handler: Handler) -> tuple[str, str]:
    doc = (handler.__doc__ or "").strip()
    lines = doc.splitlines()
    summary = lines[0].strip() if lines else handler.__name__.replace("_", " ")
    return summary, doc


class App:
    """A set of endpoints under a path prefix; ``App.include`` merges another app's routes."""

    def __init__(
        self,
        name: str,
        prefix: str = "/app",
        *,
        version: str = "1.0.0",
        api_path: str | None = "/api",
        max_body_bytes: int = BODY_BYTES_MAX_DEFAULT,
    ) -> None:
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(f"a prefix starts and does not end with '/': {prefix!r}")
        assert max_body_bytes > 0
        self.name = name
        self.prefix = prefix
        self.version = version
        self.max_body_bytes = max_body_bytes
        # Exact paths are found by dict lookup; templates are tried most literal first.
        self._exact: dict[str, dict[str, Endpoint]] = {}
        self._templates: dict[str, dict[str, Endpoint]] = {}
        self._template_order: list[tuple[int, re.Pattern[str], dict[str, Endpoint]]] = []
        # Index strategies the node builds and feeds (`install_index`).
        self.index_strategies: list[IndexStrategy[Any]] = []
        if api_path is not None:
            self.endpoint("GET", api_path, auth="none", include_in_api=False)(self._serve_api)

    def _serve_api(self, ctx: Context) -> dict[str, Any]:
        """The OpenAPI document of this app."""
        return self.openapi()

    # ---------------------------------------------------------------- registration

    def endpoint(
        self,
        method: str,
        path: str,
        *,
        auth: AuthPolicy | AllOf | Iterable[AuthPolicy | AllOf] = "user_cert",
        body: Any = None,
        query: type[pydantic.BaseModel] | None = None,
        path_params: type[pydantic.BaseModel] | None = None,
        response: Any = None,
        read_only: bool | None = None,
        max_body_bytes: int | None = None,
        include_in_api: bool = True,
        mode: str | None = None,
    ) -> Callable[[H], H]:
        """Register ``handler(ctx)`` for ``method`` on ``prefix + path``.

        ``auth``: one policy or a list (any of them admits the caller; an empty list, like
        ``"none"``, admits everyone unauthenticated, as CCF); `all_of` requires several at
        once. ``body``: a pydantic
        model (or any type pydantic validates) for the JSON body; without it ``ctx.body`` is
        the raw bytes. ``query`` / ``path_params``: pydantic models for the query string and
        the ``{name}`` path parameters (else ``ctx.query`` / ``ctx.path`` hold strings).
        ``read_only`` defaults to True for GET: such an endpoint never commits.
        ``mode="historical"`` (CCF's `make_historical_endpoint`): the request names a
        committed transaction in the ``x-ms-ccf-transaction-id`` header and the handler runs
        only once the node holds that transaction's state, read back from the ledger and
        checked: ``ctx.historical`` (its writes, private ones decrypted, and its receipt via
        ``ctx.runtime.historical_receipt``); meanwhile the caller gets ``202`` with
        ``Retry-After``. Historical endpoints are read-only.
        """
        method = method.upper()
        if mode not in (None, *ENDPOINT_MODES):
            raise ValueError(f"mode must be one of {ENDPOINT_MODES}, got {mode!r}")
        if mode == "historical" and read_only is False:
            raise ValueError("a historical endpoint is read-only")
        if mode is not None and mode != "historical":
            if read_only is not None and read_only != (mode == "readonly"):
                raise ValueError(f"mode {mode!r} contradicts read_only={read_only}")
            read_only = mode == "readonly"
        if mode == "historical":
            read_only = True
        if method not in METHODS:
            raise ValueError(f"unsupported method {method}")
        policies = (auth,) if isinstance(auth, (str, AllOf)) else tuple(auth)
        if not policies:
            policies = ("none",)  # CCF: no policy means unauthenticated
        names = {p for p in policies if isinstance(p, str)}
        if not names <= AUTH_POLICIES or not all(isinstance(p, (str, AllOf)) for p in policies):
            raise ValueError(
                f"auth must be among {sorted(AUTH_POLICIES)} or all_of(...), got {policies}"
            )
        if len(set(policies)) != len(policies):
            raise ValueError(f"auth lists a policy twice: {policies}")
        if not path.startswith("/"):
            raise ValueError(f"a path starts with '/': {path!r}")
        full_path = self.prefix + path
        pattern, params = _compile_template(full_path)
        for model, what in ((query, "query"), (path_params, "path_params")):
            if model is not None and not (
                isinstance(model, type) and issubclass(model, pydantic.BaseModel)
            ):
                raise TypeError(f"{what} must be a pydantic model class")
        if path_params is not None and set(path_params.model_fields) != set(params):
            raise ValueError(f"path_params fields must be exactly {params} for {full_path!r}")
        limit = self.max_body_bytes if max_body_bytes is None else max_body_bytes
        assert limit >= 0

        def register(handler: H) -> H:
            summary, description = _docs(handler)
            is_read_only = (method == "GET") if read_only is None else read_only
            endpoint = Endpoint(
                method=method,
                path=full_path,
                handler=handler,
                auth=policies,
                read_only=is_read_only,
                body_model=body,
                query_model=query,
                path_model=path_params,
                response_model=response,
                max_body_bytes=limit,
                summary=summary,
                description=description,
                app_name=self.name,
                include_in_api=include_in_api,
                mode=mode or ("readonly" if is_read_only else "readwrite"),
                params=params,
                pattern=pattern,
                body_adapter=None if body is None else pydantic.TypeAdapter(body),
            )
            self._add(endpoint)
            return handler

        return register

    def _add(self, endpoint: Endpoint) -> None:
        if endpoint.pattern is None:
            methods = self._exact.setdefault(endpoint.path, {})
        else:
            # Templates differing only in parameter names are one route shape.
            shape = _PARAM.sub("{}", endpoint.path)
            methods = self._templates.get(shape, {})
            if not methods:
                self._templates[shape] = methods
                literal_chars = len(_PARAM.sub("", endpoint.path))
                self._template_order.append((literal_chars, endpoint.pattern, methods))
                # Most literal characters first, so ".../{id}:withdraw" beats ".../{id}".
                self._template_order.sort(key=lambda item: -item[0])
        if endpoint.method in methods:
            raise ValueError(f"{endpoint.method} {endpoint.path} is already registered")
        methods[endpoint.method] = endpoint

    def get(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.endpoint("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.endpoint("POST", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.endpoint("PUT", path, **options)

    def patch(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.endpoint("PATCH", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.endpoint("DELETE", path, **options)

    def include(self, other: App) -> None:
        """Serve ``other``'s routes from this app too (a clash is a ValueError); its index
        strategies come along."""
        for endpoint in other.endpoints():
            self._add(endpoint)
        for strategy in other.index_strategies:
            self.install_index(strategy)

    def install_index(self, strategy: S) -> S:
        """Ask every node serving this app to index its committed transactions with
        `strategy` (e.g. `SeqnosByKey("records")`); returns it, for `ctx.runtime.index`."""
        if any(s.name == strategy.name for s in self.index_strategies if s is not strategy):
            raise ValueError(f"an index strategy named {strategy.name!r} is installed already")
        if strategy not in self.index_strategies:
            self.index_strategies.append(strategy)
        return strategy

    def endpoints(self) -> list[Endpoint]:
        found = [e for methods in self._exact.values() for e in methods.values()]
        found += [e for methods in self._templates.values() for e in methods.values()]
        return sorted(found, key=lambda e: (e.path, METHODS.index(e.method)))

    # ---------------------------------------------------------------- dispatch

    def match(self, method: str, path: str) -> Match | None:
        """The endpoint for ``method`` and ``path`` (no query string), or None."""
        if len(path) > PATH_BYTES_MAX:
            return None
        path = path.partition("?")[0]
        method = method.upper()
        methods = self._exact.get(path)
        if methods is not None and method in methods:
            return Match(methods[method], {})
        for _literal_chars, pattern, methods in self._template_order:
            if method not in methods:
                continue
            found = pattern.fullmatch(path)
            if found is not None:
                endpoint = methods[method]
                # By position: this method's template may name its parameters differently.
                values = (urllib.parse.unquote(value) for value in found.groups())
                return Match(endpoint, dict(zip(endpoint.params, values, strict=True)))
        return None

    def allowed_methods(self, path: str) -> list[str]:
        """Methods that have a route for ``path`` (for 405 and the Allow header)."""
        path = path.partition("?")[0]
        allowed = set(self._exact.get(path, {}))
        for _literal_chars, pattern, methods in self._template_order:
            if pattern.fullmatch(path) is not None:
                allowed |= methods.keys()
        return [m for m in METHODS if m in allowed]

    def no_route_response(self, method: str, path: str) -> HttpResponse:
        """The error to answer when `match` found nothing: 414, 405 (with Allow) or 404."""
        if len(path) > PATH_BYTES_MAX:
            return error_response("Request path is too long", code="RequestUriTooLong")
        allowed = self.allowed_methods(path)
        if allowed:
            response = error_response(
                f"Allowed methods for this path: {', '.join(allowed)}", code="MethodNotAllowed"
            )
            return HttpResponse(
                405, response.body, {"Allow": ", ".join(allowed)}, JSON_CONTENT_TYPE
            )
        return error_response(f"Unknown path: {path[:256]}", code="ResourceNotFound")

    def invoke(
        self,
        match: Match,
        *,
        tx: Tx,
        caller: Caller,
        body: bytes = b"",
        query: str = "",
        headers: Mapping[str, str] | None = None,
        runtime: Any = None,
    ) -> Outcome:
        """Validate the request, run the handler on ``tx`` and render the outcome."""
        endpoint = match.endpoint
        try:
            ctx = self._context(endpoint, match, tx, caller, body, query, headers or {})
            ctx.runtime = runtime
        except HttpError as exc:
            return Outcome(
                error_response(exc.message, code=exc.code, status=exc.status), False, None
            )
        try:
            if endpoint.mode == "historical":
                ctx.historical = _historical_state(ctx, runtime)
                if ctx.historical is None:
                    return Outcome(_not_yet_available(ctx.headers[TXID_HEADER]), False, None)
            response = _render(endpoint.handler(ctx), ctx)
        except HttpError as exc:
            return Outcome(
                error_response(exc.message, code=exc.code, status=exc.status), False, None
            )
        except Exception as exc:
            # The message and locals may hold private values: log the type and frames only.
            frames = " <- ".join(
                f"{frame.filename}:{frame.lineno} {frame.name}"
                for frame in reversed(traceback.extract_tb(exc.__traceback__))
            )
            logger.error(
                "handler failed method=%s path=%s error=%s at=%s",
                endpoint.method,
                endpoint.path,
                type(exc).__name__,
                frames,
            )
            return Outcome(error_response("Internal error", code="InternalError"), False, None)
        if endpoint.read_only and tx.has_writes:
            logger.error(
                "read-only endpoint wrote method=%s path=%s", endpoint.method, endpoint.path
            )
            return Outcome(
                error_response("Read-only endpoint attempted a write", code="InternalError"),
                False,
                None,
            )
        commit = not endpoint.read_only and 200 <= response.status < 300 and tx.has_writes
        return Outcome(response, commit, ctx.claims_digest if commit else None)

    def _context(
        self,
        endpoint: Endpoint,
        match: Match,
        tx: Tx,
        caller: Caller,
        body: bytes,
        query: str,
        headers: Mapping[str, str],
    ) -> Context:
        if len(body) > endpoint.max_body_bytes:
            raise HttpError(f"Body exceeds {endpoint.max_body_bytes} bytes", code="RequestTooLarge")
        if len(query) > QUERY_BYTES_MAX:
            raise HttpError(f"Query exceeds {QUERY_BYTES_MAX} bytes", code="RequestUriTooLong")
        try:
            # Most writes have no query string: parse_qsl's set-up is skipped for them.
            pairs = (
                urllib.parse.parse_qsl(
                    query, keep_blank_values=True, max_num_fields=QUERY_FIELDS_MAX
                )
                if query
                else ()
            )
        except ValueError:
            raise HttpError("Malformed or oversized query string", code="InvalidInput") from None
        query_values: dict[str, Any] = {}
        for name, value in pairs:
            previous = query_values.get(name)
            if previous is None:
                query_values[name] = value
            elif isinstance(previous, list):
                previous.append(value)
            else:
                query_values[name] = [previous, value]
        lowered = {name.lower(): value for name, value in headers.items()}
        if endpoint.body_adapter is not None and not _is_json_content_type(
            lowered.get("content-type")
        ):
            # As CCF: a JSON endpoint takes a body declared as JSON, or one with no type.
            raise HttpError(
                f"expected Content-Type: {JSON_CONTENT_TYPE}", code="UnsupportedContentType"
            )
        parsed_query: Any = query_values
        parsed_path: Any = dict(match.path_params)
        parsed_body: Any = body if type(body) is bytes else bytes(body)
        try:
            where = "query"
            if endpoint.query_model is not None:
                parsed_query = endpoint.query_model.model_validate(query_values)
            where = "path"
            if endpoint.path_model is not None:
                parsed_path = endpoint.path_model.model_validate(parsed_path)
            where = "body"
            if endpoint.body_adapter is not None:
                # Strict: JSON `true` is not the integer 1, nor "1" a number.
                parsed_body = endpoint.body_adapter.validate_json(body, strict=True)
        except pydantic.ValidationError as exc:
            if where == "body" and any(e["type"] == "json_invalid" for e in exc.errors()):
                raise HttpError("Body is not valid JSON", code="InvalidInput") from None
            raise HttpError(_validation_message(where, exc), code="ValidationError") from None
        return Context(
            tx=tx,
            caller=caller,
            endpoint=endpoint,
            body=parsed_body,
            query=parsed_query,
            path=parsed_path,
            headers=lowered,
        )

    # ---------------------------------------------------------------- OpenAPI

    def openapi(self, prefix: str | None = None) -> dict[str, Any]:
        """An OpenAPI 3.1 document of the routes under ``prefix`` (default: this app's)."""
        under = self.prefix if prefix is None else prefix
        endpoints = [
            e
            for e in self.endpoints()
            if e.include_in_api and (e.path == under or e.path.startswith(under + "/"))
        ]
        return build_openapi(self.name, self.version, endpoints)
