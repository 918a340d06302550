"""`charter quote verify` (issue 16): a node's evidence checked offline, with the installed
command, against a real sandbox node, files saved from it, and the real Milan SEV-SNP report.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shared_data import SHARED

from charter.sandbox import Sandbox

pytestmark = pytest.mark.e2e

CHARTER = Path(sys.executable).parent / "charter"
SNP = SHARED / "snp-attestation" / "milan"
MILAN_REPORT = bytes.fromhex((SNP / "report.hex").read_text().strip())
MILAN_MEASUREMENT = MILAN_REPORT[0x90:0xC0].hex()
MILAN_REPORT_DATA = MILAN_REPORT[0x50:0x90].hex()


def charter(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHARTER), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def verdict(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("quote") / "sandbox", nodes=1)
    try:
        asyncio.run(sb.start())
        yield sb
    finally:
        sb.stop()


@pytest.fixture(scope="module")
def saved_quote(sandbox: Sandbox) -> dict[str, Any]:
    async def fetch() -> dict[str, Any]:
        async with sandbox.client() as client:
            doc: dict[str, Any] = await client.get_json("/node/quotes/self")
            return doc

    return asyncio.run(fetch())


def _url(sandbox: Sandbox) -> str:
    network = json.loads(sandbox.network_path.read_text())
    return "https://" + network["nodes"][0]["rpc_address"]


def _node_cert(sandbox: Sandbox, directory: Path) -> Path:
    host, _, port = _url(sandbox).removeprefix("https://").rpartition(":")
    pem = ssl.get_server_certificate((host, int(port)))
    path = directory / "node_cert.pem"
    path.write_text(pem)
    return path


def _write(directory: Path, name: str, doc: dict[str, Any]) -> Path:
    path = directory / name
    path.write_text(json.dumps(doc))
    return path


def _with_virtual_report(doc: dict[str, Any], **changes: str) -> dict[str, Any]:
    report = json.loads(base64.b64decode(doc["raw"]))
    report.update(changes)
    return dict(doc, raw=base64.b64encode(json.dumps(report).encode()).decode())


# --- a live node ---------------------------------------------------------------------------


def test_a_live_nodes_evidence_verifies_for_the_code_it_runs(
    sandbox: Sandbox, saved_quote: dict[str, Any]
) -> None:
    measurement = saved_quote["measurement"]
    done = charter(
        "quote", "verify", "--network", sandbox.network_path, "--measurement", measurement, "--json"
    )
    assert done.returncode == 0, done.stderr
    doc = verdict(done)
    assert doc["valid"] is True
    assert doc["format"] == "Insecure_Virtual" and doc["secure"] is False
    assert doc["measurement"] == measurement and doc["node_id"] == saved_quote["node_id"]
    # The node named by its URL, with the service certificate: the one-line verdict.
    plain = charter(
        "quote",
        "verify",
        "--node",
        _url(sandbox),
        "--service-cert",
        sandbox.service_cert_path,
        "--measurement",
        measurement,
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("OK: Insecure_Virtual evidence of node")
    assert "not backed by hardware" in plain.stdout and len(plain.stdout.splitlines()) == 1


def test_a_live_node_is_refused_for_a_measurement_it_does_not_run(sandbox: Sandbox) -> None:
    done = charter(
        "quote", "verify", "--network", sandbox.network_path, "--measurement", "ab" * 32, "--json"
    )
    assert done.returncode == 1
    doc = verdict(done)
    assert doc["valid"] is False and doc["reason"].startswith("measurement:")
    plain = charter("quote", "verify", "--network", sandbox.network_path, "--measurement", "ab")
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.startswith("error: invalid evidence: measurement:")


# --- saved files ---------------------------------------------------------------------------


def test_a_saved_quote_verifies_offline_with_and_without_the_node_certificate(
    sandbox: Sandbox, saved_quote: dict[str, Any], tmp_path: Path
) -> None:
    path = _write(tmp_path, "quote.json", saved_quote)
    measurement = saved_quote["measurement"]
    done = charter("quote", "verify", "--file", path, "--measurement", measurement, "--json")
    assert done.returncode == 0, done.stderr
    assert verdict(done)["valid"] is True
    cert = _node_cert(sandbox, tmp_path)
    with_cert = charter(
        "quote", "verify", "--file", path, "--node-cert", cert, "--measurement", measurement
    )
    assert with_cert.returncode == 0, with_cert.stderr
    assert "binds the node certificate's key" in with_cert.stdout


def test_a_tampered_saved_quote_is_refused_naming_the_check(
    sandbox: Sandbox, saved_quote: dict[str, Any], tmp_path: Path
) -> None:
    measurement = saved_quote["measurement"]

    def check(doc: dict[str, Any], *extra: str | Path) -> str:
        path = _write(tmp_path, "tampered.json", doc)
        done = charter(
            "quote", "verify", "--file", path, "--measurement", measurement, "--json", *extra
        )
        assert done.returncode == 1, done.stdout
        result = verdict(done)
        assert result["valid"] is False
        reason: str = result["reason"]
        return reason

    # Another node id: the report binds a different key.
    assert check(dict(saved_quote, node_id="cd" * 32)).startswith("report_data:")
    # The report rewritten to name the expected code but bind another key.
    forged = _with_virtual_report(saved_quote, report_data="ef" * 32)
    assert check(forged).startswith("report_data:")
    # The report rewritten to another measurement.
    other = _with_virtual_report(saved_quote, measurement="01" * 32)
    assert check(other).startswith("measurement:")
    # The right report, but a certificate whose key is not this node's.
    assert check(saved_quote, "--node-cert", sandbox.service_cert_path).startswith("node_id:")
    # Not base64, and an unknown format.
    assert "base64" in check(dict(saved_quote, raw="%%%"))
    assert check(dict(saved_quote, format="SGX")).startswith("report_format:")
    # Virtual evidence carries no host data to check.
    assert check(saved_quote, "--host-data", "00" * 32).startswith("host_data:")
    # Two bindings at once is a usage error, not a silently ignored flag.
    both = charter(
        "quote",
        "verify",
        "--file",
        _write(tmp_path, "q.json", saved_quote),
        "--measurement",
        measurement,
        "--node-cert",
        sandbox.service_cert_path,
        "--report-data",
        "00",
    )
    assert both.returncode == 1 and "not with --node-cert" in both.stderr


# --- the real Milan SEV-SNP report ----------------------------------------------------------


def _milan_quote(report: bytes = MILAN_REPORT) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    vcek = x509.load_der_x509_certificate((SNP / "vcek.der").read_bytes())
    endorsements = vcek.public_bytes(Encoding.PEM) + (SNP / "ask_ark.pem").read_bytes()
    return {
        "node_id": "00" * 32,
        "format": "AMD_SEV_SNP_v1",
        "raw": base64.b64encode(report).decode(),
        "endorsements": base64.b64encode(endorsements).decode(),
    }


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_the_real_milan_report_verifies_with_its_vcek_and_amds_roots(tmp_path: Path) -> None:
    path = _write(tmp_path, "milan.json", _milan_quote())
    args = ("quote", "verify", "--file", path, "--report-data", MILAN_REPORT_DATA)
    done = charter(*args, "--measurement", MILAN_MEASUREMENT, "--host-data", "00" * 32, "--json")
    assert done.returncode == 0, done.stderr
    doc = verdict(done)
    assert doc["valid"] is True and doc["secure"] is True
    assert doc["format"] == "AMD_SEV_SNP_v1" and doc["measurement"] == MILAN_MEASUREMENT
    assert doc["host_data"] == "00" * 32

    def reason(*extra: str, quote_path: Path = path) -> str:
        refused = charter("quote", "verify", "--file", quote_path, "--json", *extra)
        assert refused.returncode == 1, refused.stdout
        result: str = verdict(refused)["reason"]
        return result

    measurement = ("--measurement", MILAN_MEASUREMENT)
    assert reason("--measurement", "ab" * 48, "--report-data", MILAN_REPORT_DATA).startswith(
        "measurement:"
    )
    assert reason(*measurement).startswith("report_data:")  # binds no node key of ours
    assert reason(
        *measurement, "--report-data", MILAN_REPORT_DATA, "--host-data", "11" * 32
    ).startswith("host_data:")
    flipped = bytearray(MILAN_REPORT)
    flipped[0x2A0] ^= 1
    tampered = _write(tmp_path, "milan-tampered.json", _milan_quote(bytes(flipped)))
    assert reason(*measurement, "--report-data", MILAN_REPORT_DATA, quote_path=tampered).startswith(
        "report_signature:"
    )
