"""`/node/metrics` speaks Prometheus' text format to scrapers and JSON to everyone else.

Existing monitoring (a Prometheus server, or any agent that reads its exposition format)
must be able to scrape a node as it is; the browser console keeps reading the JSON.
"""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path

from test_node_inprocess import _drain, _start

from charter.enclave_app import gc_pauses
from charter.enclave_app.app import HttpResponse
from charter.enclave_app.metrics_format import (
    PROMETHEUS_CONTENT_TYPE,
    choose_format,
    render_prometheus,
)

# What Prometheus 2.x sends when it scrapes (scrape.acceptHeader).
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
SAMPLE_LINE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? -?[0-9]+$")


def _metrics(
    tmp_path: Path, query: str = "", headers: dict[str, str] | None = None
) -> HttpResponse:
    node, _ = _start(tmp_path)
    _drain(node)
    response = node.handle("GET", "/node/metrics", query, headers or {}, b"", None)
    assert isinstance(response, HttpResponse)
    assert response.status == 200, response.body
    return response


def test_a_prometheus_scrape_gets_the_text_exposition_format(tmp_path: Path) -> None:
    response = _metrics(tmp_path, headers={"accept": PROMETHEUS_ACCEPT})
    assert response.content_type == PROMETHEUS_CONTENT_TYPE
    text = response.body.decode()
    assert text.endswith("\n")
    families: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            families[name] = kind
        elif not line.startswith("# HELP "):
            assert SAMPLE_LINE.match(line), f"not a sample line: {line!r}"
    assert families["charter_requests_total"] == "counter"
    assert families["charter_light_load_signatures_total"] == "counter"
    assert families["charter_commit_seqno"] == "gauge"
    assert "charter_is_primary 1" in text.splitlines()
    assert 'state="PartOfNetwork"' in text


def test_format_prometheus_in_the_query_selects_the_text_format_without_headers(
    tmp_path: Path,
) -> None:
    response = _metrics(tmp_path, query="format=prometheus")
    assert response.content_type == PROMETHEUS_CONTENT_TYPE
    assert b"# TYPE charter_last_seqno gauge" in response.body


def test_the_console_and_curl_keep_getting_the_json_document(tmp_path: Path) -> None:
    for headers in ({}, {"accept": "*/*"}, {"accept": "application/json"}):
        response = _metrics(tmp_path / str(len(headers)), headers=headers)
        doc = json.loads(response.body)
        assert set(doc) >= {"requests", "writes", "commit_seqno", "last_seqno", "uncommitted"}


def test_a_format_the_endpoint_does_not_know_is_refused(tmp_path: Path) -> None:
    node, _ = _start(tmp_path)
    response = node.handle("GET", "/node/metrics", "format=xml", {}, b"", None)
    assert isinstance(response, HttpResponse)
    assert response.status == 422


def test_accept_preference_decides_between_text_and_json() -> None:
    assert choose_format(None, "text/plain") == "prometheus"
    assert choose_format(None, "application/json, text/plain;q=0.5") == "json"
    assert choose_format(None, "text/plain;q=0.9, application/json;q=0.1") == "prometheus"
    assert choose_format(None, "*/*") == "json"
    assert choose_format(None, "text/plain;q=oops") == "json"
    assert choose_format("json", "text/plain") == "json"
    assert choose_format("prometheus", None) == "prometheus"


def test_label_values_are_escaped() -> None:
    text = render_prometheus({"requests": 3}, node_id='a"b\\c', state="x\ny")
    assert 'node_id="a\\"b\\\\c",state="x\\ny"' in text
    assert "charter_requests_total 3" in text


def test_the_enclave_garbage_collector_pauses_are_counted_and_exported(tmp_path: Path) -> None:
    pauses = gc_pauses.install()
    before = pauses.collections
    gc.collect()
    assert pauses.collections > before
    assert pauses.pause_us_max >= 0 and pauses.pause_us_total >= pauses.pause_us_max
    text = _metrics(tmp_path, query="format=prometheus").body.decode()
    lines = text.splitlines()
    assert "# TYPE charter_gc_collections_total counter" in lines
    assert "# TYPE charter_gc_pause_max_microseconds gauge" in lines
    counted = next(line for line in lines if line.startswith("charter_gc_collections_total "))
    assert int(counted.split()[1]) >= before + 1  # the collect above, at least


def test_start_up_objects_frozen_out_of_the_collector_are_never_walked_again() -> None:
    pauses = gc_pauses.install()
    was_enabled = gc.isenabled()
    gc.disable()  # no automatic collection may be counted meanwhile: only the start-up one runs
    counted_before = pauses.metrics()
    try:
        frozen = gc_pauses.freeze_startup()
        # The start-up collection is not a pause of a serving node: not counted.
        assert {k: v for k, v in pauses.metrics().items() if k != "gc_frozen_objects"} == {
            k: v for k, v in counted_before.items() if k != "gc_frozen_objects"
        }
        assert pauses.on_gc in gc.callbacks  # counting goes on afterwards
        assert frozen > 0 and gc.get_freeze_count() == frozen
        assert gc_pauses.PAUSES.metrics()["gc_frozen_objects"] == frozen
        # A full collection now walks only what was made after the freeze.
        assert sum(len(gc.get_objects(generation)) for generation in range(3)) < frozen
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()
