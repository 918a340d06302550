"""The `historical` endpoint mode, through App.invoke over a real Store.

The node's runtime is `OneState`: it answers the state of the one committed transaction the
test recorded, after one "not yet" (the node's cache is fetching), as the node does. The
node's own fetching and checking is tested in tests/node and tests/e2e.
"""

from __future__ import annotations

import json

import pytest

from charter.enclave_app.app import App, Caller, Context, Outcome
from charter.enclave_app.errors import HttpError
from charter.enclave_app.kv import STR, Store
from charter.enclave_app.node.historical import HistoricalState

USER = Caller("user", "ab" * 32, None, {})


class OneState:
    def __init__(self, state: HistoricalState) -> None:
        self.state = state
        self.asked = 0

    def historical_state(self, view: int, seqno: int) -> HistoricalState | None:
        if (view, seqno) != (self.state.tx_view, self.state.seqno):
            raise HttpError("not committed", code="TransactionPendingOrUnknown")
        self.asked += 1
        return None if self.asked == 1 else self.state


def make_app() -> App:
    app = App("hist")

    @app.get("/at", auth="none", mode="historical")
    def at(ctx: Context) -> dict[str, str | None]:
        return {"value": ctx.historical.view("notes", STR, STR).get("k")}

    return app


def state(seqno: int, value: str) -> HistoricalState:
    zero = bytes(32)
    private = {"notes": {b"k": value.encode()}}
    return HistoricalState(seqno, 3, {}, private, zero, "", zero, None, 0, None, None)


def invoke(app: App, runtime: object, headers: dict[str, str]) -> Outcome:
    match = app.match("GET", "/app/at")
    assert match is not None
    store = Store()
    return app.invoke(match, tx=store.begin(), caller=USER, headers=headers, runtime=runtime)


def test_historical_handler_runs_once_the_state_is_held_and_202_before() -> None:
    runtime = OneState(state(17, "then"))
    app = make_app()
    first = invoke(app, runtime, {"x-ms-ccf-transaction-id": "3.17"})
    assert first.response.status == 202 and first.response.headers["Retry-After"] == "1"
    assert first.commit is False
    second = invoke(app, runtime, {"x-ms-ccf-transaction-id": "3.17"})
    assert second.response.status == 200
    assert json.loads(second.response.body) == {"value": "then"}


@pytest.mark.parametrize("header", [None, "", "3", "3.x", "-1.2", "3.17.1"])
def test_historical_endpoint_needs_a_transaction_id_header(header: str | None) -> None:
    headers = {} if header is None else {"x-ms-ccf-transaction-id": header}
    outcome = invoke(make_app(), OneState(state(17, "then")), headers)
    assert outcome.response.status == 400
    assert json.loads(outcome.response.body)["error"]["code"] == "InvalidHeaderValue"


def test_uncommitted_transaction_is_refused_before_the_handler_runs() -> None:
    outcome = invoke(make_app(), OneState(state(17, "then")), {"x-ms-ccf-transaction-id": "3.18"})
    assert outcome.response.status == 400
    assert json.loads(outcome.response.body)["error"]["code"] == "TransactionPendingOrUnknown"


def test_historical_endpoints_are_read_only_and_modes_are_checked() -> None:
    app = make_app()
    endpoint = app.match("GET", "/app/at")
    assert endpoint is not None and endpoint.endpoint.read_only
    assert endpoint.endpoint.mode == "historical"
    with pytest.raises(ValueError):
        app.endpoint("POST", "/w", mode="historical", read_only=False)
    with pytest.raises(ValueError):
        app.endpoint("GET", "/x", mode="sometimes")
    with pytest.raises(ValueError):
        app.endpoint("GET", "/y", mode="readonly", read_only=False)
    document = app.openapi()
    operation = document["paths"]["/app/at"]["get"]
    assert {"name": "x-ms-ccf-transaction-id", "in": "header"}.items() <= (
        operation["parameters"][0].items()
    )
    assert "202" in operation["responses"]
