"""`python -m charter.host` as a real process: config errors, and supervision of the real enclave."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charter.ledger.certs import cert_pem, key_pem, new_key, self_signed_cert

REPO = Path(__file__).resolve().parents[2]
HAS_ENCLAVE = (REPO / "enclave_app" / "main.py").exists()


def run_host(config: Path, timeout_s: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charter.host", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
    )


def test_invalid_config_exits_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "node.json"
    config.write_text(json.dumps({"workspace": "ws", "tick_ms": -1, "start": {"mode": "start"}}))
    result = run_host(config)
    assert result.returncode == 2
    assert "invalid config" in result.stderr
    assert "tick_ms" in result.stderr
    assert "at least one member" in result.stderr


def test_missing_config_file_exits_with_a_clear_message(tmp_path: Path) -> None:
    result = run_host(tmp_path / "nope.json")
    assert result.returncode == 2
    assert "cannot read config" in result.stderr


def _start_config(tmp_path: Path) -> Path:
    key = new_key()
    (tmp_path / "member0_privk.pem").write_text(key_pem(key))
    (tmp_path / "member0_cert.pem").write_text(cert_pem(self_signed_cert(key, "member0", ca=False)))
    config = tmp_path / "node.json"
    config.write_text(
        json.dumps(
            {
                "workspace": "ws",
                "start": {"mode": "start", "members": [{"cert": "member0_cert.pem"}]},
            }
        )
    )
    return config


def _start_host(tmp_path: Path) -> subprocess.Popen[bytes]:
    config = _start_config(tmp_path)
    with (tmp_path / "host.stderr").open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "charter.host", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=REPO,
        )


def _stderr(tmp_path: Path) -> str:
    return (tmp_path / "host.stderr").read_text(errors="replace")


def _wait_for_ports(
    host: subprocess.Popen[bytes], tmp_path: Path, key: str, timeout_s: float = 60
) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if host.poll() is not None:
            raise AssertionError(f"host exited early:\n{_stderr(tmp_path)[-3000:]}")
        try:
            ports: dict[str, object] = json.loads((tmp_path / "ws" / "ports.json").read_text())
        except (OSError, ValueError):
            ports = {}
        if key in ports:
            return ports
        time.sleep(0.05)
    raise AssertionError(f"{key} never appeared in ports.json:\n{_stderr(tmp_path)[-3000:]}")


def _stop(host: subprocess.Popen[bytes]) -> None:
    if host.poll() is None:
        host.send_signal(signal.SIGTERM)
    try:
        host.wait(timeout=30)
    except subprocess.TimeoutExpired:
        host.kill()
        host.wait()


@pytest.mark.e2e
@pytest.mark.skipif(not HAS_ENCLAVE, reason="enclave_app/main.py not written yet")
def test_host_exits_with_a_clear_message_when_the_enclave_is_killed(tmp_path: Path) -> None:
    host = _start_host(tmp_path)
    try:
        ports = _wait_for_ports(host, tmp_path, "enclave_pid")
        os.kill(int(str(ports["enclave_pid"])), signal.SIGKILL)
        host.wait(timeout=30)
    finally:
        _stop(host)
    assert host.returncode == 1
    assert "enclave exited with code -9" in _stderr(tmp_path)
    assert "enclave exited with code -9" in (tmp_path / "ws" / "host.log").read_text()


@pytest.mark.e2e
@pytest.mark.skipif(not HAS_ENCLAVE, reason="enclave_app/main.py not written yet")
def test_sigterm_stops_host_and_enclave_with_exit_code_zero(tmp_path: Path) -> None:
    host = _start_host(tmp_path)
    try:
        ports = _wait_for_ports(host, tmp_path, "enclave_pid")
        enclave_pid = int(str(ports["enclave_pid"]))
        host.send_signal(signal.SIGTERM)
        host.wait(timeout=30)
    finally:
        _stop(host)
    assert host.returncode == 0, _stderr(tmp_path)[-3000:]
    with pytest.raises(ProcessLookupError):
        os.kill(enclave_pid, 0)


@pytest.mark.e2e
@pytest.mark.skipif(not HAS_ENCLAVE, reason="enclave_app/main.py not written yet")
def test_client_connections_accepted_by_the_host_are_served_by_the_enclave(
    tmp_path: Path,
) -> None:
    host = _start_host(tmp_path)
    try:
        ports = _wait_for_ports(host, tmp_path, "node_id")
        address, port = str(ports["rpc_address"]).rsplit(":", 1)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # only the hand-over is under test, not the PKI
        for _ in range(3):  # several connections, each passed over the control channel
            with (
                socket.create_connection((address, int(port)), timeout=30) as raw,
                ctx.wrap_socket(raw) as tls,
            ):
                tls.sendall(b"GET /node/state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                response = b""
                while chunk := tls.recv(65536):
                    response += chunk
            assert response.startswith(b"HTTP/1.1 200")
            assert str(ports["node_id"]).encode() in response
    finally:
        _stop(host)
    assert host.returncode == 0, _stderr(tmp_path)[-3000:]


@pytest.mark.e2e
@pytest.mark.skipif(
    Path("/sys/kernel/config/tsm/report").is_dir() or Path("/dev/sev-guest").exists(),
    reason="this machine is an SEV-SNP guest",
)
def test_a_node_configured_for_snp_on_a_machine_without_it_stops_saying_so(
    tmp_path: Path,
) -> None:
    config = _start_config(tmp_path)
    document = json.loads(config.read_text())
    document["platform"] = "snp"
    config.write_text(json.dumps(document))
    result = run_host(config, timeout_s=60)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "attestation platform" in line]
    assert lines, result.stderr[-2000:]
    assert "no SEV-SNP guest interface" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ws" / "sealed.bin").exists()  # nothing was sealed with no platform
