"""The application framework's promises: routing, validation, commit rules, errors, limits."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from pydantic import BaseModel, Field

from charter.enclave_app.app import (
    ANONYMOUS,
    App,
    Caller,
    Context,
    Match,
    Outcome,
    Response,
)
from charter.enclave_app.errors import HttpError
from charter.enclave_app.kv import JSON, STR, Store

USER = Caller("user", "ab" * 32, "-----BEGIN CERTIFICATE-----", {"role": "tester"})


class Item(BaseModel):
    name: str = Field(min_length=1)
    count: int = Field(ge=0)


class Page(BaseModel):
    limit: int = Field(ge=1, le=100)
    tag: str | None = None


class ItemPath(BaseModel):
    item_id: int = Field(ge=0)


def build_app() -> App:
    app = App("test")
    calls: list[str] = []

    @app.post("/items", body=Item)
    def create(ctx: Context) -> dict[str, Any]:
        calls.append("create")
        item: Item = ctx.body
        ctx.tx.view("items", STR, JSON).put(item.name, item.model_dump())
        return {"created": item.name}

    @app.get("/items/{item_id}", path_params=ItemPath, auth=["user_cert", "member_cert"])
    def read(ctx: Context) -> Any:
        return {"id": ctx.path.item_id}

    @app.get("/items", query=Page, auth="none")
    def listing(ctx: Context) -> Any:
        return {"limit": ctx.query.limit, "tag": ctx.query.tag}

    @app.post("/proposals/{proposal_id}:withdraw", auth="member_cose")
    def withdraw(ctx: Context) -> Any:
        return {"withdrawn": ctx.path["proposal_id"]}

    @app.post("/proposals/{proposal_id}", auth="member_cose")
    def proposal(ctx: Context) -> Any:
        return {"proposal": ctx.path["proposal_id"]}

    @app.get("/write-in-get")
    def bad_read(ctx: Context) -> None:
        ctx.tx.put("items", b"k", b"v")

    @app.post("/no-writes")
    def no_writes(ctx: Context) -> str:
        return "nothing written"

    @app.post("/fail-after-write")
    def fail_after_write(ctx: Context) -> None:
        ctx.tx.put("items", b"k", b"v")
        raise HttpError("already there", code="Conflict", status=409)

    @app.post("/crash")
    def crash(ctx: Context) -> None:
        ctx.tx.put("items", b"k", b"v")
        raise KeyError("secret-private-value")

    @app.post("/claims")
    def claims(ctx: Context) -> None:
        ctx.tx.put("items", b"k", b"v")
        ctx.set_claims_digest(bytes(range(32)))

    @app.get("/claims-read-only")
    def claims_read_only(ctx: Context) -> str:
        ctx.set_claims_digest(bytes(32))
        return "read"

    @app.post("/bad-claims")
    def bad_claims(ctx: Context) -> None:
        ctx.tx.put("items", b"k", b"v")
        ctx.set_claims_digest(b"short")

    @app.post("/raw", max_body_bytes=16)
    def raw(ctx: Context) -> bytes:
        assert isinstance(ctx.body, bytes)
        return ctx.body[::-1]

    @app.put("/custom")
    def custom(ctx: Context) -> Response:
        ctx.tx.put("items", b"c", b"v")
        ctx.set_header("x-from-ctx", "1")
        return Response(201, {"ok": True}, {"Location": "/app/custom"})

    @app.delete("/status")
    def status(ctx: Context) -> None:
        ctx.tx.put("items", b"s", b"v")
        ctx.set_status(202)

    @app.get("/echo-headers", auth="none")
    def echo_headers(ctx: Context) -> Any:
        return {"agent": ctx.headers.get("user-agent"), "caller": ctx.caller.kind}

    @app.get("/query-raw", auth="none")
    def query_raw(ctx: Context) -> Any:
        return ctx.query

    @app.post("/list-body", body=list[int])
    def list_body(ctx: Context) -> Any:
        return sum(ctx.body)

    app.calls = calls  # type: ignore[attr-defined]
    return app


def call(
    app: App,
    store: Store,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    query: str = "",
    headers: dict[str, str] | None = None,
    caller: Caller = USER,
) -> Outcome:
    match = app.match(method, path)
    assert match is not None, f"no route for {method} {path}"
    tx = store.begin()
    outcome = app.invoke(match, tx=tx, caller=caller, body=body, query=query, headers=headers)
    if outcome.commit:
        store.commit(tx, store.version + 1)
    else:
        assert outcome.claims_digest is None
    return outcome


def error_of(outcome: Outcome) -> dict[str, str]:
    assert outcome.response.content_type == "application/json"
    body = json.loads(outcome.response.body)
    assert set(body) == {"error"}
    error: dict[str, str] = body["error"]
    return error


@pytest.fixture
def app() -> App:
    return build_app()


@pytest.fixture
def store() -> Store:
    return Store()


def test_routes_are_found_under_the_prefix_with_their_auth_policy(app: App) -> None:
    match = app.match("POST", "/app/items")
    assert match is not None
    assert match.endpoint.auth == ("user_cert",)
    assert match.endpoint.read_only is False
    read = app.match("get", "/app/items/7")
    assert read is not None
    assert read.endpoint.auth == ("user_cert", "member_cert")
    assert read.endpoint.read_only is True
    assert app.match("POST", "/items") is None


def test_path_parameters_are_percent_decoded(app: App) -> None:
    match = app.match("POST", "/app/proposals/a%20b%2Fc")
    assert isinstance(match, Match)
    assert match.path_params == {"proposal_id": "a b/c"}
    assert match.endpoint.path == "/app/proposals/{proposal_id}"


def test_methods_of_one_route_shape_keep_their_own_parameter_names(store: Store) -> None:
    app = App("shapes")

    @app.get("/things/{thing_id}", auth="none")
    def read(ctx: Context) -> Any:
        return ctx.path

    @app.delete("/things/{name}", auth="none")
    def forget(ctx: Context) -> Any:
        return ctx.path

    assert json.loads(call(app, store, "GET", "/app/things/a").response.body) == {"thing_id": "a"}
    assert json.loads(call(app, store, "DELETE", "/app/things/b").response.body) == {"name": "b"}
    with pytest.raises(ValueError):
        app.get("/things/{other}", auth="none")(read)


def test_the_more_literal_template_wins(app: App, store: Store) -> None:
    outcome = call(app, store, "POST", "/app/proposals/abc:withdraw")
    assert json.loads(outcome.response.body) == {"withdrawn": "abc"}
    outcome = call(app, store, "POST", "/app/proposals/abc")
    assert json.loads(outcome.response.body) == {"proposal": "abc"}


def test_typed_path_parameters_are_validated(app: App, store: Store) -> None:
    assert json.loads(call(app, store, "GET", "/app/items/12").response.body) == {"id": 12}
    outcome = call(app, store, "GET", "/app/items/-3")
    assert outcome.response.status == 422
    assert error_of(outcome)["message"].startswith("path.item_id:")


def test_unknown_path_is_404_and_known_path_with_other_method_is_405(app: App) -> None:
    assert app.match("GET", "/app/nowhere") is None
    missing = app.no_route_response("GET", "/app/nowhere")
    assert missing.status == 404
    assert json.loads(missing.body)["error"]["code"] == "ResourceNotFound"
    assert app.match("PATCH", "/app/items") is None
    wrong = app.no_route_response("PATCH", "/app/items")
    assert wrong.status == 405
    assert wrong.headers["Allow"] == "GET, POST"
    assert json.loads(wrong.body)["error"]["code"] == "MethodNotAllowed"


def test_overlong_path_is_refused(app: App) -> None:
    path = "/app/items/" + "1" * 5000
    assert app.match("GET", path) is None
    assert app.no_route_response("GET", path).status == 414


def test_valid_write_commits_and_is_visible(app: App, store: Store) -> None:
    outcome = call(app, store, "POST", "/app/items", body=b'{"name": "pen", "count": 2}')
    assert outcome.response.status == 200
    assert outcome.commit is True
    assert json.loads(outcome.response.body) == {"created": "pen"}
    assert store.begin().view("items", STR, JSON).get("pen") == {"name": "pen", "count": 2}


def test_body_that_is_not_json_is_400_and_the_handler_never_runs(app: App, store: Store) -> None:
    for body in (b'{"name": "pen", ', b"", b"\xff\xfe"):
        outcome = call(app, store, "POST", "/app/items", body=body)
        assert outcome.response.status == 400
        assert error_of(outcome)["code"] == "InvalidInput"
        assert outcome.commit is False
    assert app.calls == []  # type: ignore[attr-defined]
    assert store.version == 0


def test_invalid_fields_are_422_listing_the_fields_without_echoing_input(
    app: App, store: Store
) -> None:
    tx = store.begin()
    match = app.match("POST", "/app/items")
    assert match is not None
    outcome = app.invoke(
        match,
        tx=tx,
        caller=USER,
        body=b'{"name": "", "count": -1}',
        query="",
        headers={},
    )
    assert outcome.response.status == 422
    error = error_of(outcome)
    assert error["code"] == "ValidationError"
    assert "body.name" in error["message"] and "body.count" in error["message"]
    assert not tx.has_writes
    assert outcome.commit is False
    assert app.calls == []  # type: ignore[attr-defined]


def test_json_bodies_are_validated_strictly_booleans_and_strings_are_not_numbers(
    app: App, store: Store
) -> None:
    for body in (
        b'{"name": "pen", "count": true}',
        b'{"name": "pen", "count": "2"}',
        b'{"name": "pen", "count": 2.0}',
    ):
        outcome = call(app, store, "POST", "/app/items", body=body)
        assert outcome.response.status == 422, body
        assert "body.count" in error_of(outcome)["message"]
    assert call(app, store, "POST", "/app/list-body", body=b"[true]").response.status == 422
    assert app.calls == []  # type: ignore[attr-defined]
    assert store.version == 0


def test_json_endpoint_answers_415_for_a_body_declared_as_another_type(
    app: App, store: Store
) -> None:
    body = b'{"name": "pen", "count": 2}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/cose"):
        outcome = call(
            app, store, "POST", "/app/items", body=body, headers={"Content-Type": content_type}
        )
        assert outcome.response.status == 415, content_type
        assert error_of(outcome)["code"] == "UnsupportedContentType"
    assert app.calls == []  # type: ignore[attr-defined]
    # JSON (with parameters, any case) or no declared type is accepted, as CCF does.
    for headers in ({"content-type": "Application/JSON; charset=utf-8"}, {}):
        assert call(app, store, "POST", "/app/items", body=body, headers=headers).commit


def test_query_parameters_are_validated_by_their_model(app: App, store: Store) -> None:
    outcome = call(app, store, "GET", "/app/items", query="limit=5&tag=blue")
    assert json.loads(outcome.response.body) == {"limit": 5, "tag": "blue"}
    outcome = call(app, store, "GET", "/app/items", query="limit=500")
    assert outcome.response.status == 422
    assert "query.limit" in error_of(outcome)["message"]
    outcome = call(app, store, "GET", "/app/items")
    assert outcome.response.status == 422


def test_query_without_a_model_gives_strings_and_lists_for_repeats(app: App, store: Store) -> None:
    outcome = call(app, store, "GET", "/app/query-raw", query="a=1&b=x%20y&a=2&c=")
    assert json.loads(outcome.response.body) == {"a": ["1", "2"], "b": "x y", "c": ""}


def test_body_of_any_pydantic_type_is_validated(app: App, store: Store) -> None:
    assert call(app, store, "POST", "/app/list-body", body=b"[1, 2, 3]").response.body == b"6"
    assert call(app, store, "POST", "/app/list-body", body=b'["x"]').response.status == 422


def test_read_only_endpoint_never_commits_and_may_not_write(
    app: App, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="charter.enclave_app.app"):
        outcome = call(app, store, "GET", "/app/write-in-get")
    assert outcome.response.status == 500
    assert outcome.commit is False
    assert store.version == 0
    outcome = call(app, store, "GET", "/app/claims-read-only")
    assert outcome.response.status == 200
    assert outcome.commit is False
    assert outcome.claims_digest is None


def test_write_endpoint_without_writes_creates_no_transaction(app: App, store: Store) -> None:
    outcome = call(app, store, "POST", "/app/no-writes")
    assert outcome.response.status == 200
    assert outcome.response.body == b"nothing written"
    assert outcome.response.content_type == "text/plain; charset=utf-8"
    assert outcome.commit is False


def test_http_error_after_writes_answers_the_error_and_commits_nothing(
    app: App, store: Store
) -> None:
    outcome = call(app, store, "POST", "/app/fail-after-write")
    assert outcome.response.status == 409
    assert error_of(outcome) == {"code": "Conflict", "message": "already there"}
    assert outcome.commit is False


def test_handler_exception_is_a_generic_500_logged_without_private_values(
    app: App, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        outcome = call(app, store, "POST", "/app/crash", body=b"secret-body-bytes")
    assert outcome.response.status == 500
    assert error_of(outcome) == {"code": "InternalError", "message": "Internal error"}
    assert outcome.commit is False
    assert "KeyError" in caplog.text and "/app/crash" in caplog.text
    assert "secret-private-value" not in caplog.text
    assert "secret-body-bytes" not in caplog.text


def test_claims_digest_is_returned_with_a_committed_transaction(app: App, store: Store) -> None:
    outcome = call(app, store, "POST", "/app/claims")
    assert outcome.commit is True
    assert outcome.claims_digest == bytes(range(32))
    assert outcome.response.status == 204
    assert outcome.response.body == b""
    bad = call(app, store, "POST", "/app/bad-claims")
    assert bad.response.status == 500
    assert bad.commit is False


def test_body_over_the_endpoint_limit_is_413(app: App, store: Store) -> None:
    assert call(app, store, "POST", "/app/raw", body=b"0123456789abcdef").response.body == (
        b"fedcba9876543210"
    )
    outcome = call(app, store, "POST", "/app/raw", body=b"0123456789abcdefg")
    assert outcome.response.status == 413
    assert error_of(outcome)["code"] == "RequestTooLarge"
    big = call(app, store, "POST", "/app/items", body=b" " * ((1 << 20) + 1))
    assert big.response.status == 413


def test_query_over_the_limits_is_refused(app: App, store: Store) -> None:
    assert call(app, store, "GET", "/app/query-raw", query="a=" + "x" * 9000).response.status == (
        414
    )
    many = "&".join(f"k{i}=v" for i in range(100))
    outcome = call(app, store, "GET", "/app/query-raw", query=many)
    assert outcome.response.status == 400
    assert error_of(outcome)["code"] == "InvalidInput"


def test_response_object_sets_status_headers_and_commits_on_2xx(app: App, store: Store) -> None:
    outcome = call(app, store, "PUT", "/app/custom")
    assert outcome.response.status == 201
    assert outcome.response.headers == {"x-from-ctx": "1", "Location": "/app/custom"}
    assert json.loads(outcome.response.body) == {"ok": True}
    assert outcome.commit is True
    status = call(app, store, "DELETE", "/app/status")
    assert status.response.status == 202
    assert status.commit is True


def test_handler_sees_lowercased_headers_and_the_caller(app: App, store: Store) -> None:
    outcome = call(
        app,
        store,
        "GET",
        "/app/echo-headers",
        headers={"User-Agent": "probe/1"},
        caller=ANONYMOUS,
    )
    assert json.loads(outcome.response.body) == {"agent": "probe/1", "caller": "anonymous"}


def test_include_serves_another_apps_routes_and_refuses_clashes(store: Store) -> None:
    node = App("node", prefix="/node")

    @node.get("/state", auth="none")
    def state(ctx: Context) -> Any:
        return {"state": "PartOfNetwork"}

    combined = build_app()
    combined.include(node)
    outcome = call(combined, store, "GET", "/node/state")
    assert json.loads(outcome.response.body) == {"state": "PartOfNetwork"}
    assert combined.match("GET", "/node/api") is not None
    with pytest.raises(ValueError):
        combined.include(node)


def test_registration_refuses_unknown_auth_bad_templates_and_duplicates() -> None:
    app = App("bad")

    def handler(ctx: Context) -> None:
        return None

    with pytest.raises(ValueError):
        app.get("/x", auth="oauth")(handler)
    with pytest.raises(ValueError):
        app.get("/x/{a}/{a}")(handler)
    with pytest.raises(ValueError):
        app.get("no-slash")(handler)
    with pytest.raises(ValueError):
        app.endpoint("TRACE", "/x")(handler)
    with pytest.raises(ValueError):
        app.get("/y/{a}", path_params=ItemPath)(handler)
    app.get("/z")(handler)
    with pytest.raises(ValueError):
        app.get("/z")(handler)


def test_read_only_can_be_overridden(store: Store) -> None:
    app = App("override")

    @app.post("/query", read_only=True, auth="none")
    def query(ctx: Context) -> str:
        return "read"

    @app.get("/touch", read_only=False, auth="none")
    def touch(ctx: Context) -> None:
        ctx.tx.put("m", b"k", b"v")

    assert call(app, store, "POST", "/app/query").commit is False
    assert call(app, store, "GET", "/app/touch").commit is True


def test_handler_answers_of_true_false_and_numbers_are_their_json(store: Store) -> None:
    """A write's usual answer `true` (CCF's samples) is the JSON word with the JSON type,
    as every other JSON value a handler returns."""
    answers = App("answers")
    values: dict[str, Any] = {"yes": True, "no": False, "one": 1, "zero": 0, "half": 0.5}
    for name, value in values.items():
        answers.get(f"/{name}", auth="none")(lambda ctx, value=value: value)
    for name, value in values.items():
        outcome = call(answers, store, "GET", f"/app/{name}")
        assert outcome.response.status == 200
        assert outcome.response.content_type == "application/json"
        assert outcome.response.body == json.dumps(value).encode()
        assert type(json.loads(outcome.response.body)) is type(value)
