"""What `charter sandbox` prints once the network is open: where things are, and a first call.

The example call comes from the app actually served: its OpenAPI document (`GET /app/api`)
names its routes, and the first route that writes (so that a receipt follows) becomes a
`curl` line with example values for its required parameters and body fields. An app whose
first route needs input the example cannot make up (nested objects, lists) gets no `curl`
line, only a pointer to its OpenAPI document; an app may also serve no document at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HTTP_METHODS = ("post", "put", "patch", "delete", "get")
# Example values by JSON schema type; anything else makes no example.
_EXAMPLE_BY_TYPE: dict[str, Any] = {"string": "hello", "integer": 1, "number": 1, "boolean": True}
# Azure Confidential Ledger's API needs its version on every call; its schema gives no example.
ACL_MODULE = "charter.enclave_app.samples.acl"


class NoExample(Exception):
    """The route needs input this module cannot make up."""


def _resolve(schema: Any, doc: Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str):
        name = schema["$ref"].rpartition("/")[2]
        found = doc.get("components", {}).get("schemas", {}).get(name)
        if not isinstance(found, Mapping):
            raise NoExample(f"unresolved {schema['$ref']}")
        return found
    if not isinstance(schema, Mapping):
        raise NoExample("no schema")
    return schema


def _example_value(schema: Any, doc: Mapping[str, Any]) -> Any:
    schema = _resolve(schema, doc)
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if kind in ("integer", "number") and isinstance(schema.get("minimum"), int | float):
        return max(schema["minimum"], 1)
    if isinstance(kind, str) and kind in _EXAMPLE_BY_TYPE:
        return _EXAMPLE_BY_TYPE[kind]
    raise NoExample(f"no example for a {kind or 'composite'} value")


def _example_body(schema: Any, doc: Mapping[str, Any]) -> dict[str, Any]:
    schema = _resolve(schema, doc)
    if schema.get("type") != "object":
        raise NoExample("the body is not a JSON object")
    properties = schema.get("properties", {})
    return {name: _example_value(properties.get(name), doc) for name in schema.get("required", [])}


def first_route(doc: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any]] | None:
    """(METHOD, path, operation) of the first writing route, else the first route at all."""
    operations = [
        (method, path, op)
        for path, item in (doc.get("paths") or {}).items()
        if isinstance(item, Mapping) and not path.endswith("/api")
        for method, op in item.items()
        if method in HTTP_METHODS and isinstance(op, Mapping)
    ]
    writes = [o for o in operations if o[2].get("x-charter-read-only") is False]
    candidates = writes or operations
    if not candidates:
        return None
    method, path, op = candidates[0]
    return method.upper(), path, op


def curl_lines(
    doc: Mapping[str, Any], url: str, cert: Path, user_cert: Path, user_key: Path
) -> list[str]:
    """A ready `curl` command for the app's first route, or an explanation of why there is none."""
    route = first_route(doc)
    if route is None:
        return ["The app serves no documented route (GET /app/api lists none)."]
    method, route_path, op = route
    path = route_path
    try:
        query: list[str] = []
        for param in op.get("parameters", []):
            if not isinstance(param, Mapping) or not param.get("required"):
                continue
            value = _example_value(param.get("schema"), doc)
            if param.get("in") == "path":
                path = path.replace("{" + str(param["name"]) + "}", str(value))
            elif param.get("in") == "query":
                query.append(f"{param['name']}={value}")
            else:
                raise NoExample(f"a required {param.get('in')} parameter")
        body = None
        content = (op.get("requestBody") or {}).get("content", {})
        if "application/json" in content:
            body = _example_body(content["application/json"].get("schema"), doc)
        elif content:
            raise NoExample("the body is not JSON")
    except NoExample:
        return [
            f"The app's first route is {method} {route_path}; its inputs are described by",
            f"  curl {url}/app/api --cacert {cert}",
        ]
    target = f"{url}{path}" + ("?" + "&".join(query) if query else "")
    verb = "Call" if op.get("x-charter-read-only") else "Write with"
    lines = [
        f"{verb} the app's first route as user0 ({method} {route_path}):",
        f"  curl '{target}'"
        + ("" if method in ("GET", "POST") else f" -X {method}")
        + f" --cacert {cert} \\",
        f"    --cert {user_cert} --key {user_key} \\",
    ]
    if body is not None:
        lines.append(f"    -H 'Content-Type: application/json' -d '{json.dumps(body)}' \\")
    # -w: answers such as `true` carry no newline (as CCF's); keep the prompt on its own line.
    lines.append("    -i -w '\\n'")
    return lines


def acl_lines(url: str, cert: Path, user_cert: Path, user_key: Path) -> list[str]:
    return [
        "Write a ledger entry as user0 (Azure Confidential Ledger API; see docs/acl.md):",
        f"  curl '{url}/app/transactions?api-version=2022-05-13' --cacert {cert} \\",
        f"    --cert {user_cert} --key {user_key} \\",
        """    -H 'Content-Type: application/json' -d '{"contents": "hello"}' -i -w '\\n'""",
    ]
