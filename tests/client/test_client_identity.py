"""Transaction ids, network files, error mapping: the small contracts the CLI relies on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.errors import (
    CharterError,
    InternalError,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    error_from_response,
)
from charter.errors import IdentityError as IdErr
from charter.identity import Network, TxId, load_json_file


@settings(max_examples=200, derandomize=True)
@given(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1))
def test_txid_round_trips_through_its_text_form(view: int, seqno: int) -> None:
    assert TxId.parse(str(TxId(view, seqno))) == TxId(view, seqno)


@settings(max_examples=300, derandomize=True)
@given(st.text(max_size=30))
def test_txid_parser_accepts_exactly_ascii_view_dot_seqno(text: str) -> None:
    well_formed = re.fullmatch(r"[0-9]{1,19}\.[0-9]{1,19}", text.strip()) is not None
    try:
        tx = TxId.parse(text)
    except ValueError:
        assert not well_formed
        return
    assert well_formed
    view, seqno = text.strip().split(".")
    assert (tx.view, tx.seqno) == (int(view), int(seqno))


def test_malformed_txids_are_rejected() -> None:
    for bad in ("2", "2.", ".5", "2.5.1", "a.b", "-1.4", "2 .5", "1e3.4", "\u0661.\u0662"):
        with pytest.raises(ValueError, match="transaction id"):
            TxId.parse(bad)


def test_service_errors_map_to_families_with_the_service_code() -> None:
    body = {"error": {"code": "ProposalNotOpen", "message": "proposal is Accepted"}}
    err = error_from_response(400, body)
    assert isinstance(err, InvalidInput)
    assert (err.status, err.code, err.message) == (400, "ProposalNotOpen", "proposal is Accepted")
    assert str(err) == "HTTP 400 ProposalNotOpen: proposal is Accepted"
    assert isinstance(error_from_response(401, body), Unauthorized)
    assert isinstance(error_from_response(404, b"not here"), NotFound)
    assert isinstance(error_from_response(503, None), ServiceUnavailable)
    assert isinstance(error_from_response(599, None), InternalError)
    assert type(error_from_response(418, "teapot")) is CharterError


def test_huge_error_bodies_are_clipped_to_one_short_line() -> None:
    err = error_from_response(500, "x\n" * 100_000)
    assert len(err.message) < 600 and "\n" not in err.message


def test_network_file_paths_resolve_relative_to_the_file(tmp_path: Path) -> None:
    doc = {
        "service_cert": "service_cert.pem",
        "nodes": [{"rpc_address": "127.0.0.1:8000"}, {"rpc_address": "https://127.0.0.1:8001"}],
        "members": [{"id": "m0", "cert": "member0_cert.pem", "key": "/abs/member0_privk.pem"}],
        "users": [],
    }
    (tmp_path / "network.json").write_text(json.dumps(doc))
    net = Network.load(tmp_path / "network.json")
    assert net.service_cert == tmp_path / "service_cert.pem"
    assert net.urls == ("https://127.0.0.1:8000", "https://127.0.0.1:8001")
    assert net.member(0) == (tmp_path / "member0_cert.pem", Path("/abs/member0_privk.pem"))
    with pytest.raises(IdErr, match="no member 1"):
        net.member(1)
    with pytest.raises(IdErr, match="no user 0"):
        net.user(0)


def test_bad_network_files_give_one_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "network.json"
    p.write_text("{not json")
    with pytest.raises(IdErr, match="not valid JSON"):
        Network.load(p)
    p.write_text(json.dumps({"nodes": []}))
    with pytest.raises(IdErr, match="service_cert"):
        Network.load(p)
    with pytest.raises(IdErr, match="not found"):
        Network.load(tmp_path / "missing.json")


def test_oversized_json_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    p = tmp_path / "big.json"
    p.write_bytes(b"[" + b"0," * (3 * 1024 * 1024) + b"0]")
    with pytest.raises(IdErr, match="larger than"):
        load_json_file(p)
