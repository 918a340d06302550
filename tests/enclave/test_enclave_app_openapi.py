"""The generated OpenAPI document: paths, parameters, bodies, security, served at /app/api."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from charter.enclave_app.app import ANONYMOUS, App, Context
from charter.enclave_app.kv import Store


class Address(BaseModel):
    city: str


class Person(BaseModel):
    name: str = Field(max_length=10)
    address: Address


class Filter(BaseModel):
    limit: int = 10
    name: str


class PersonPath(BaseModel):
    person_id: int


def build() -> App:
    app = App("people", version="2.1.0")

    @app.post("/people", body=Person, response=Person)
    def create(ctx: Context) -> Person:
        """Create a person.

        Stores the person in the private map `people`.
        """
        person: Person = ctx.body
        return person

    @app.get("/people", query=Filter, auth=["user_cert", "none"])
    def search(ctx: Context) -> list[str]:
        return []

    @app.get("/people/{person_id}", path_params=PersonPath, auth="member_cert")
    def read(ctx: Context) -> None:
        return None

    @app.delete("/people/{name}", auth="none")
    def forget(ctx: Context) -> None:
        return None

    @app.post("/ballots/{ballot_id}:submit", auth="member_cose")
    def ballot(ctx: Context) -> None:
        return None

    @app.get("/hidden", include_in_api=False)
    def hidden(ctx: Context) -> None:
        return None

    return app


def resolve_all_refs(node: Any, document: dict[str, Any]) -> int:
    """Check every $ref points into components/schemas; return how many were seen."""
    seen = 0
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None:
            prefix = "#/components/schemas/"
            assert ref.startswith(prefix), ref
            assert ref[len(prefix) :] in document["components"]["schemas"], ref
            seen += 1
        for value in node.values():
            seen += resolve_all_refs(value, document)
    elif isinstance(node, list):
        for value in node:
            seen += resolve_all_refs(value, document)
    return seen


def test_document_is_openapi_3_1_with_every_route_and_method() -> None:
    document = build().openapi()
    assert document["openapi"] == "3.1.0"
    assert document["info"] == {"title": "people", "version": "2.1.0"}
    assert {path: sorted(ops) for path, ops in document["paths"].items()} == {
        "/app/people": ["get", "post"],
        "/app/people/{person_id}": ["get"],
        "/app/people/{name}": ["delete"],
        "/app/ballots/{ballot_id}:submit": ["post"],
    }
    json.dumps(document)  # serialisable as is


def test_models_become_component_schemas_and_every_ref_resolves() -> None:
    document = build().openapi()
    schemas = document["components"]["schemas"]
    assert {"Person", "Address", "Filter", "PersonPath", "CharterError"} <= set(schemas)
    assert schemas["Person"]["properties"]["name"]["maxLength"] == 10
    create = document["paths"]["/app/people"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Person"
    }
    assert create["summary"] == "Create a person."
    assert "private map `people`" in create["description"]
    assert set(create["responses"]) == {"200", "400", "422", "default"}
    assert resolve_all_refs(document, document) > 5


def test_path_and_query_parameters_are_listed_with_types() -> None:
    paths = build().openapi()["paths"]
    search = paths["/app/people"]["get"]["parameters"]
    assert {(p["name"], p["in"], p["required"]) for p in search} == {
        ("limit", "query", False),
        ("name", "query", True),
    }
    read = paths["/app/people/{person_id}"]["get"]["parameters"]
    assert read == [
        {
            "name": "person_id",
            "in": "path",
            "required": True,
            "schema": {"title": "Person Id", "type": "integer"},
        }
    ]
    forget = paths["/app/people/{name}"]["delete"]["parameters"]
    assert forget == [
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    ]


def test_security_follows_each_endpoints_auth_policy() -> None:
    document = build().openapi()
    paths = document["paths"]
    assert paths["/app/people"]["post"]["security"] == [{"user_cert": []}]
    assert paths["/app/people"]["get"]["security"] == [{"user_cert": []}, {}]
    assert paths["/app/people/{person_id}"]["get"]["security"] == [{"member_cert": []}]
    assert paths["/app/people/{name}"]["delete"]["security"] == []
    ballot = paths["/app/ballots/{ballot_id}:submit"]["post"]
    assert ballot["security"] == [{"member_cose": []}]
    assert "application/cose" in ballot["requestBody"]["content"]
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == {"user_cert", "member_cert", "member_cose"}
    assert schemes["user_cert"]["type"] == "mutualTLS"


def test_read_only_flag_is_documented() -> None:
    paths = build().openapi()["paths"]
    assert paths["/app/people"]["get"]["x-charter-read-only"] is True
    assert paths["/app/people"]["post"]["x-charter-read-only"] is False


def test_api_document_is_served_at_app_api_without_authentication() -> None:
    app = build()
    match = app.match("GET", "/app/api")
    assert match is not None
    assert match.endpoint.auth == ("none",)
    store = Store()
    outcome = app.invoke(match, tx=store.begin(), caller=ANONYMOUS, body=b"", query="", headers={})
    assert outcome.response.status == 200
    assert outcome.commit is False
    assert json.loads(outcome.response.body) == json.loads(json.dumps(app.openapi()))
    assert "/app/api" not in app.openapi()["paths"]
    assert "/app/hidden" not in app.openapi()["paths"]


def test_document_of_a_combined_app_keeps_to_its_prefix() -> None:
    app = build()
    node = App("node", prefix="/node")

    @node.get("/state", auth="none")
    def state(ctx: Context) -> dict[str, str]:
        return {}

    app.include(node)
    assert all(path.startswith("/app/") for path in app.openapi()["paths"])
    assert list(app.openapi("/node")["paths"]) == ["/node/state"]
    assert list(node.openapi()["paths"]) == ["/node/state"]
