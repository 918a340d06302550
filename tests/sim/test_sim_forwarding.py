"""A write forwarded by a backup goes back to that backup at once: the backup answers its
client only once it has applied the write itself, and the primary would otherwise hold the
entry until its next signature (`RaftConfig.hold_until_signature`)."""

from __future__ import annotations

import json
from typing import Any

from node_sim import Simulation

from charter.enclave_app.http_server import HttpResponse


def test_a_write_a_backup_forwarded_is_replicated_without_waiting_for_a_signature() -> None:
    sim = Simulation(
        5, test_name="test_a_write_a_backup_forwarded_is_replicated_without_waiting_for_a_signature"
    )
    sim.sig_tx = 100  # no signature falls due by count during the test
    try:
        sim.start_network()
        sim.add_node()
        sim.settle_until(lambda: all(s.joined for s in sim.slots), 15_000, "no join")
        sim.settle_until(lambda: sim.primary() is not None, 5_000, "no primary")
        primary = sim.primary()
        assert primary is not None and primary.node is not None
        backup = next(s for s in sim.serving() if s is not primary)
        node = primary.node
        raft = node.raft
        assert raft is not None and backup.node is not None

        def backup_caught_up() -> bool:
            assert backup.node is not None and backup.node.raft is not None and raft is not None
            return backup.node.raft.commit_index == raft.last_index

        sim.settle_until(backup_caught_up, 5_000, "the backup did not catch up")
        held_after: list[int] = []
        serve = node._serve_forwarded

        def serve_and_look(*args: Any) -> None:
            serve(*args)
            held_after.append(raft.held_count)

        node._serve_forwarded = serve_and_look  # type: ignore[method-assign]
        # A write on the primary itself is held until its signature...
        answers: list[HttpResponse] = []
        body = json.dumps({"id": 1, "msg": "on the primary"}).encode()
        sim.request(primary, "POST", "/app/log/private", body, peer_der=sim.user.der,
                    on_answer=answers.append)  # fmt: skip
        assert answers[0].status == 200 and raft.held_count == 1
        # ...a forwarded one is not, and takes what was held with it.
        body = json.dumps({"id": 2, "msg": "through a backup"}).encode()
        sim.request(backup, "POST", "/app/log/private", body, peer_der=sim.user.der,
                    on_answer=answers.append)  # fmt: skip
        sim.settle_until(lambda: len(answers) == 2, 2_000, "the forwarded write was not answered")
        assert answers[1].status == 200, answers[1]
        assert held_after == [0]
    finally:
        sim.close()
