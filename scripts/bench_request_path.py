#!/usr/bin/env python3
"""CPU per write of a node's request path after HTTP, in-process (no sockets, no TLS).

    .venv/bin/python scripts/bench_request_path.py [--writes 20000] [--per-turn 16]

One node is started in a temporary workspace as the tests in tests/node start it (the
logging sample, governance, a member and a user), its service opened and the user added
through governance's real actions. Then the user's `POST /app/log/private` (the bench's
record, as `ab` sends it) is served `--per-turn` times per event-loop turn, and each turn
ends as `enclave_app.main.Runtime.flush` ends one: `Node.end_turn()`, every frame of the
outbox encoded for the host (`interface.encode_frame`), and the writes reported durable
(`Node.durable`), which commits them. A tick every `--tick-every-turns` turns drives the
signature timer; signatures fall due every `signatures.tx_count` (100) writes as in the
sandbox.

What is measured is CPU time (`time.process_time`), never wall time, in µs per write:

- `request_path_us_per_write`: all of the above, per write (the headline figure);
- `handle_us`: `Node.handle` (route, service open, auth, app handler, KV, `commit_tx`);
- `settle_us`: `Node.end_turn` after the turn's requests (Raft's Ready: persist, apply);
- `frames_us`: encoding the turn's frames for the host;
- `durable_us`: `Node.durable` (commit, signatures as they fall due);

and, each in a loop of its own on the same node (so they overlap the above, not add to it):

- `auth_us`: `Frontend.authenticate` of the user's certificate;
- `invoke_us`: route match + app handler on a fresh transaction (not committed);
- `add_transaction_us`: `History.add_transaction` of the record's write set;
- `signature_us`: one signature transaction (`Node.emit_signature`), per signature;
- `link_codec_us`: the frontend link's request and answer frames of one write, each built,
  encoded and decoded (`enclave_app.frontend_link`);

and, once every round is done, `gc_tracked_objects` and `gc_full_collection_ms`: what a full
collection of the garbage collector walks, and takes (wall time), with what the node keeps of
those writes (start-up objects frozen first, as the enclave freezes them).

`--rounds N` repeats the whole measurement and reports each figure's median. The last line
of stdout is one JSON object. Performance is compared between revisions by running this
script from each (alternated: A B B A), never asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from charter.enclave_app import interface as itf
from charter.enclave_app import node_endpoints
from charter.enclave_app.node import Node
from charter.enclave_app.platform import VirtualPlatform
from charter.enclave_app.startup import include_governance, initial_members, load_app
from charter.governance import tables as gt
from charter.governance.actions import apply_action, parse_action
from charter.governance.effects import ActionContext
from charter.ledger import certs

BODY = json.dumps({"id": 1, "msg": "bench record"}).encode()
PATH = "/app/log/private"
WRITES_MAX = 10_000_000


def _headers() -> CIMultiDict[str]:
    # What `ab -k -p record.json -T application/json` sends.
    return CIMultiDict(
        {
            "Content-length": str(len(BODY)),
            "Content-type": "application/json",
            "Host": "127.0.0.1:8000",
            "User-Agent": "ApacheBench/2.3",
            "Accept": "*/*",
            "Connection": "Keep-Alive",
        }
    )


class Bench:
    """One node, its service open, one user; the runtime's turn played by hand."""

    def __init__(
        self, workspace: Path, per_turn: int, tick_every_turns: int, signature_tx_count: int
    ) -> None:
        member_key = certs.new_key()
        member_pem = certs.cert_pem(certs.identity_cert(member_key, "member0"))
        (workspace / "member0_cert.pem").write_text(member_pem)
        config = itf.NodeConfig.model_validate(
            {
                "workspace": str(workspace),
                "signatures": {"tx_count": signature_tx_count},
                "start": {
                    "mode": "start",
                    "members": [{"cert": str(workspace / "member0_cert.pem")}],
                },
            }
        )
        # Governance checks certificates against the clock: start it at the real time.
        self.now_ms = int(time.time() * 1000)
        node = Node(
            config,
            VirtualPlatform(workspace),
            load_app(config.app),
            clock_s=lambda: self.now_ms / 1000,
        )
        node.routes.include(node_endpoints.build(node))
        include_governance(node)
        node.start_new_network(initial_members(config), None)
        self.node = node
        self.per_turn = per_turn
        self.tick_every_turns = tick_every_turns
        self.turns = 0
        self.frame_bytes = 0
        self.durable_seqno = 0
        self.turn()
        member_id = certs.cert_id(member_pem)
        user_key = certs.new_key()
        user_pem = certs.cert_pem(certs.identity_cert(user_key, "user0"))
        self.user_der = certs.load_cert(user_pem).public_bytes(serialization.Encoding.DER)

        def open_service(tx: Any) -> None:
            info = gt.member_info(tx, member_id)
            assert info is not None
            gt.put_json(tx, gt.MEMBERS_INFO, gt.id_key(member_id), {**info, "status": "Active"})
            status = gt.service_info(tx)
            assert status is not None
            gt.put_json(tx, gt.SERVICE_INFO, gt.SINGLETON_KEY, {**status, "status": "Open"})

        self._commit(open_service)
        ctx = ActionContext(proposal_id="p", now_s=self.now_ms // 1000, merkle_root=bytes(32))
        self._commit(lambda tx: apply_action(tx, parse_action("set_user", {"cert": user_pem}), ctx))
        self.headers = _headers()
        status = self.write()
        assert status == 200, f"the bench's write answered {status}"
        self.turn()

    def _commit(self, write: Callable[[Any], None]) -> None:
        tx = self.node.store.begin()
        write(tx)
        self.node.commit_tx(tx)
        self.turn()

    def write(self) -> int:
        response = self.node.handle(
            "POST", PATH, "", self.headers, BODY, self.user_der, source="127.0.0.1"
        )
        return response.status  # type: ignore[union-attr]

    # ------------------------------------------------------------------ one turn
    def settle(self) -> list[itf.Frame]:
        node = self.node
        node.end_turn()
        frames, node.outbox = node.outbox, []
        node.outbox_write_bytes = 0
        return frames

    def encode(self, frames: list[itf.Frame]) -> int:
        highest = 0
        for frame in frames:
            self.frame_bytes += len(itf.encode_frame(frame))
            if isinstance(frame, itf.WriteEntries):
                highest = max(highest, frame.entries[-1][0])
        return highest

    def durable(self, seqno: int) -> None:
        # The host reports a ledger write durable after its fsync.
        if seqno:
            self.node.durable(seqno)

    def tick(self) -> None:
        self.turns += 1
        if self.turns % self.tick_every_turns == 0:
            self.now_ms += 10
            self.node.tick(self.now_ms)

    def turn(self) -> None:
        """A turn without timing (set-up)."""
        for _ in range(8):
            highest = self.encode(self.settle())
            self.durable(highest)
            if not self.node.outbox:
                return


def _per_write(total_s: float, writes: int) -> float:
    return total_s * 1e6 / writes


def measure_path(bench: Bench, writes: int) -> dict[str, float]:
    """The whole post-HTTP path, turn by turn, split into its parts."""
    clock = time.process_time
    handle_s = settle_s = frames_s = durable_s = 0.0
    turns = max(1, writes // bench.per_turn)
    pending: list[itf.Frame] = []
    for _ in range(turns):
        t0 = clock()
        for _ in range(bench.per_turn):
            status = bench.write()
            assert status == 200, f"write answered {status}"
        t1 = clock()
        frames = bench.settle()
        t2 = clock()
        # The host answers Durable for the previous turn's write while this one's is served.
        highest = bench.encode(frames)
        t3 = clock()
        bench.durable(highest)
        bench.tick()
        pending.extend(bench.settle())
        bench.encode(pending)
        pending.clear()
        t4 = clock()
        handle_s += t1 - t0
        settle_s += t2 - t1
        frames_s += t3 - t2
        durable_s += t4 - t3
    n = turns * bench.per_turn
    total = handle_s + settle_s + frames_s + durable_s
    return {
        "request_path_us_per_write": _per_write(total, n),
        "handle_us": _per_write(handle_s, n),
        "settle_us": _per_write(settle_s, n),
        "frames_us": _per_write(frames_s, n),
        "durable_us": _per_write(durable_s, n),
    }


def measure_parts(bench: Bench, count: int) -> dict[str, float]:
    """Parts of the path in loops of their own (they overlap `measure_path`'s figures)."""
    from charter.ledger.entry import ZERO_DIGEST

    node, clock = bench.node, time.process_time
    frontend = node.frontend
    endpoint = node.routes.match("POST", PATH)
    assert endpoint is not None
    policies = endpoint.endpoint.auth
    out: dict[str, float] = {}

    t0 = clock()
    for _ in range(count):
        frontend.authenticate(policies, node.store.begin(), bench.user_der, headers=bench.headers)
    out["auth_us"] = _per_write(clock() - t0, count)

    caller = frontend.authenticate(
        policies, node.store.begin(), bench.user_der, headers=bench.headers
    ).caller
    tx = node.store.begin()
    t0 = clock()
    for _ in range(count):
        tx = node.store.begin()
        match = node.routes.match("POST", PATH)
        assert match is not None
        node.routes.invoke(
            match,
            tx=tx,
            caller=caller,
            body=BODY,
            query="",
            headers=bench.headers,
            runtime=frontend.runtime_view,
        )
    out["invoke_us"] = _per_write(clock() - t0, count)

    # The history of a throw-away copy of the write set: the node's own is not touched.
    from charter.ledger.history import History

    write_set = tx.write_set()
    public = {n: w for n, w in write_set.items() if n.startswith("public:")}
    private = {n: w for n, w in write_set.items() if not n.startswith("public:")}
    history = History()
    secret = bytes(32)
    t0 = clock()
    for seqno in range(1, count + 1):
        history.add_transaction(
            seqno=seqno,
            view=2,
            public=public,
            private=private,
            secret=secret,
            claims_digest=ZERO_DIGEST,
        )
    out["add_transaction_us"] = _per_write(clock() - t0, count)

    # The frontend link's codec (frontends: K >= 1), per write: the request from the frontend
    # and its answer back, each built, encoded and decoded as the two ends do.
    from charter.enclave_app import frontend_link as fl

    header_lines = list(bench.headers.items())
    t0 = clock()
    for i in range(count):
        request = fl.Request(i, 1, None, "POST", PATH, "", header_lines, BODY, "127.0.0.1")
        fl.decode_link_frame(fl.encode_link_frame(request))
        answer = fl.Answer(i, 200, [("x-ms-ccf-transaction-id", "2.12345")], b"", None)
        fl.decode_link_frame(fl.encode_link_frame(answer))
    out["link_codec_us"] = _per_write(clock() - t0, count)

    signatures = max(1, count // 100)
    t0 = clock()
    for _ in range(signatures):
        node.emit_signature()
    out["signature_us"] = _per_write(clock() - t0, signatures)
    bench.turn()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=20_000, help="writes per round")
    parser.add_argument("--per-turn", type=int, default=16, help="writes per event-loop turn")
    parser.add_argument("--tick-every-turns", type=int, default=4)
    parser.add_argument("--parts", type=int, default=5_000, help="iterations of each part")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--signature-tx-count", type=int, default=100, help="signatures.tx_count (100)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.writes <= WRITES_MAX or args.per_turn < 1 or args.rounds < 1:
        parser.error("--writes, --per-turn and --rounds must be positive (writes ≤ 10^7)")
    if args.signature_tx_count < 1:
        parser.error("--signature-tx-count must be positive")
    with tempfile.TemporaryDirectory(prefix="bench-request-path-") as tmp:
        bench = Bench(
            Path(tmp), args.per_turn, max(1, args.tick_every_turns), args.signature_tx_count
        )
        from charter.enclave_app import gc_pauses

        gc_pauses.freeze_startup()  # as the enclave does once it runs
        measure_path(bench, min(args.writes, 2_000))  # warm-up: caches, allocator
        rounds: list[dict[str, float]] = []
        for _ in range(args.rounds):
            figures = measure_path(bench, args.writes)
            figures.update(measure_parts(bench, args.parts))
            rounds.append(figures)
            print(
                " ".join(f"{k}={v:.1f}" for k, v in figures.items()),
                file=sys.stderr,
                flush=True,
            )
        result: dict[str, Any] = {
            k: round(statistics.median(r[k] for r in rounds), 2) for k in rounds[0]
        }
        result["runs_request_path_us_per_write"] = [
            round(r["request_path_us_per_write"], 2) for r in rounds
        ]
        result["writes_per_round"] = args.writes
        result["per_turn"] = args.per_turn
        result["signature_tx_count"] = args.signature_tx_count
        result["frame_bytes_per_write"] = round(
            bench.frame_bytes / max(1, bench.node.metrics["writes"]), 1
        )
        result["signatures"] = bench.node.metrics["signatures"]
        # What a full collection of the garbage collector walks once the node holds what it
        # retains of every write above (the receipts' material, Raft's log).
        gc.collect()
        result["gc_tracked_objects"] = len(gc.get_objects())
        t0 = time.perf_counter()
        gc.collect()
        result["gc_full_collection_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
