"""OpenAPI 3.1 documents generated from an App's routes and their pydantic models.

Served at ``/app/api`` (and ``/node/api``, ``/gov/api`` by the runtime's apps), so that
clients and tools see every path, parameter, body schema and auth policy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

import pydantic
from pydantic.json_schema import JsonSchemaMode, models_json_schema


class PolicyGroup(Protocol):
    """`all_of`: every named policy must pass (`app.AllOf` is one)."""

    @property
    def policies(self) -> tuple[str, ...]: ...


class Endpoint(Protocol):
    """What a document is built from (`app.Endpoint` is one; this module imports no app)."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def auth(self) -> tuple[str | PolicyGroup, ...]: ...
    @property
    def read_only(self) -> bool: ...
    @property
    def mode(self) -> str: ...
    @property
    def body_model(self) -> Any: ...
    @property
    def query_model(self) -> type[pydantic.BaseModel] | None: ...
    @property
    def path_model(self) -> type[pydantic.BaseModel] | None: ...
    @property
    def response_model(self) -> Any: ...
    @property
    def summary(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def params(self) -> tuple[str, ...]: ...


OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
ERROR_SCHEMA_NAME = "CharterError"

# One security scheme per auth policy name; "none" has no scheme (an empty requirement).
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "user_cert": {
        "type": "mutualTLS",
        "description": "TLS client certificate of a user registered by governance",
    },
    "member_cert": {
        "type": "mutualTLS",
        "description": "TLS client certificate of a consortium member",
    },
    "member_cose": {
        "type": "http",
        "scheme": "cose-sign1",
        "description": "Body is a COSE_Sign1 envelope signed by a member key, with CCF's "
        "ccf.gov.msg.* protected headers",
    },
    "any_cert": {"type": "mutualTLS", "description": "Any TLS client certificate"},
    "jwt": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT of an issuer registered by governance (set_jwt_issuer)",
    },
    "user_cose_sign1": {
        "type": "http",
        "scheme": "cose-sign1",
        "description": "Body is a COSE_Sign1 envelope signed by a user key (kid = user id), "
        "with the ccf.msg.created_at protected header",
    },
}


def _policy_names(endpoint: Endpoint) -> set[str]:
    """Every policy an endpoint names, those inside all_of included."""
    names: set[str] = set()
    for policy in endpoint.auth:
        names.update((policy,) if isinstance(policy, str) else policy.policies)
    return names


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def _is_model(candidate: Any) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel)


def _operation_id(method: str, path: str) -> str:
    return method.lower() + "_" + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")


def build_openapi(title: str, version: str, endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """Build the document; model schemas go to ``components/schemas`` and are referenced."""
    wanted: list[tuple[type[pydantic.BaseModel], JsonSchemaMode]] = []

    def want(model: Any, mode: JsonSchemaMode) -> None:
        if _is_model(model) and (model, mode) not in wanted:
            wanted.append((model, mode))

    for endpoint in endpoints:
        for model in (endpoint.body_model, endpoint.query_model, endpoint.path_model):
            want(model, "validation")
        want(endpoint.response_model, "serialization")
    refs: dict[Any, Any] = {}
    schemas: dict[str, Any] = {}
    if wanted:
        refs, top = models_json_schema(wanted, ref_template=REF_TEMPLATE)
        schemas.update(top.get("$defs", {}))

    def schema_of(kind: Any, mode: JsonSchemaMode) -> dict[str, Any]:
        if _is_model(kind):
            ref: dict[str, Any] = refs[(kind, mode)]
            return ref
        inline = pydantic.TypeAdapter(kind).json_schema(mode=mode, ref_template=REF_TEMPLATE)
        schemas.update(inline.pop("$defs", {}))
        return inline

    def fields_of(model: type[pydantic.BaseModel]) -> tuple[dict[str, Any], list[str]]:
        name = refs[(model, "validation")]["$ref"].rsplit("/", 1)[1]
        schema = schemas[name]
        return schema.get("properties", {}), schema.get("required", [])

    error_ref = {"$ref": REF_TEMPLATE.format(model=ERROR_SCHEMA_NAME)}
    error_content = {"application/json": {"schema": error_ref}}
    paths: dict[str, dict[str, Any]] = {}
    used_schemes: set[str] = set()
    for endpoint in endpoints:
        operation: dict[str, Any] = {
            "operationId": _operation_id(endpoint.method, endpoint.path),
            "summary": endpoint.summary,
        }
        if endpoint.description and endpoint.description != endpoint.summary:
            operation["description"] = endpoint.description
        parameters: list[dict[str, Any]] = []
        path_fields = fields_of(endpoint.path_model)[0] if endpoint.path_model else {}
        for name in endpoint.params:
            parameters.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": path_fields.get(name, {"type": "string"}),
                }
            )
        if endpoint.query_model is not None:
            properties, required = fields_of(endpoint.query_model)
            for name, schema in properties.items():
                parameters.append(
                    {"name": name, "in": "query", "required": name in required, "schema": schema}
                )
        if endpoint.mode == "historical":
            # CCF's historical endpoints name their transaction in this header.
            parameters.append(
                {
                    "name": "x-ms-ccf-transaction-id",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+$"},
                }
            )
        if parameters:
            operation["parameters"] = parameters
        if endpoint.body_model is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": schema_of(endpoint.body_model, "validation")}
                },
            }
        elif _policy_names(endpoint) & {"member_cose", "user_cose_sign1"} and (
            endpoint.method != "GET"
        ):
            operation["requestBody"] = {
                "required": True,
                "content": {"application/cose": {"schema": {"type": "string"}}},
            }
        success: dict[str, Any] = {"description": "Success"}
        if endpoint.response_model is not None:
            success["content"] = {
                "application/json": {"schema": schema_of(endpoint.response_model, "serialization")}
            }
        responses: dict[str, Any] = {"200": success}
        if endpoint.mode == "historical":
            responses["202"] = {
                "description": "Being read back from the ledger: ask again after Retry-After"
            }
        if endpoint.body_model is not None:
            responses["400"] = {"description": "Body is not JSON", "content": error_content}
        if endpoint.body_model or endpoint.query_model or endpoint.path_model:
            responses["422"] = {"description": "Invalid input", "content": error_content}
        responses["default"] = {"description": "Error", "content": error_content}
        operation["responses"] = responses
        security: list[dict[str, list[str]]] = []
        for policy in endpoint.auth:
            if policy == "none":
                security.append({})
            elif isinstance(policy, str):
                security.append({policy: []})
                used_schemes.add(policy)
            else:  # all_of: one requirement naming every scheme (OpenAPI's AND)
                security.append({name: [] for name in policy.policies})
                used_schemes.update(policy.policies)
        # An operation admitting anonymous callers only says so with an empty list.
        operation["security"] = [] if security == [{}] else security
        operation["x-charter-read-only"] = endpoint.read_only
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    schemas[ERROR_SCHEMA_NAME] = ERROR_SCHEMA
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {name: SECURITY_SCHEMES[name] for name in sorted(used_schemes)},
        },
    }
