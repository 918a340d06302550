"""A backup's forwarded requests are matched to their answers by forward id: a late answer to
a request sent before the backup restarted must never be taken as the answer to one sent
since (it would tell a client "200, committed at txid T" for someone else's write). The node
simulator's seed 2264 showed a committed-looking write that was never written this way."""

from __future__ import annotations

import collections
from types import SimpleNamespace

from charter.enclave_app.channels import Channels
from charter.enclave_app.node import messages
from charter.enclave_app.node.peers import Peers
from charter.ledger import certs


def test_a_late_answer_from_before_a_restart_never_answers_a_request_sent_since() -> None:
    primary_key, backup_key = certs.new_key(), certs.new_key()
    primary_id = certs.node_id(primary_key.public_key())
    backup_id = certs.node_id(backup_key.public_key())
    primary = Channels(primary_key, epoch=1)
    primary.know(backup_key.public_key())

    def backup(epoch: int) -> Peers:
        channels = Channels(backup_key, epoch=epoch)
        channels.know(primary_key.public_key())
        peers = Peers(
            SimpleNamespace(outbox=[], metrics=collections.Counter(), last_tick_ms=None), channels
        )  # type: ignore[arg-type]
        peers.addresses[primary_id] = "127.0.0.1:1"
        return peers

    def answer(forward_id: int, body: bytes) -> bytes:
        frame = messages.ForwardAnswer(forward_id, 200, (), "application/json", body)
        return primary.seal(backup_id, messages.encode(frame))

    before = backup(epoch=1)
    old = before.forward(primary_id, "POST", "/app/log", "", {}, b"{}", None)
    late = answer(old.forward_id, b"old")  # type: ignore[union-attr]

    after = backup(epoch=2)  # restarted: a new channel epoch, a fresh forward table
    new = after.forward(primary_id, "POST", "/app/log", "", {}, b"{}", None)
    assert new.forward_id != old.forward_id  # type: ignore[union-attr]
    assert after.open(late) is None  # refused: not a request this incarnation sent
    opened = after.open(answer(new.forward_id, b"new"))  # type: ignore[union-attr]
    assert opened is not None and opened[1].body == b"new"  # type: ignore[union-attr]


def test_forward_ids_stay_valid_wire_ids_at_the_largest_epoch() -> None:
    key = certs.new_key()
    peers = Peers(
        SimpleNamespace(outbox=[], metrics=collections.Counter(), last_tick_ms=None),
        Channels(key, epoch=2**32 - 1),
    )  # type: ignore[arg-type]
    first = peers.forward("0" * 64, "POST", "/app/x", "", {}, b"", None)
    assert 0 < first.forward_id < 2**63  # type: ignore[union-attr]
