"""The node config's certificate settings: the SANs an operator lists per RPC interface
(CCF's notation, nothing else lands in the certificate), a bind to every address needs a
published one, and the genesis validity stays within the service's maximum."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from charter.enclave_app import interface as itf

# Mode 'recover' needs no members (its config names the previous service certificate).
RECOVER: dict[str, Any] = {"mode": "recover", "previous_service_identity": "previous.pem"}
BASE: dict[str, Any] = {"workspace": "w", "start": RECOVER}


def load(tmp_path: Path, **fields: Any) -> itf.NodeConfig:
    path = tmp_path / "node.json"
    path.write_text(json.dumps({**BASE, **fields}))
    return itf.load_config(path)


def test_the_published_rpc_host_is_the_only_default_name(tmp_path: Path) -> None:
    assert load(tmp_path, rpc_address="10.1.0.2:8443").rpc_subject_alt_names() == [
        "iPAddress:10.1.0.2"
    ]
    config = load(
        tmp_path, rpc_address="0.0.0.0:8443", published_rpc_address="node-b.example.net:8443"
    )
    assert config.rpc_subject_alt_names() == ["dNSName:node-b.example.net"]
    assert load(tmp_path, rpc_address="[::1]:8443").rpc_subject_alt_names() == ["iPAddress:::1"]


def test_configured_names_replace_the_default_and_are_normalised(tmp_path: Path) -> None:
    sans = ["dNSName:node-b.example.net", "iPAddress:10.1.0.2", "iPAddress:FD00:0::1"]
    config = load(tmp_path, rpc_interface={"subject_alt_names": sans})
    assert config.rpc_subject_alt_names() == [
        "dNSName:node-b.example.net",
        "iPAddress:10.1.0.2",
        "iPAddress:fd00::1",
    ]


@pytest.mark.parametrize("address", ["0.0.0.0:8443", "[::]:8443"])
def test_binding_every_address_without_a_published_one_is_a_config_error(
    tmp_path: Path, address: str
) -> None:
    with pytest.raises(itf.InterfaceError, match="published_rpc_address"):
        load(tmp_path, rpc_address=address)
    with pytest.raises(itf.InterfaceError, match="published_rpc_address"):
        load(tmp_path, rpc_address="10.0.0.1:1", published_rpc_address=address)


@pytest.mark.parametrize(
    "san",
    [
        "iPAddress:0.0.0.0",
        "iPAddress:::",
        "iPAddress:node-b",
        "dNSName:a b",
        "dNSName:",
        "URI:https://x",
        "node-b.example.net",
        "dNSName:" + "a" * 300,
    ],
)
def test_a_malformed_or_unspecified_name_is_a_config_error(tmp_path: Path, san: str) -> None:
    with pytest.raises(itf.InterfaceError, match="subject_alt_names"):
        load(tmp_path, rpc_interface={"subject_alt_names": [san]})


def test_more_names_than_the_limit_is_a_config_error(tmp_path: Path) -> None:
    sans = [f"dNSName:n{i}.example.net" for i in range(65)]
    with pytest.raises(itf.InterfaceError, match="subject_alt_names"):
        load(tmp_path, rpc_interface={"subject_alt_names": sans})


def test_genesis_validity_beyond_the_service_maximum_is_a_config_error(tmp_path: Path) -> None:
    start: dict[str, Any] = {**RECOVER, "service_certificate_initial_validity_days": 400}
    with pytest.raises(itf.InterfaceError, match="maximum_service_certificate_validity_days"):
        load(tmp_path, start=start)
    start["service_config"] = {"maximum_service_certificate_validity_days": 400}
    assert load(tmp_path, start=start).start.service_certificate_initial_validity_days == 400
    start = {**RECOVER, "node_certificate_initial_validity_days": 30}
    start["service_config"] = {"maximum_node_certificate_validity_days": 10}
    with pytest.raises(itf.InterfaceError, match="maximum_node_certificate_validity_days"):
        load(tmp_path, start=start)
