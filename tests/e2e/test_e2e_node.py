"""One real node (host + enclave processes): ledger, receipts, confidentiality, bad input,
crash and restart, and user removal. One network for the whole module; the crash test runs
last and leaves the node restarted."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import re
import secrets
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import (
    ELECTION_TIMEOUT_MS,
    LEDGER_CHUNK_BYTES,
    SIGNATURE_DELAY_MS,
    b64,
    ccf_validate,
    check_receipt_with_ccf,
    commit_seqno,
    committed_chunk_end,
    log_tails,
    log_text,
    make_sandbox,
    read,
    send_raw,
    start_sandbox,
    wait_committed_on,
    wait_ready,
    write,
)

from charter.auditor import verify_receipt_bytes
from charter.errors import ConnectionFailed, Unauthorized
from charter.keygen import generate_identity
from charter.sandbox import WAIT_TRY_TIMEOUT_S, NodeProcess, Sandbox
from charter.sdk import CharterClient

pytestmark = pytest.mark.e2e


TAP = Path(__file__).resolve().parent / "control_tap.py"


class TappedNode(NodeProcess):
    """A node whose host runs the enclave behind `control_tap.py`, which records every
    control-channel frame (what the host sees) under `<node dir>/tap/`."""

    def start(self) -> None:
        self.ports_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(TAP), "--host-config", str(self.config_path),
                 "--tap-dir", str(self.directory / "tap")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip


class TappedSandbox(Sandbox):
    def _node(self, i: int) -> NodeProcess:
        node = super()._node(i)
        return TappedNode(node.index, node.directory, node.config_path)


@pytest.fixture(scope="module")
def tapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    workspace = tmp_path_factory.mktemp("e2e-tap") / "sb"
    sb = TappedSandbox(
        workspace,
        nodes=1,
        signature_delay_ms=SIGNATURE_DELAY_MS,
        election_timeout_ms=ELECTION_TIMEOUT_MS,
        ledger_chunk_bytes=LEDGER_CHUNK_BYTES,
    )
    start_sandbox(sb)
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = start_sandbox(make_sandbox(tmp_path_factory.mktemp("e2e-node") / "sb", nodes=1))
    try:
        yield sb
    finally:
        sb.stop()


def _ledger_dir(sb: Sandbox) -> Path:
    return sb.nodes[0].directory / "workspace" / "ledger"


async def test_written_ledger_validates_with_ccf_and_every_receipt_verifies(net: Sandbox) -> None:
    node = net.nodes[0]
    service_pem = net.service_cert_path.read_text()
    txids = []
    for i in range(60):
        # ~300-byte records so that the 4 KiB chunks close several times.
        txids.append(
            await write(net, node, 1000 + i, f"record {i} " + "x" * 300, public=bool(i % 2))
        )
    await wait_committed_on(net, node, txids[-1].seqno)
    async with net.client(node, user=0) as c:
        for txid in txids:
            receipt = await c.receipt(txid)
            root = check_receipt_with_ccf(receipt, service_pem)
            assert len(root) == 32
        cose = await c.cose_receipt(txids[-1])
    assert verify_receipt_bytes(cose, service_pem).txid == str(txids[-1])
    # The last entries may sit in the open chunk: write until a committed chunk holds them.
    for i in range(40):
        if committed_chunk_end(_ledger_dir(net)) >= txids[-1].seqno:
            break
        last = await write(net, node, 2000 + i, "y" * 300)
        await wait_committed_on(net, node, last.seqno)
    result = ccf_validate(_ledger_dir(net))
    assert result["chunks"] >= 3, result
    verified_seqno = int(result["txid"].split(".")[1])
    assert verified_seqno >= txids[-1].seqno, (result, str(txids[-1]))
    assert verified_seqno == committed_chunk_end(_ledger_dir(net)), result
    assert result["status"] == "Open"


async def test_a_virtual_node_says_it_is_unsafe_and_shows_the_evidence_it_joined_with(
    net: Sandbox,
) -> None:
    async with net.client(net.nodes[0], user=0) as c:
        version = await c.get_json("/node/version")
        own = await c.get_json("/node/quotes/self")
        recorded = (await c.get_json("/node/quotes"))["quotes"]
    assert version["platform"] == "virtual"
    assert version["unsafe"] is True
    assert own["format"] == "Insecure_Virtual"
    assert [q["node_id"] for q in recorded] == [own["node_id"]]
    assert recorded[0]["measurement"] == own["measurement"]
    assert json.loads(base64.b64decode(recorded[0]["raw"]))["measurement"] == own["measurement"]


async def test_an_auditor_replays_the_nodes_admission_from_the_ledger(net: Sandbox) -> None:
    node = net.nodes[0]
    await write(net, node, 4242, "admitted")
    charter = Path(sys.executable).with_name("charter")
    result = subprocess.run(
        [str(charter), "ledger", "audit", str(_ledger_dir(net)), "--include-uncommitted",
         "--check-attestation", "--json", "--service-cert", str(net.service_cert_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["valid"] is True


async def test_private_plaintext_never_reaches_the_host_or_its_files(tapped: Sandbox) -> None:
    node = tapped.nodes[0]
    private_marker = f"private-{secrets.token_hex(16)}"
    public_marker = f"public-{secrets.token_hex(16)}"
    await write(tapped, node, 31, private_marker)
    last = await write(tapped, node, 32, public_marker, public=True)
    await wait_committed_on(tapped, node, last.seqno)
    assert await read(tapped, node, 31) == private_marker
    async with tapped.client(node, user=0) as c:
        # Reading it back and fetching receipts moves more frames past the host.
        await c.receipt(last)
    await asyncio.sleep(0.3)
    # Everything the host (or the operator) can read: every control-channel frame in both
    # directions (the tap), ledger chunks, snapshots, sealed state, ports.json, host.log, and
    # node.log (which also holds the enclave's stderr).
    files = [p for p in node.directory.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"sealed.bin", "host.log", "host_to_enclave.bin", "enclave_to_host.bin"} <= names, names
    needles = [
        private_marker.encode(),
        private_marker.encode().hex().encode(),
        private_marker.encode("utf-16-le"),
        b64(private_marker.encode()).encode(),
    ]
    public_seen_in: set[str] = set()
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"private plaintext found in {path}"
        if public_marker.encode() in data:
            public_seen_in.add(path.name if "ledger" not in path.parts else "ledger")
    # The controls: the same search finds a public record in the ledger and on the channel.
    assert {"ledger", "enclave_to_host.bin"} <= public_seen_in, public_seen_in


async def test_malformed_requests_get_clear_errors_and_change_nothing(
    net: Sandbox, tmp_path: Path
) -> None:
    node = net.nodes[0]
    before_txid = await write(net, node, 41, "kept")
    await wait_committed_on(net, node, before_txid.seqno)
    before = await commit_seqno(net, node)

    async with net.client(node, user=0) as c:
        bad_json = await c.post(
            "/app/log/private",
            data=b'{"id": 41, "msg": ',
            headers={"Content-Type": "application/json"},
        )
        assert bad_json.status == 400, bad_json
        assert bad_json.body["error"]["code"] == "InvalidInput"
        schema = await c.post("/app/log/private", json={"id": "forty-one", "msg": "changed"})
        assert schema.status == 422, schema
        assert schema.body["error"]["code"] == "ValidationError"
        extra = await c.post("/app/log/private", json={"id": 41, "msg": "changed", "x": 1})
        assert extra.status == 422, extra
        huger = await c.post(
            "/app/log/private",
            data=b"z" * (9 * 1024 * 1024),
            headers={"Content-Type": "application/json"},
        )
        assert huger.status == 413, huger
        assert huger.body["error"]["code"] == "RequestTooLarge"

    stranger = generate_identity("stranger", tmp_path)
    async with CharterClient(
        node.url, net.service_cert_path, cert_path=stranger.cert_path, key_path=stranger.key_path
    ) as c:
        with pytest.raises((ConnectionFailed, Unauthorized)):
            c.check(await c.post("/app/log/private", json={"id": 41, "msg": "changed"}))

    n2n = str(node.ports["node_to_node_address"])
    await send_raw(n2n, b"\xff" * 64)  # a length prefix far over the frame limit
    hello = b"127.0.0.1:9"
    garbage = secrets.token_bytes(200)
    forged_header = bytes([1]) + bytes(32) + bytes.fromhex(node.node_id) + bytes(12)
    await send_raw(
        n2n,
        struct.pack(">I", len(hello))
        + hello
        + struct.pack(">I", len(garbage))
        + garbage
        + struct.pack(">I", len(forged_header) + 40)
        + forged_header
        + bytes(40),
    )
    await asyncio.sleep(0.5)
    assert await commit_seqno(net, node) == before, log_tails(net)
    assert await read(net, node, 41) == "kept"
    log = log_text(node)
    assert "relay inbound connection dropped" in log, log_tails(net)
    assert "event=n2n_frame_dropped" in log, log_tails(net)
    # ... and the node keeps serving.
    after = await write(net, node, 42, "still serving")
    await wait_committed_on(net, node, after.seqno)
    assert await read(net, node, 42) == "still serving"


async def test_garbage_sent_as_fast_as_it_goes_is_counted_but_cannot_flood_the_log(
    net: Sandbox,
) -> None:
    """Thousands of garbage frames on the node-to-node port and a hundred non-TLS
    connections on the client port: every frame is counted as dropped, but each kind of
    line reaches the node's log at most a burst's worth of times per window (RepeatLimit,
    charter.enclave_app.interface.logs), and the node keeps committing."""
    node = net.nodes[0]
    frames, connections = 3_000, 120
    before_dropped = (await metrics_of(net, node))["peer_messages_dropped"]
    before_log = log_text(node)
    hello = b"127.0.0.1:9"
    flood = [struct.pack(">I", len(hello)), hello]
    for _ in range(frames):
        garbage = secrets.token_bytes(100)
        flood += [struct.pack(">I", len(garbage)), garbage]
    await send_raw(str(node.ports["node_to_node_address"]), b"".join(flood), linger_s=0.5)
    rpc = node.url.removeprefix("https://")
    for _round in range(connections // 40):
        await asyncio.gather(
            *(send_raw(rpc, b"GET / HTTP/1.1\r\n\r\n" * 4, linger_s=0.3) for _ in range(40))
        )
    deadline = asyncio.get_running_loop().time() + 30
    while (await metrics_of(net, node))["peer_messages_dropped"] < before_dropped + frames:
        assert asyncio.get_running_loop().time() < deadline, log_tails(net)
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)  # the last handshakes' lines
    new_log = log_text(node)[len(before_log) :]
    dropped_lines = new_log.count("event=n2n_frame_dropped")
    handshake_lines = new_log.count("event=tls_handshake_failed")
    # One window's burst (20), or two if the flood crossed a window's end.
    assert 1 <= dropped_lines <= 40, (dropped_lines, log_tails(net))
    assert 1 <= handshake_lines <= 40, (handshake_lines, log_tails(net))
    after = await write(net, node, 44, "served through the flood")
    await wait_committed_on(net, node, after.seqno)
    assert await read(net, node, 44) == "served through the flood"
    # The flood stopped: once its window ends, each process says how many it held back.
    while "event=log_lines_held" not in log_text(node)[len(before_log) :]:
        assert asyncio.get_running_loop().time() < deadline + 20, log_tails(net)
        await asyncio.sleep(0.5)
    held = re.findall(r"event=log_lines_held count=(\d+)", log_text(node)[len(before_log) :])
    assert sum(int(n) for n in held) > 0


@dataclasses.dataclass
class _Behind:
    """A node as the sandbox's waits see it, reached at another address."""

    url: str
    index: int
    log_path: Path


async def test_a_wait_for_a_node_outlasts_a_connection_that_is_never_answered(
    net: Sandbox,
) -> None:
    """A joiner closes the connections it will not serve yet with a reset, and a lost reset
    is not sent again: the client then waits for an answer that never comes. The sandbox's
    waits give each try `WAIT_TRY_TIMEOUT_S`, not the client's whole request timeout (30 s,
    as long as the wait itself), so one such connection costs a try, not the wait (the
    WAN test, whose nodes drop 0.5 % of their packets, failed so)."""
    node = net.nodes[0]
    target = node.rpc_address.rpartition(":")
    held: list[asyncio.StreamWriter] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not held:
            held.append(writer)  # the first connection: never answered, never closed
            return
        up_reader, up_writer = await asyncio.open_connection(target[0], int(target[2]))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    behind = _Behind(f"https://127.0.0.1:{port}", node.index, node.log_path)
    try:
        started = asyncio.get_running_loop().time()
        await net.wait_part_of_network(behind, timeout_s=20.0)  # type: ignore[arg-type]
        took = asyncio.get_running_loop().time() - started
        assert held and WAIT_TRY_TIMEOUT_S <= took < 20.0
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def metrics_of(sb: Sandbox, node: NodeProcess) -> dict[str, int]:
    async with sb.client(node) as c:
        r = c.check(await c.get("/node/metrics"))
    assert isinstance(r.body, dict)
    return r.body


async def test_large_bodies_are_read_whole_and_judged_by_their_size(net: Sandbox) -> None:
    node = net.nodes[0]
    async with net.client(node, user=0) as c:
        # Valid JSON whose msg is over the app's 64 KiB limit: a validation error (422) ...
        long_msg = await c.post(
            "/app/log/private",
            data=json.dumps({"id": 43, "msg": "z" * 200_000}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert long_msg.status == 422, long_msg
        # ... and a body over the endpoint's 1 MiB limit: 413, not a JSON error.
        huge = await c.post(
            "/app/log/private",
            data=json.dumps({"id": 43, "msg": "z" * (2 * 1024 * 1024)}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert huge.status == 413, huge
        assert huge.body["error"]["code"] == "RequestTooLarge"
    assert await read(net, node, 43) is None


async def test_removed_user_cannot_connect_or_write_on_new_connections(
    net: Sandbox, tmp_path: Path
) -> None:
    node = net.nodes[0]
    user = generate_identity("user7", tmp_path)

    def as_user7() -> CharterClient:
        return CharterClient(
            node.url, net.service_cert_path, cert_path=user.cert_path, key_path=user.key_path
        )

    async with net.client(node) as c:
        await net.pass_proposal(
            c, [{"name": "set_user", "args": {"cert": user.cert_path.read_text()}}]
        )
    async with as_user7() as kept_open:
        r = kept_open.check(
            await kept_open.post("/app/log/private", json={"id": 71, "msg": "by user7"})
        )
        assert r.txid is not None
        await wait_committed_on(net, node, r.txid.seqno)
        async with net.client(node) as c:
            p = await net.pass_proposal(c, [{"name": "remove_user", "args": {"user_id": user.id}}])
        assert p.txid is not None
        await wait_committed_on(net, node, p.txid.seqno)
        # A connection opened before the removal: every request is authorised afresh.
        late = await kept_open.post("/app/log/private", json={"id": 73, "msg": "kept-alive"})
        assert late.status == 401, late
    assert await read(net, node, 73) is None
    async with as_user7() as c:
        with pytest.raises((ConnectionFailed, Unauthorized)):
            c.check(await c.post("/app/log/private", json={"id": 72, "msg": "after removal"}))
        with pytest.raises((ConnectionFailed, Unauthorized)):
            c.check(await c.get("/app/log/private", params={"id": "71"}))
    assert await read(net, node, 72) is None
    assert await read(net, node, 71) == "by user7"


async def test_killed_node_restarts_as_itself_with_its_committed_writes(net: Sandbox) -> None:
    node = net.nodes[0]
    txid = await write(net, node, 51, "survives kill -9")
    await wait_committed_on(net, node, txid.seqno)
    async with net.client(node) as c:
        before = await c.network()
    node_id = node.node_id
    enclave_pid = node.ports["enclave_pid"]

    node.kill()
    node.start()
    await asyncio.to_thread(node.wait_started)
    await wait_ready(net, node)

    assert node.node_id == node_id
    assert node.ports["enclave_pid"] != enclave_pid
    async with net.client(node) as c:
        after = await c.network()
        state = await c.node_state()
    assert state["node_id"] == node_id
    assert after["service_certificate"] == before["service_certificate"]
    assert after["service_status"] == "Open"
    assert await read(net, node, 51) == "survives kill -9"
    new = await write(net, node, 52, "after restart")
    await wait_committed_on(net, node, new.seqno)
    async with net.client(node, user=0) as c:
        check_receipt_with_ccf(await c.receipt(new), net.service_cert_path.read_text())
        assert await c.tx_status(txid) == "Committed"
    assert new.view >= txid.view
    ccf_validate(_ledger_dir(net))
