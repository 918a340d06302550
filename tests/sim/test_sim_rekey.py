"""Ledger rekey across an in-process network (the seeded whole-node simulator, no faults):
the primary's new secret reaches every backup through the replicated ledger, restarted and
joining nodes keep every secret, and the whole ledger reads back with the right secret per
seqno."""

from __future__ import annotations

from node_sim import Simulation, Slot

from charter.ledger.entry import decode_entry, decrypt_private
from charter.ledger.history import History

REKEY = [{"name": "trigger_ledger_rekey", "args": {}}]


def _secrets(slot: Slot) -> list[tuple[int, bytes]]:
    assert slot.node is not None and slot.node.identity is not None
    return list(slot.node.identity.ledger_secrets)


def _write_some(sim: Simulation, count: int) -> None:
    for _ in range(count):
        sim.client_write()
        sim.step()
    sim.settle_until(
        lambda: (sim.poll_writes(), all(w.committed for w in sim.writes))[1],
        10_000,
        "writes did not commit",
    )


def _rekey(sim: Simulation) -> None:
    sim.propose("rekey", REKEY)
    sim.settle_until(lambda: not sim.gov, 10_000, f"rekey stuck: {sim.last_gov_error!r}")
    sim.settle(500)


def _network(seed: int, test_name: str) -> Simulation:
    sim = Simulation(seed, test_name=test_name, nodes=3)
    sim.start_network()
    sim.add_node()
    sim.add_node()
    sim.settle_until(lambda: all(s.joined for s in sim.slots), 15_000, "joins did not finish")
    return sim


def _ledger_reads_back(slot: Slot, secrets: list[tuple[int, bytes]]) -> set[int]:
    """Every entry on `slot`'s disk checks (GCM tag, commit evidence) with the secret that
    applies to its seqno; returns the starts of the secrets that decrypted private writes."""
    history = History()
    used = set()
    for seqno in range(1, slot.disk.last_seqno + 1):
        raw = slot.disk.entry(seqno)
        assert raw is not None
        start, secret = [(a, s) for a, s in secrets if a <= seqno][-1]
        history.append_raw(raw, secret=secret)
        entry, _ = decode_entry(raw)
        if entry.private_ciphertext and "records" in decrypt_private(entry, secret):
            used.add(start)
    return used


def test_a_rekey_on_the_primary_reaches_every_backup_through_the_ledger() -> None:
    sim = _network(7, "test_a_rekey_on_the_primary_reaches_every_backup_through_the_ledger")
    try:
        _write_some(sim, 5)
        _rekey(sim)
        _write_some(sim, 5)
        _rekey(sim)
        _write_some(sim, 5)
        secrets = [_secrets(s) for s in sim.slots]
        assert len(secrets[0]) == 3, secrets[0]
        assert all(s == secrets[0] for s in secrets), "nodes hold different ledger secrets"
        starts = [start for start, _ in secrets[0]]
        assert starts[0] == 1 and starts == sorted(set(starts))
        assert len({k for _, k in secrets[0]}) == 3, "a rekey reused a secret"
        for slot in sim.slots:
            assert _ledger_reads_back(slot, secrets[0]) == set(starts)
        # What was written under each secret reads back through the service.
        sim.heal_and_converge()
    finally:
        sim.close()


def test_a_restarted_node_and_a_node_joining_after_a_rekey_keep_every_secret() -> None:
    sim = _network(11, "test_a_restarted_node_and_a_node_joining_after_a_rekey_keep_every_secret")
    try:
        _write_some(sim, 3)
        _rekey(sim)
        _write_some(sim, 3)
        backup = next(s for s in sim.slots if s is not sim.primary())
        before = _secrets(backup)
        assert len(before) == 2
        sim.crash(backup)
        _rekey(sim)  # happens while the backup is down: it learns it from the ledger
        _write_some(sim, 3)
        sim.restart(backup)
        sim.settle(2_000)
        late = sim.add_node()
        sim.settle_until(lambda: late.joined, 15_000, "the late joiner did not join")
        _write_some(sim, 3)
        expected = _secrets(sim.primary())  # type: ignore[arg-type]
        assert len(expected) == 3
        assert _secrets(backup) == expected
        assert _secrets(late) == expected
        assert _ledger_reads_back(backup, expected) == {start for start, _ in expected}
        sim.heal_and_converge()
    finally:
        sim.close()
