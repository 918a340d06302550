"""`charter sandbox` as a newcomer runs it (issue 21): the installed command, real nodes.

One sandbox serves a small app of the test's own, found through a *relative* PYTHONPATH; it
is started, stopped and resumed with options a resumed network cannot honour, and then used
for the tests below. Nothing is mocked: real processes, TLS on 127.0.0.1, files on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ccf.receipt
import pytest
from cryptography import x509

from charter.errors import CertificateRefused, ConnectionFailed
from charter.identity import Network, TxId
from charter.keygen import generate_identity
from charter.member import Member
from charter.sdk import CharterClient

pytestmark = pytest.mark.e2e

CHARTER = Path(sys.executable).parent / "charter"
READY_MARKER = "Press Ctrl-C to stop."
START_TIMEOUT_S = 120.0

# Declared read-only route first: the banner must pick the first route that *writes*.
GREETINGS_APP = """
from pydantic import BaseModel

from charter.enclave_app.app import App, Context
from charter.enclave_app.kv import JSON, STR

app = App("greetings")


class Greeting(BaseModel):
    text: str


@app.get("/greetings", auth="user_cert")
def count(ctx: Context) -> dict[str, int]:
    return {"count": sum(1 for _ in ctx.tx.items("greetings"))}


@app.post("/greetings/{name}", auth="user_cert", body=Greeting)
def greet(ctx: Context) -> dict[str, str]:
    ctx.tx.view("greetings", STR, JSON).put(ctx.path["name"], {"text": ctx.body.text})
    return {"stored": ctx.path["name"]}
"""


class Running:
    """A `charter sandbox` process whose output is collected by a thread."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [str(CHARTER), "sandbox", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        for stream, sink in (
            (self.process.stdout, self.stdout),
            (self.process.stderr, self.stderr),
        ):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _pump(stream: object, sink: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line)

    def wait_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = "".join(self.stdout)
            if READY_MARKER in text:
                return text
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise AssertionError("sandbox did not open:\n" + "".join(self.stdout + self.stderr))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Resumed:
    root: Path
    workspace: Path
    running: Running
    first_banner: str
    banner: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resumed]:
    root = tmp_path_factory.mktemp("newcomer")
    (root / "apps").mkdir()
    (root / "apps" / "greetings.py").write_text(GREETINGS_APP)
    env = dict(os.environ, PYTHONPATH="apps", COLUMNS="200")  # relative, as people type it
    env["PATH"] = f"{CHARTER.parent}{os.pathsep}{env.get('PATH', '')}"
    first = Running(["--nodes", "1", "--workspace", "ws", "--app", "greetings"], root, env)
    first_banner = first.wait_ready()
    first.stop()
    assert first.process.returncode == 0, "".join(first.stderr)
    again = Running(
        ["--workspace", "ws", "--nodes", "2", "--port-base", "9700", "--app", "logging"],
        root,
        env,
    )
    banner = again.wait_ready()
    try:
        yield Resumed(root, root / "ws", again, first_banner, banner, env)
    finally:
        again.stop()


def _node_url(r: Resumed) -> str:
    return Network.load(r.workspace / "network.json").urls[0]


def test_a_relative_pythonpath_finds_the_app_and_the_banner_calls_its_first_writing_route(
    resumed: Resumed,
) -> None:
    banner = resumed.first_banner
    assert "/app/log/private" not in banner, "the logging sample's example for another app"
    assert "(POST /app/greetings/{name})" in banner
    start = banner.index("  curl ")
    command = banner[start : banner.index("\n\n", start)]
    assert """-d '{"text": "hello"}'""" in command
    # The printed command works as printed (after the user is in and the service open).
    done = subprocess.run(
        ["bash", "-c", command], cwd=resumed.root, capture_output=True, text=True, timeout=60
    )
    url = _node_url(resumed)
    assert url in command or url.replace("https://", "") in command
    assert done.returncode == 0, done.stderr
    assert "HTTP/1.1 200" in done.stdout and '{"stored":"hello"}' in done.stdout
    assert done.stdout.endswith("\n"), "-w '\\n' ends the answer with a newline"


def test_resume_says_which_options_it_ignores_and_keeps_the_network_as_it_was(
    resumed: Resumed,
) -> None:
    notes = "".join(resumed.running.stderr)
    assert "--nodes 2 is ignored: the network resumes with its 1 node(s)" in notes
    assert "--port-base 9700 is ignored: the nodes resume on their ports" in notes
    assert "--app logging is ignored: the network resumes serving greetings" in notes
    assert "Resuming a 1-node network" in resumed.banner
    assert ":9700" not in resumed.banner
    assert "(POST /app/greetings/{name})" in resumed.banner


def test_a_second_sandbox_on_a_running_workspace_says_so_and_touches_nothing(
    resumed: Resumed,
) -> None:
    log = resumed.workspace / "node0" / "node.log"
    before = (log.stat().st_size, log.stat().st_mtime_ns, sorted(resumed.workspace.rglob("*")))
    done = subprocess.run(
        [str(CHARTER), "sandbox", "--workspace", "ws", "--nodes", "1"],
        cwd=resumed.root,
        env=resumed.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == (
        "charter sandbox: a sandbox is already running on this workspace "
        f"(pid {resumed.running.process.pid})"
    )
    # The running node's log got nothing (a little slack: the node itself may log meanwhile).
    after = (log.stat().st_size, log.stat().st_mtime_ns, sorted(resumed.workspace.rglob("*")))
    assert after[2] == before[2]
    assert "Address already in use" not in log.read_text()


def test_a_signature_transaction_receipt_says_so_as_ccf_does(resumed: Resumed) -> None:
    service = (resumed.workspace / "service_cert.pem").read_text()

    async def go() -> dict[str, object]:
        async with CharterClient(_node_url(resumed), resumed.workspace / "service_cert.pem") as c:
            state = await c.node_state()
            commit = await c.commit()
            signed = int(state["last_signed_seqno"])
            return await c.receipt(TxId(commit.view, signed))  # verified by default

    receipt = asyncio.run(go())
    assert receipt["is_signature_transaction"] is True
    assert "leaf_components" not in receipt
    # CCF's own verifier takes the signed root as the leaf, with an empty proof.
    node_cert = x509.load_pem_x509_certificate(str(receipt["cert"]).encode())
    root = ccf.receipt.root(str(receipt["leaf"]), [])
    ccf.receipt.verify(root, str(receipt["signature"]), node_cert)
    ccf.receipt.check_endorsements(node_cert, x509.load_pem_x509_certificate(service.encode()), [])


def test_a_removed_users_next_request_raises_certificate_refused(
    resumed: Resumed, tmp_path: Path
) -> None:
    ws = resumed.workspace
    user = generate_identity("user7", tmp_path)
    members = [(ws / "members" / f"member{i}_cert.pem", ws / "members" / f"member{i}_privk.pem")
               for i in range(3)]  # fmt: skip

    async def govern(client: CharterClient, action: dict[str, object]) -> None:
        p = await Member(client, *members[0]).propose([action])
        for cert, key in members:
            if p.state != "Open":
                break
            p = await Member(client, cert, key).vote(p.proposal_id, True)
        assert p.state == "Accepted"
        assert p.txid is not None
        await client.wait_for_commit(p.txid)

    async def go() -> None:
        url = _node_url(resumed)
        async with CharterClient(url, ws / "service_cert.pem") as gov:
            await govern(gov, {"name": "set_user", "args": {"cert": user.cert_path.read_text()}})
            async with CharterClient(
                url, ws / "service_cert.pem", cert_path=user.cert_path, key_path=user.key_path
            ) as c:
                first = c.check(await c.post("/app/greetings/seven", json={"text": "hi"}))
                assert first.status == 200
            await govern(gov, {"name": "remove_user", "args": {"user_id": user.id}})
        async with CharterClient(
            url, ws / "service_cert.pem", cert_path=user.cert_path, key_path=user.key_path
        ) as c:
            with pytest.raises(CertificateRefused, match="refused the client certificate") as info:
                await c.post("/app/greetings/seven", json={"text": "again"})
            assert (
                isinstance(info.value, ConnectionFailed) and info.value.code == "CertificateRefused"
            )

    asyncio.run(go())


def test_an_app_module_that_does_not_import_stops_the_sandbox_with_one_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "noapp.py").write_text("x = 1\n")
    (tmp_path / "apps" / "broken.py").write_text("import not_installed_anywhere_42\n")
    env = dict(os.environ, PYTHONPATH="apps")
    cases = {
        "greetingz": r"app module 'greetingz' not found \(PYTHONPATH=/\S+/apps\): check the `app` "
        r"name for a typo",
        "noapp": r"app module 'noapp' has no `app = App\(...\)` at module level",
        "broken": r"app module 'broken' imports 'not_installed_anywhere_42', which is not "
        r"installed",
    }
    for module, pattern in cases.items():
        done = subprocess.run(
            [str(CHARTER), "sandbox", "--nodes", "1", "--workspace", f"ws-{module}",
             "--app", module],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("charter sandbox: node 0 stopped: "), lines[0]
        assert re.search(pattern, lines[0]), lines[0]
        assert "Traceback" not in done.stdout + done.stderr
        ports = json.loads(
            (tmp_path / f"ws-{module}" / "node0" / "workspace" / "ports.json").read_text()
        )
        assert re.search(pattern, ports["fatal"])


def test_a_node_that_dies_is_reported_once_and_the_sandbox_still_stops_cleanly(
    tmp_path: Path,
) -> None:
    """kill -9 of a node's enclave while the sandbox runs: the sandbox says so once (it
    used to repeat it every two seconds until stopped), names the node's log, and Ctrl-C
    still stops it with exit code 0."""
    env = dict(os.environ, COLUMNS="200")
    running = Running(["--nodes", "1", "--workspace", "ws"], tmp_path, env)
    running.wait_ready()
    try:
        ports = json.loads((tmp_path / "ws" / "node0" / "workspace" / "ports.json").read_text())
        os.kill(ports["enclave_pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "node0 stopped" not in "".join(running.stdout) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(5)  # the sandbox looks at its nodes every 2 s
    finally:
        running.stop()
    out = "".join(running.stdout)
    assert out.count("node0 stopped") == 1, out
    assert "exit code 1" in out and str(Path("ws") / "node0" / "node.log") in out, out
    assert "start it again on the same workspace" in out, out
    assert running.process.returncode == 0, "".join(running.stderr)
