"""The historical cache over a generated ledger, with a host simulated by its ledger files.

Pure: frames the cache sends are answered from the chunk files by `LedgerReader`, as
host/storage.py does, and may be altered on the way to play a host that lies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ccf.cose
import ccf.receipt
import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.enclave_app import interface as itf
from charter.enclave_app.identity import Identity
from charter.enclave_app.node import historical as hist
from charter.enclave_app.node.historical import HistoricalCache, HistoricalError
from charter.enclave_app.node.receipts import historical_receipt
from charter.ledger import certs
from charter.ledger.chunks import LedgerReader
from charter.ledger.entry import decode_entry, decrypt_private
from charter.ledger.generate import GeneratedLedger, generate_ledger

TRANSACTIONS = 1_500
# The node's in-memory window starts here: seqnos below are read back and proven by the
# signatures that follow them.
WINDOW_START = 1_000


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> GeneratedLedger:
    directory = tmp_path_factory.mktemp("ledger")
    generated = generate_ledger(
        str(directory), transactions=TRANSACTIONS, signature_interval=50, seed=3
    )
    generated.history.compact(WINDOW_START)
    return generated


class Host:
    """Answers ReadEntries from the ledger files; `alter(seqno, raw)` plays a lying host."""

    def __init__(self, ledger: GeneratedLedger) -> None:
        self.reader = LedgerReader(ledger.directory)
        self.sent: list[itf.ReadEntries] = []
        self.alter: Callable[[int, bytes], bytes] = lambda _seqno, raw: raw
        self.last_seqno = ledger.last_seqno
        self.max_in_flight = 0

    def send(self, frame: itf.Frame) -> None:
        assert isinstance(frame, itf.ReadEntries)
        self.sent.append(frame)
        self.max_in_flight = max(self.max_in_flight, len(self.sent))

    def answer_all(self, cache: HistoricalCache) -> None:
        for _ in range(10_000):
            if not self.sent:
                return
            frame = self.sent.pop(0)
            entries = []
            last = min(frame.to_seqno, self.last_seqno)
            if frame.from_seqno <= last:
                for seqno, raw in self.reader.entries(frame.from_seqno, last):
                    entries.append(self.alter(seqno, raw))
            cache.on_entries_read(itf.EntriesRead(frame.request_id, entries, frame.from_seqno))
        raise AssertionError("the cache kept asking")


def make_cache(ledger: GeneratedLedger, host: Host, **options: Any) -> HistoricalCache:
    identity = Identity(
        node_key=ledger.node_key,
        service_cert_pem=ledger.service_cert_pem,
        ledger_secrets=[(1, ledger.secret)],
    )
    return HistoricalCache(
        history=lambda: ledger.history,
        identity=lambda: identity,
        commit_seqno=lambda: ledger.last_seqno,
        send=host.send,
        **options,
    )


def fetch(cache: HistoricalCache, host: Host, lo: int, hi: int) -> list[hist.HistoricalState]:
    if cache.states_in(lo, hi) is None:
        host.answer_all(cache)
    states = cache.states_in(lo, hi)
    assert states is not None
    return states


def recorded_private(ledger: GeneratedLedger, seqno: int) -> dict[str, Any]:
    entry, _ = decode_entry(LedgerReader(ledger.directory).get(seqno))
    return decrypt_private(entry, ledger.secret)


def ccf_verify_json(doc: dict[str, Any], service_pem: str) -> None:
    lc = doc["leaf_components"]
    leaf = hashlib.sha256(
        bytes.fromhex(lc["write_set_digest"])
        + hashlib.sha256(lc["commit_evidence"].encode()).digest()
        + bytes.fromhex(lc["claims_digest"])
    ).hexdigest()
    root = ccf.receipt.root(leaf, doc["proof"])
    node_cert = x509.load_pem_x509_certificate(doc["cert"].encode())
    ccf.receipt.verify(root, doc["signature"], node_cert)
    service = x509.load_pem_x509_certificate(service_pem.encode())
    ccf.receipt.check_endorsements(node_cert, service, [])


def test_old_state_is_read_back_proven_and_decrypted(ledger: GeneratedLedger) -> None:
    host = Host(ledger)
    cache = make_cache(ledger, host)
    seqno = 321
    assert cache.state_at(seqno) is None  # fetching: the caller answers 202
    host.answer_all(cache)
    state = cache.state_at(seqno)
    assert state is not None and state.seqno == seqno
    assert state.private == recorded_private(ledger, seqno)


def test_receipt_of_an_old_transaction_verifies_with_ccf(ledger: GeneratedLedger) -> None:
    host = Host(ledger)
    cache = make_cache(ledger, host)
    seqnos = [s for s in (1, 2, 3, 77, 999) if s not in ledger.signature_seqnos]
    for seqno in seqnos:
        (state,) = fetch(cache, host, seqno, seqno)
        doc = json.loads(historical_receipt(state).body)
        ccf_verify_json(doc, ledger.service_cert_pem)
        cose_receipt = historical_receipt(state, cose=True).body
        service_key = certs.load_cert(ledger.service_cert_pem).public_key()
        ccf.cose.verify_receipt(cose_receipt, service_key, state.claims_digest)
    # A signature transaction's JSON receipt is its own signature over the root it records.
    signature_seqno = ledger.signature_seqnos[3]
    (state,) = fetch(cache, host, signature_seqno, signature_seqno)
    doc = json.loads(historical_receipt(state).body)
    assert doc["is_signature_transaction"] is True
    node_cert = x509.load_pem_x509_certificate(doc["cert"].encode())
    ccf.receipt.verify(doc["leaf"], doc["signature"], node_cert)


def test_state_inside_the_window_is_checked_against_the_nodes_tree(
    ledger: GeneratedLedger,
) -> None:
    host = Host(ledger)
    cache = make_cache(ledger, host)
    states = fetch(cache, host, 1_200, 1_210)
    assert [s.seqno for s in states] == list(range(1_200, 1_211))
    # Only the asked entries were read: the node's own tree proves them.
    assert all(s._segment is None for s in states)
    doc = json.loads(historical_receipt(states[0]).body)
    ccf_verify_json(doc, ledger.service_cert_pem)


def test_range_across_the_window_edge_comes_back_whole_and_in_order(
    ledger: GeneratedLedger,
) -> None:
    host = Host(ledger)
    cache = make_cache(ledger, host)
    states = fetch(cache, host, 900, 1_100)
    assert [s.seqno for s in states] == list(range(900, 1_101))
    for state in states[::37]:
        assert state.private == recorded_private(ledger, state.seqno)


def test_an_altered_entry_is_refused_not_answered(ledger: GeneratedLedger) -> None:
    host = Host(ledger)
    cache = make_cache(ledger, host)
    target = 400

    def flip(seqno: int, raw: bytes) -> bytes:
        if seqno != target:
            return raw
        altered = bytearray(raw)
        altered[-20] ^= 0x01
        return bytes(altered)

    host.alter = flip
    assert cache.state_at(target) is None
    host.answer_all(cache)
    with pytest.raises(HistoricalError) as raised:
        cache.state_at(target)
    assert raised.value.code == "HistoricalVerificationFailed"
    assert f"seqno {target}" in raised.value.message


def test_an_altered_entry_in_the_window_is_refused(ledger: GeneratedLedger) -> None:
    host = Host(ledger)
    cache = make_cache(ledger, host)
    host.alter = lambda seqno, raw: raw[:-1] + bytes([raw[-1] ^ 1]) if seqno == 1_300 else raw
    assert cache.states_in(1_299, 1_301) is None
    host.answer_all(cache)
    with pytest.raises(HistoricalError) as raised:
        cache.states_in(1_299, 1_301)
    assert raised.value.code == "HistoricalVerificationFailed"


def test_entries_missing_from_disk_say_why(ledger: GeneratedLedger) -> None:
    host = Host(ledger)
    cache = make_cache(ledger, host)
    host.last_seqno = 0  # a host that has none of the ledger files
    assert cache.state_at(10) is None
    host.answer_all(cache)
    with pytest.raises(HistoricalError) as raised:
        cache.state_at(10)
    assert raised.value.code == "HistoricalStateNotAvailable"
    assert "missing" in raised.value.message


def test_cache_stays_under_its_soft_limit_and_bigger_requests_still_complete(
    ledger: GeneratedLedger,
) -> None:
    host = Host(ledger)
    limit = 64 * 1024
    cache = make_cache(ledger, host, soft_limit_bytes=limit)
    for lo in range(1, 900, 50):
        fetch(cache, host, lo, lo + 9)
        assert cache.cached_bytes <= limit
    assert cache.metrics["evicted"] > 0
    # 600 states are more than the limit holds: answered all the same, then not cached.
    states = fetch(cache, host, 100, 699)
    assert [s.seqno for s in states] == list(range(100, 700))
    assert cache.cached_bytes <= limit


def test_reads_in_flight_are_bounded(ledger: GeneratedLedger) -> None:
    host = Host(ledger)
    cache = make_cache(ledger, host)
    for lo in range(1, 400, 10):
        assert cache.states_in(lo, lo + 5) is None
    assert len(host.sent) == hist.FETCHES_OUTSTANDING_MAX
    host.answer_all(cache)
    assert host.max_in_flight <= hist.FETCHES_OUTSTANDING_MAX
    for lo in range(1, 400, 10):
        assert cache.states_in(lo, lo + 5) is not None


def test_uncommitted_seqnos_are_not_served(ledger: GeneratedLedger) -> None:
    host = Host(ledger)
    cache = make_cache(ledger, host)
    with pytest.raises(HistoricalError) as raised:
        cache.state_at(ledger.last_seqno + 1)
    assert raised.value.code == "TransactionNotFound"


def test_a_range_partly_cached_reads_back_only_what_is_missing(ledger: GeneratedLedger) -> None:
    host = Host(ledger)
    cache = make_cache(ledger, host)
    fetch(cache, host, 1_100, 1_199)
    before = cache.metrics["fetched_entries"]
    states = fetch(cache, host, 1_150, 1_249)
    assert [s.seqno for s in states] == list(range(1_150, 1_250))
    assert cache.metrics["fetched_entries"] - before == 50


def test_a_read_the_host_never_answers_fails_and_frees_its_slot(ledger: GeneratedLedger) -> None:
    host = Host(ledger)
    cache = make_cache(ledger, host)
    cache.tick(1_000)
    for lo in range(1, 1 + 10 * (hist.FETCHES_OUTSTANDING_MAX + 1), 10):
        assert cache.states_in(lo, lo + 1) is None
    host.sent.clear()  # the host drops every read in flight
    cache.tick(1_000 + hist.READ_TIMEOUT_MS + 1)
    with pytest.raises(HistoricalError) as raised:
        cache.states_in(1, 2)
    assert raised.value.code == "HistoricalStateNotAvailable"
    assert "did not answer" in raised.value.message
    # The queued request got a slot; asked again, the failed one is read again.
    host.answer_all(cache)
    last = 1 + 10 * hist.FETCHES_OUTSTANDING_MAX
    assert cache.states_in(last, last + 1) is not None
    assert fetch(cache, host, 1, 2)[0].seqno == 1


def test_a_ledger_that_starts_later_says_so(ledger: GeneratedLedger) -> None:
    """As the host of a node that joined from a snapshot answers: the entries it has."""
    host = Host(ledger)
    cache = make_cache(ledger, host)
    assert cache.state_at(10) is None
    frame = host.sent.pop()
    later = [raw for _, raw in host.reader.entries(600, 610)]
    cache.on_entries_read(itf.EntriesRead(frame.request_id, later, frame.from_seqno))
    with pytest.raises(HistoricalError) as raised:
        cache.state_at(10)
    assert raised.value.code == "HistoricalStateNotAvailable"
    assert "10..599" in raised.value.message


def test_a_cached_state_the_nodes_tree_no_longer_holds_is_proven_again(tmp_path: Path) -> None:
    fresh = generate_ledger(str(tmp_path), transactions=400, signature_interval=50, seed=5)
    host = Host(fresh)
    cache = make_cache(fresh, host)
    (state,) = fetch(cache, host, 120, 120)
    assert state._segment is None and state.receipt_material() is not None
    fresh.history.compact(300)  # the node's window moved on
    assert state.receipt_material() is None
    (again,) = fetch(cache, host, 120, 120)
    assert again._segment is not None and again.receipt_material() is not None
    ccf_verify_json(json.loads(historical_receipt(again).body), fresh.service_cert_pem)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_host_answering_with_garbage_cut_or_other_entries_gets_an_error_never_a_wrong_state(
    ledger: GeneratedLedger, data: st.DataObject
) -> None:
    """Each answer the host gives may be altered: a flipped bit, a cut entry, another seqno's
    entry, random bytes, a wrong first seqno, entries dropped or appended. The cache then
    raises HistoricalError or returns exactly the recorded states; nothing else escapes."""
    reader = LedgerReader(ledger.directory)
    lo = data.draw(st.integers(1, ledger.last_seqno - 5), label="lo")
    hi = lo + data.draw(st.integers(0, 4), label="width")
    host = Host(ledger)
    cache = make_cache(ledger, host)
    assert cache.states_in(lo, hi) is None
    for _ in range(50):
        if not host.sent:
            break
        frame = host.sent.pop(0)
        last = min(frame.to_seqno, ledger.last_seqno)
        entries = [raw for _, raw in reader.entries(frame.from_seqno, last)]
        first = frame.from_seqno
        how = data.draw(st.integers(0, 7), label="how")
        if entries:
            i = data.draw(st.integers(0, len(entries) - 1), label="which")
            if how == 0:
                flipped = bytearray(entries[i])
                flipped[data.draw(st.integers(0, len(flipped) - 1))] ^= 1 << data.draw(
                    st.integers(0, 7)
                )
                entries[i] = bytes(flipped)
            elif how == 1:
                entries[i] = entries[i][: data.draw(st.integers(0, len(entries[i]) - 1))]
            elif how == 2:
                entries[i] = reader.get(data.draw(st.integers(1, ledger.last_seqno)))
            elif how == 3:
                entries[i] = data.draw(st.binary(max_size=200))
            elif how == 4:
                first = data.draw(st.integers(-5, ledger.last_seqno + 5))
            elif how == 5:
                entries = entries[:i]
            elif how == 6:
                entries.append(data.draw(st.binary(max_size=50)))
        cache.on_entries_read(itf.EntriesRead(frame.request_id, entries, first))
    try:
        states = cache.states_in(lo, hi)
    except HistoricalError:
        return
    if states is None:
        return  # still asking (a shortened answer): never an answer yet
    assert [s.seqno for s in states] == list(range(lo, hi + 1))
    for state in states:
        entry, _ = decode_entry(reader.get(state.seqno))
        assert state.public == entry.public
        assert state.private == decrypt_private(entry, ledger.secret)
