"""Certificates over time on real nodes with real TLS: a service whose certificates have
minutes left is renewed by proposal and keeps serving (every node takes the new ones up
without a restart, connections already open keep working, clients pinning the old service
certificate keep working, old and new receipts verify with ccf's own code); node
certificates name exactly the operator's SANs; a service allowed to expire fails every TLS
handshake with "certificate has expired", as the operator guide says."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from e2e_support import (
    check_receipt_with_ccf,
    make_sandbox,
    start_sandbox,
    wait_committed_on,
    write,
)

from charter.errors import ConnectionFailed
from charter.sandbox import NodeProcess, Sandbox

pytestmark = pytest.mark.e2e

CHARTER = Path(sys.executable).parent / "charter"
NODE1_SANS = ["iPAddress:127.0.0.1", "dNSName:node1.charter.test", "iPAddress:fd00::1"]
DAY_S = 86_400


def _configure(index: int, config: dict[str, Any]) -> None:
    if index == 1:
        config.setdefault("rpc_interface", {})["subject_alt_names"] = NODE1_SANS


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    workspace = tmp_path_factory.mktemp("e2e-certs") / "sb"
    sb = start_sandbox(make_sandbox(workspace, nodes=2, configure_node=_configure))
    try:
        yield sb
    finally:
        sb.stop()


def _utc_text(when: datetime.datetime) -> str:
    return when.strftime("%Y%m%d%H%M%SZ")


def _validity(valid_from: datetime.datetime, days: int) -> list[dict[str, Any]]:
    args = {"valid_from": _utc_text(valid_from), "validity_period_days": days}
    return [
        {"name": "set_service_certificate_validity", "args": args},
        {"name": "set_all_nodes_certificate_validity", "args": args},
    ]


def _client_context(service_cert_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=service_cert_pem)
    return ctx


async def _served_cert(node: NodeProcess, service_cert_pem: str) -> x509.Certificate:
    """The certificate a new TLS connection to `node` gets (verified, hostname checked)."""
    host, port = node.rpc_address.rsplit(":", 1)
    _, writer = await asyncio.open_connection(
        host, int(port), ssl=_client_context(service_cert_pem), server_hostname=host
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der)


def _sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {f"dNSName:{n}" for n in ext.get_values_for_type(x509.DNSName)}
    names |= {f"iPAddress:{ip}" for ip in ext.get_values_for_type(x509.IPAddress)}
    return names


async def _get_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One keep-alive HTTP/1.1 GET on an open TLS connection; its status."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: node\r\nConnection: keep-alive\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length")
    )
    await asyncio.wait_for(reader.readexactly(length), 10)
    return int(lines[0].split()[1])


def _status(sb: Sandbox) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHARTER), "status", "--network", str(sb.network_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _network(sb: Sandbox, node: NodeProcess) -> dict[str, Any]:
    async with sb.client(node) as c:
        return await c.network()


def _parse(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


async def test_node_certificates_name_exactly_the_configured_subject_alt_names(
    net: Sandbox,
) -> None:
    original = net.service_cert_path.read_text()
    # The sandbox's own list for node 0; node 1's operator listed its own.
    assert _sans(await _served_cert(net.nodes[0], original)) == {
        "iPAddress:127.0.0.1",
        "dNSName:localhost",
    }
    assert _sans(await _served_cert(net.nodes[1], original)) == set(NODE1_SANS)
    # The IPv6 SAN is an address, not a name.
    ext = (await _served_cert(net.nodes[1], original)).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert ipaddress.ip_address("fd00::1") in ext.value.get_values_for_type(x509.IPAddress)


async def test_certificates_with_minutes_left_are_renewed_by_proposal_and_the_service_keeps_serving(
    net: Sandbox,
) -> None:
    original_pem = net.service_cert_path.read_text()
    primary = net.nodes[0]
    old_txid = await write(net, primary, 1, "before renewal")
    async with net.client(primary, user=0) as c:
        old_receipt = await c.receipt(old_txid)

    # A connection opened before any renewal, kept open across both.
    host, port = primary.rpc_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(
        host, int(port), ssl=_client_context(original_pem), server_hostname=host
    )
    assert await _get_on(reader, writer, "/node/state") == 200
    old_served = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)

    # Three minutes left: valid from a day ago, for one day.
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    short_end = now + datetime.timedelta(minutes=3)
    async with net.client() as c:
        await net.pass_proposal(c, _validity(short_end - datetime.timedelta(days=1), 1))
    for node in net.nodes:
        await wait_committed_on(net, node, (await _commit(net, primary)))
        network = await _network(net, node)
        assert _parse(network["service_certificate_not_after"]) == short_end
        assert {_parse(v) for v in network["node_certificates_not_after"].values()} == {short_end}
        # New connections get the re-endorsed certificate, on every node, no restart.
        assert (await _served_cert(node, original_pem)).not_valid_after_utc == short_end
    status = _status(net)
    assert status.returncode == 0, status.stderr
    assert "warning: service certificate expires" in status.stderr
    assert status.stderr.count("warning: node ") == 2

    # Renewed well before expiry, for a year, with the same key.
    async with net.client() as c:
        await net.pass_proposal(c, _validity(now, 365))
    year_end = now + datetime.timedelta(days=365)
    for node in net.nodes:
        await wait_committed_on(net, node, (await _commit(net, primary)))
        network = await _network(net, node)
        assert _parse(network["service_certificate_not_after"]) == year_end
        served = await _served_cert(node, network["service_certificate"])
        assert served.not_valid_after_utc == year_end
    renewed_pem = network["service_certificate"]
    renewed = x509.load_pem_x509_certificate(renewed_pem.encode())
    original = x509.load_pem_x509_certificate(original_pem.encode())
    assert renewed.public_key() == original.public_key() and renewed != original
    status = _status(net)
    assert status.returncode == 0 and "warning" not in status.stderr, status.stderr

    # The connection opened before the renewals still serves, with the certificate it had.
    assert await _get_on(reader, writer, "/node/state") == 200
    assert writer.get_extra_info("ssl_object").getpeercert(binary_form=True) == old_served
    writer.close()

    # Clients pinning the original certificate (the sandbox's file) keep working, on both
    # nodes; writes commit and their receipts, and the old ones, verify with ccf's code
    # against the original and the renewed service certificate.
    new_txid = await write(net, net.nodes[1], 2, "after renewal")
    async with net.client(primary, user=0) as c:
        new_receipt = await c.receipt(new_txid)
        again_old = await c.receipt(old_txid)
    assert new_receipt["cert"] != old_receipt["cert"]
    for receipt in (old_receipt, again_old, new_receipt):
        for service_pem in (original_pem, renewed_pem):
            check_receipt_with_ccf(receipt, service_pem)


async def _commit(sb: Sandbox, node: NodeProcess) -> int:
    async with sb.client(node) as c:
        return (await c.commit()).seqno


def test_a_service_allowed_to_expire_fails_every_tls_handshake_as_certificate_has_expired(
    tmp_path: Path,
) -> None:
    sb = start_sandbox(make_sandbox(tmp_path / "sb", nodes=1))
    try:
        asyncio.run(_expire(sb))
    finally:
        sb.stop()


async def _expire(sb: Sandbox) -> None:
    original_pem = sb.service_cert_path.read_text()
    end = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(
        seconds=20
    )
    async with sb.client() as c:
        await sb.pass_proposal(c, _validity(end - datetime.timedelta(days=1), 1))
        renewed_pem = (await c.network())["service_certificate"]
    await asyncio.sleep(max(0.0, (end - datetime.datetime.now(datetime.UTC)).total_seconds()) + 2)
    for pem in (original_pem, renewed_pem):
        with pytest.raises(ssl.SSLCertVerificationError) as failure:
            await _served_cert(sb.nodes[0], pem)
        assert failure.value.verify_code == 10  # X509_V_ERR_CERT_HAS_EXPIRED
        assert "certificate has expired" in str(failure.value)
    with pytest.raises(ConnectionFailed, match="certificate has expired"):
        async with sb.client() as c:
            await c.network()
