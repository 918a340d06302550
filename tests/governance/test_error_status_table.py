"""One error shape, one status table: every error code the service can send over HTTP has
exactly one status, in `charter.governance.errors.STATUS_BY_CODE`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from charter.governance.errors import STATUS_BY_CODE, GovernanceError, http_status

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ledger", "consensus", "governance", "enclave_app", "host", "client")
# Every constructor or helper whose `code` ends up in an HTTP answer's error body.
HTTP_ERROR_MAKERS = frozenset(
    {
        "GovernanceError",
        "_auth_error",
        "HttpError",
        "error_response",
        "AuthFailure",
        "unavailable",
        "_json_error",
    }
)


def _calls() -> list[tuple[str, int, str, ast.Call]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name in HTTP_ERROR_MAKERS:
                    found.append(
                        (f"{path.relative_to(ROOT)}:{node.lineno}", node.lineno, name, node)
                    )
    return found


def _literal_code(call: ast.Call) -> str | None:
    for keyword in call.keywords:
        if keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
            assert isinstance(keyword.value.value, str)
            return keyword.value.value
    return None


def test_every_error_maker_is_called_as_message_then_keyword_code() -> None:
    wrong = [
        where
        for where, _, _, call in _calls()
        if len(call.args) != 1 or not any(k.arg == "code" for k in call.keywords)
    ]
    assert not wrong, f"not in the shape XError(message, *, code): {wrong}"


def test_every_error_code_raised_anywhere_has_a_row_in_the_status_table() -> None:
    codes = {where: _literal_code(call) for where, _, _, call in _calls()}
    literal = {where: code for where, code in codes.items() if code is not None}
    assert len(literal) > 60, "the scan no longer finds the error call sites"
    missing = {where: code for where, code in literal.items() if code not in STATUS_BY_CODE}
    assert not missing, f"codes sent without a status row: {missing}"


def test_no_error_maker_gives_a_status_of_its_own_to_a_code_in_the_table() -> None:
    overridden = [
        where
        for where, _, _, call in _calls()
        if _literal_code(call) in STATUS_BY_CODE and any(k.arg == "status" for k in call.keywords)
    ]
    assert not overridden, f"a second status for a code with a row: {overridden}"


def test_a_governance_error_answers_with_the_status_of_its_code() -> None:
    assert GovernanceError("no such proposal", code="ProposalNotFound").status == 404
    assert GovernanceError("stale", code="RequestExpired").status == 400
    assert GovernanceError("not yours", code="ProposerNotAllowed").status == 403
    assert GovernanceError("x", code="InvalidSignature").to_json() == {
        "error": {"code": "InvalidSignature", "message": "x"}
    }


def test_a_code_without_a_row_is_refused_when_raised() -> None:
    with pytest.raises(AssertionError, match="no row in STATUS_BY_CODE"):
        GovernanceError("anything", code="NoSuchCode")
    with pytest.raises(AssertionError, match="no row in STATUS_BY_CODE"):
        http_status("NoSuchCode")


def test_every_status_in_the_table_is_an_error_status() -> None:
    assert all(400 <= status <= 599 for status in STATUS_BY_CODE.values())


def test_the_http_session_layer_sends_each_code_with_its_row_status() -> None:
    import json

    from charter.enclave_app import http_server

    for status in (400, 408, 413, 431, 500, 503, 504, 505):
        code = json.loads(http_server.error_body(status))["error"]["code"]
        assert http_status(code) == status, (status, code)
    # A status the layer has no code for is sent as its class's generic one, never mislabelled.
    assert http_server.json_error(418).status == 400
    assert json.loads(http_server.error_body(http_server.error_status(599)))["error"] == {
        "code": "InternalError",
        "message": "Internal error",
    }
