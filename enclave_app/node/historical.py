"""Historical state: committed transactions read back from the host's ledger files, checked.

CCF's historical queries, in Charter's sans-IO style. A handler (or the receipts code) asks
for the state at a seqno, or for a range of seqnos; what is cached is answered at once, the
rest is fetched from the host with `ReadEntries` frames (request ids of their own, at most
`FETCHES_OUTSTANDING_MAX` reads in flight, `READ_ENTRIES_MAX` entries each) and the caller
answers `202 Accepted` + `Retry-After` meanwhile. Nothing the host returns is used unchecked:

- a seqno the node's in-memory Merkle tree still holds is checked against that tree's leaf;
- an older one is checked against the next signature transaction after it: the host's
  entries are read on up to that signature, whose root must be signed by the service key
  (COSE, the service certificate this node trusts) and by the node certificate it names,
  and whose Merkle tree table (leaves from the previous signature on, merklecpp format) must
  have that root and hold each entry's leaf. The same tree proves each entry for its receipt.

An entry that fails a check fails the whole request with `HistoricalVerificationFailed`:
never a wrong answer. Entries that are not on disk fail it with a reason
(`HistoricalStateNotAvailable`). Private domains are decrypted with the ledger secret in
force at that seqno (`Identity.secret_for`), so rekeys keep working.

Memory: states are cached up to a soft byte limit (`historical_cache_soft_limit`), least
recently used first out. A completed request keeps its states until the caller collects
them (or `REQUEST_TTL_MS` passes), so a request larger than the cache still completes: its
states are held only while it is being answered.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from charter.enclave_app import interface as itf
from charter.enclave_app.identity import Identity
from charter.enclave_app.kv import Codec
from charter.ledger.entry import (
    Entry,
    WriteSet,
    commit_evidence,
    commit_evidence_digest,
    decode_entry,
    decrypt_private,
    leaf_hash,
    write_set_digest,
)
from charter.ledger.errors import LedgerError
from charter.ledger.history import History, SignatureRecord
from charter.ledger.merkle import InclusionProof, MerkleTree
from charter.ledger.signatures import (
    COSE_SIGNATURES_TABLE,
    SIGNATURES_TABLE,
    SINGLETON_KEY,
    TREE_TABLE,
    parse_cose_signature,
    parse_signature,
    verify_cose_root_signature,
    verify_root,
)

LOG = logging.getLogger(__name__)

# Request ids of historical reads: apart from the runtime's (counted from 1) and
# replication's (from 1 << 48), so `Node.on_entries_read` knows whose answer it is.
REQUEST_ID_BASE = 1 << 40
REQUEST_ID_SPAN = 1 << 40
# Reads in flight to the host at once, over all requests (one per fetch).
FETCHES_OUTSTANDING_MAX = 4
# Requests waiting for a fetch slot; more answer 503-like "busy" (the caller retries).
FETCHES_QUEUED_MAX = 256
# Requests held at once (waiting, fetching, or done and not yet collected): each holds its
# states until collected, so this bounds what callers that never come back can pin.
REQUESTS_MAX = 1_024
# Entries asked for in one ReadEntries: bounds the bytes one answer brings in.
READ_ENTRIES_MAX = 256
# The widest range one request may ask for (a handler pages wider queries).
RANGE_SEQNOS_MAX = 100_000
# How far past the asked range a fetch reads to find the signature that proves it.
SIGNATURE_SEARCH_SEQNOS_MAX = 100_000
# A read the host has not answered within this time fails its request (asked again, it is
# read again): a host that drops a read must not hold a fetch slot for ever.
READ_TIMEOUT_MS = 30_000
SWEEP_INTERVAL_MS = 1_000
# A completed request not collected within this time is dropped (its caller went away).
REQUEST_TTL_MS = 30_000
# What a cached state costs beyond its entry bytes (objects, dicts, its share of the proof
# tree), for the byte limit: tracemalloc measured ~1.9 KB per state of a ~300-byte entry.
STATE_OVERHEAD_BYTES = 1600
DEFAULT_CACHE_SOFT_LIMIT_BYTES = 512 * 1024 * 1024
# Signature transactions whose checks are remembered (each ~2 KB with its entry bytes).
VERIFIED_SIGNATURES_MAX = 1_024


class HistoricalError(Exception):
    """A historical request that cannot be answered; `code` is the HTTP error code."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _not_available(message: str) -> HistoricalError:
    return HistoricalError(message, code="HistoricalStateNotAvailable")


def _invalid(message: str) -> HistoricalError:
    return HistoricalError(message, code="HistoricalVerificationFailed")


@dataclass(frozen=True, slots=True)
class _Segment:
    """The proof of a run of old entries: a signature and the Merkle tree it signed."""

    tree: MerkleTree
    signature: SignatureRecord


K = TypeVar("K")
V = TypeVar("V")


class HistoricalView(Generic[K, V]):
    """Typed, read-only access to what one historical transaction wrote to one map."""

    __slots__ = ("_key_codec", "_records", "_value_codec")

    def __init__(
        self, records: Mapping[bytes, bytes | None], key_codec: Codec[K], value_codec: Codec[V]
    ) -> None:
        self._records = records
        self._key_codec = key_codec
        self._value_codec = value_codec

    def get(self, key: K) -> V | None:
        """The value written to `key` by this transaction (None: not written, or removed)."""
        raw = self._records.get(self._key_codec.encode(key))
        return None if raw is None else self._value_codec.decode(raw)

    def wrote(self, key: K) -> bool:
        """Whether this transaction wrote or removed `key`."""
        return self._key_codec.encode(key) in self._records

    def items(self) -> Iterator[tuple[K, V | None]]:
        for key, raw in sorted(self._records.items()):
            yield (
                self._key_codec.decode(key),
                None if raw is None else self._value_codec.decode(raw),
            )


@dataclass(frozen=True, slots=True)
class HistoricalState:
    """One committed transaction as recorded: its writes (private ones decrypted) and what
    its receipt needs. `public`/`private` hold only this transaction's writes (`None` =
    removal), as CCF's historical store does."""

    seqno: int
    tx_view: int  # the view (Raft term) of the transaction: its id is tx_view.seqno
    public: WriteSet
    private: WriteSet
    write_set_digest: bytes
    commit_evidence: str
    claims_digest: bytes
    # The signature this entry itself carries, when it is a signature transaction.
    own_signature: SignatureRecord | None
    size_bytes: int
    _segment: _Segment | None
    _history: History | None

    def get(self, map_name: str, key: bytes) -> bytes | None:
        """The value this transaction wrote to `key` of `map_name` (None: not written or
        removed; see `wrote`)."""
        tables = self.public if map_name.startswith("public:") else self.private
        return tables.get(map_name, {}).get(key)

    def wrote(self, map_name: str, key: bytes) -> bool:
        tables = self.public if map_name.startswith("public:") else self.private
        return key in tables.get(map_name, {})

    def writes(self, map_name: str) -> Mapping[bytes, bytes | None]:
        tables = self.public if map_name.startswith("public:") else self.private
        return tables.get(map_name, {})

    def view(
        self, map_name: str, key_codec: Codec[K], value_codec: Codec[V]
    ) -> HistoricalView[K, V]:
        return HistoricalView(self.writes(map_name), key_codec, value_codec)

    @property
    def txid(self) -> str:
        return f"{self.tx_view}.{self.seqno}"

    def receipt_material(self) -> tuple[InclusionProof, SignatureRecord] | None:
        """(inclusion proof, signature) proving this entry; None if the node's own history
        has no signature after it yet (never for a committed seqno)."""
        if self._segment is not None:
            segment = self._segment
            return segment.tree.inclusion_proof(self.seqno, segment.signature.seqno), (
                segment.signature
            )
        assert self._history is not None
        if self.seqno < self._history.tree.min_index:
            return None  # compacted meanwhile: the caller asks again, and it is refetched
        return self._history.receipt_material(self.seqno)


@dataclass(slots=True)
class _Request:
    """What one caller asked for: seqnos lo..hi; its states once they are all here."""

    lo: int
    hi: int
    touched_ms: int
    states: list[HistoricalState] | None = None
    error: HistoricalError | None = None
    # States of lo.. that were cached when asked (held here, so eviction cannot lose them).
    prefix: list[HistoricalState] = field(default_factory=list)
    fetching: bool = False


@dataclass(slots=True)
class _Fetch:
    """Reading lo..hi back from the host, in order, one read at a time."""

    request: _Request
    cursor: int
    # Old entries read but not yet proven: waiting for the next signature transaction.
    unproven: list[tuple[int, bytes, Entry]] = field(default_factory=list)
    accepted: list[HistoricalState] = field(default_factory=list)
    request_id: int | None = None
    sent_ms: int = 0


class HistoricalCache:
    """The node's historical state cache and fetcher (no I/O: frames go to `send`)."""

    def __init__(
        self,
        *,
        history: Callable[[], History],
        identity: Callable[[], Identity | None],
        commit_seqno: Callable[[], int],
        send: Callable[[itf.Frame], None],
        soft_limit_bytes: int = DEFAULT_CACHE_SOFT_LIMIT_BYTES,
        signing_service_cert: Callable[[int], str | None] | None = None,
    ) -> None:
        assert soft_limit_bytes > 0
        # After recoveries: the certificate of the earlier service whose key signed at a
        # seqno (None: the current service's); see `Node.signing_service_cert`.
        self._signing_service_cert = signing_service_cert or (lambda seqno: None)
        self._history = history
        self._identity = identity
        self._commit_seqno = commit_seqno
        self._send = send
        self.soft_limit_bytes = soft_limit_bytes
        self._cache: OrderedDict[int, HistoricalState] = OrderedDict()
        self.cached_bytes = 0
        self._requests: dict[tuple[int, int], _Request] = {}
        self._queue: list[_Fetch] = []
        self._in_flight: dict[int, _Fetch] = {}
        self._next_request_id = 0
        # Signature entries already checked (bytes and record): one ECDSA pair each.
        self._verified: dict[int, tuple[bytes, SignatureRecord]] = {}
        self.now_ms = 0
        self._swept_ms = 0
        self.metrics = {"fetched_entries": 0, "evicted": 0, "failed": 0}

    # ------------------------------------------------------------------ asking
    def state_at(self, seqno: int) -> HistoricalState | None:
        """The state at a committed `seqno`, or None while it is being fetched (ask again).
        Raises HistoricalError when it cannot be had."""
        states = self.states_in(seqno, seqno)
        return None if states is None else states[0]

    def states_in(self, lo: int, hi: int) -> list[HistoricalState] | None:
        """The states of committed seqnos lo..hi in order, or None while fetching."""
        if not 1 <= lo <= hi:
            raise HistoricalError(f"bad range {lo}..{hi}", code="InvalidInput")
        if hi - lo + 1 > RANGE_SEQNOS_MAX:
            raise HistoricalError(
                f"a range holds at most {RANGE_SEQNOS_MAX} seqnos", code="InvalidInput"
            )
        commit = self._commit_seqno()
        if hi > commit:
            raise HistoricalError(
                f"seqno {hi} is not committed (commit seqno {commit})", code="TransactionNotFound"
            )
        request = self._requests.get((lo, hi))
        if request is not None:
            request.touched_ms = self.now_ms
            if request.error is not None:
                del self._requests[(lo, hi)]
                raise request.error
            if request.states is not None:
                del self._requests[(lo, hi)]
                return request.states
            return None
        cached = self._cached_prefix(lo, hi)
        if len(cached) == hi - lo + 1:
            return cached
        if len(self._queue) >= FETCHES_QUEUED_MAX or len(self._requests) >= REQUESTS_MAX:
            raise HistoricalError(
                "too many historical requests in progress", code="TooManyRequests"
            )
        # What the cache holds from lo on is kept by the request; the rest is read back.
        request = _Request(lo, hi, self.now_ms, prefix=cached, fetching=True)
        self._requests[(lo, hi)] = request
        self._queue.append(_Fetch(request, cursor=lo + len(cached)))
        self._start_fetches()
        return None

    def _cached_prefix(self, lo: int, hi: int) -> list[HistoricalState]:
        """The cached states of lo, lo + 1, ... up to the first one not cached (or proven
        by the node's tree below what that tree still holds: read again, proven by its
        signature, so that its receipt can be built)."""
        cache = self._cache
        min_index = self._history().tree.min_index
        states = []
        for seqno in range(lo, hi + 1):
            state = cache.get(seqno)
            if state is None or (state._segment is None and seqno < min_index):
                break
            cache.move_to_end(seqno)
            states.append(state)
        return states

    # ------------------------------------------------------------------ time
    def tick(self, now_ms: int) -> None:
        """Drop completed requests nobody collected (their callers went away) and fail reads
        the host did not answer; swept once a second."""
        self.now_ms = now_ms
        if now_ms - self._swept_ms < SWEEP_INTERVAL_MS:
            return
        self._swept_ms = now_ms
        stale = [
            key
            for key, request in self._requests.items()
            if not request.fetching and now_ms - request.touched_ms > REQUEST_TTL_MS
        ]
        for key in stale:
            del self._requests[key]
        # A read the host never answers must not hold its slot for ever.
        lost = [
            (request_id, fetch)
            for request_id, fetch in self._in_flight.items()
            if now_ms - fetch.sent_ms > READ_TIMEOUT_MS
        ]
        for request_id, fetch in lost:
            del self._in_flight[request_id]
            self._fail(
                fetch,
                _not_available(
                    f"the host did not answer a read of the ledger from seqno {fetch.cursor} "
                    f"within {READ_TIMEOUT_MS} ms"
                ),
            )
        if lost:
            self._start_fetches()

    # ------------------------------------------------------------------ fetching
    def owns(self, request_id: int) -> bool:
        return REQUEST_ID_BASE <= request_id < REQUEST_ID_BASE + REQUEST_ID_SPAN

    def _start_fetches(self) -> None:
        while self._queue and len(self._in_flight) < FETCHES_OUTSTANDING_MAX:
            self._read_next(self._queue.pop(0))

    def _read_next(self, fetch: _Fetch) -> None:
        self._next_request_id = (self._next_request_id + 1) % REQUEST_ID_SPAN
        request_id = REQUEST_ID_BASE + self._next_request_id
        fetch.request_id = request_id
        fetch.sent_ms = self.now_ms
        self._in_flight[request_id] = fetch
        last = fetch.cursor + READ_ENTRIES_MAX - 1
        if not fetch.unproven:
            last = min(last, fetch.request.hi)
        self._send(itf.ReadEntries(request_id, fetch.cursor, last))

    def on_entries_read(self, frame: itf.EntriesRead) -> None:
        """The host's answer to one of this cache's reads (`owns(frame.request_id)`)."""
        fetch = self._in_flight.pop(frame.request_id, None)
        if fetch is None:
            return  # an answer to a read given up on
        try:
            done = self._take(fetch, frame)
        except HistoricalError as error:
            self._fail(fetch, error)
            done = True
        if done:
            if fetch.request.error is None:
                self._complete(fetch)
        else:
            self._read_next(fetch)
        self._start_fetches()

    def _fail(self, fetch: _Fetch, error: HistoricalError) -> None:
        self.metrics["failed"] += 1
        LOG.warning(
            "event=historical_fetch_failed lo=%d hi=%d code=%s reason=%s",
            fetch.request.lo,
            fetch.request.hi,
            error.code,
            error.message,
        )
        fetch.request.error = error
        fetch.request.fetching = False
        fetch.request.prefix = []
        fetch.request.touched_ms = self.now_ms

    def _take(self, fetch: _Fetch, frame: itf.EntriesRead) -> bool:
        """Check and keep what the host read; True once the fetch has everything."""
        if frame.first_seqno != fetch.cursor or not frame.entries:
            raise _not_available(
                f"the host has no ledger entries from seqno {fetch.cursor} on: its ledger "
                "files for them are missing (deleted, not in its ledger directories, or "
                "before the snapshot this node joined from)"
            )
        identity = self._identity()
        if identity is None or not identity.ledger_secrets:
            raise _not_available("this node holds no ledger secrets yet")
        history = self._history()
        request = fetch.request
        for raw in frame.entries:
            seqno = fetch.cursor
            try:
                entry, end = decode_entry(raw)
            except LedgerError as exc:
                raise _invalid(
                    f"the ledger entry at seqno {seqno} does not decode: {exc}"
                ) from None
            if raw is frame.entries[0] and entry.seqno > seqno and end == len(raw):
                # Its ledger starts later: e.g. a node that joined from a snapshot and was
                # given no archive of the ledger before it.
                raise _not_available(
                    f"the host's ledger holds no entries for seqnos {seqno}..{entry.seqno - 1} "
                    "(this node's ledger files start later, e.g. it joined from a snapshot)"
                )
            if end != len(raw) or entry.seqno != seqno or entry.public_seqno != seqno:
                raise _invalid(f"the host returned another entry for seqno {seqno}")
            fetch.cursor += 1
            self.metrics["fetched_entries"] += 1
            tree = history.tree
            if not fetch.unproven and tree.min_index <= seqno < tree.size:
                # Held by the node's own tree: the leaf must be the one it holds.
                leaf = self._leaf(entry, raw)
                if leaf != tree.leaf(seqno):
                    raise _invalid(
                        f"the ledger entry at seqno {seqno} is not the one this node "
                        "committed (its digest is not the Merkle tree's leaf)"
                    )
                if seqno <= request.hi:
                    fetch.accepted.append(
                        self._state(entry, raw, identity, segment=None, history=history)
                    )
            else:
                if self._signature_in(entry) is not None and fetch.unproven:
                    segment = self._prove(fetch.unproven, entry, raw, identity)
                    for useqno, uraw, uentry in fetch.unproven:
                        if useqno <= request.hi:
                            fetch.accepted.append(
                                self._state(uentry, uraw, identity, segment=segment, history=None)
                            )
                    fetch.unproven = []
                if seqno <= request.hi:
                    fetch.unproven.append((seqno, raw, entry))
                elif not fetch.unproven:
                    return True
                elif seqno - request.hi > SIGNATURE_SEARCH_SEQNOS_MAX:
                    raise _invalid(f"no signature transaction within {seqno - request.hi} seqnos")
            if fetch.cursor > request.hi and not fetch.unproven:
                return True
        if fetch.cursor > self._commit_seqno() and fetch.unproven:
            raise _not_available(f"no committed signature proves seqnos from {request.lo}")
        return False

    @staticmethod
    def _leaf(entry: Entry, raw: bytes) -> bytes:
        if entry.commit_evidence_digest is None or entry.claims_digest is None:
            raise _invalid(f"the ledger entry at seqno {entry.seqno} has no leaf (type)")
        return leaf_hash(write_set_digest(raw), entry.commit_evidence_digest, entry.claims_digest)

    @staticmethod
    def _signature_in(entry: Entry) -> bytes | None:
        table = entry.public.get(SIGNATURES_TABLE)
        return None if not table else table.get(SINGLETON_KEY)

    def _signature_record(self, entry: Entry, identity: Identity) -> SignatureRecord:
        """The signature this entry carries, checked: signed by the service key this node
        trusts (COSE) and by the node certificate it names. Checked once per entry bytes."""
        value = self._signature_in(entry)
        known = self._verified.get(entry.seqno)
        if known is not None and known[0] == entry.raw:
            return known[1]
        record = self._check_signature(entry, identity, value)
        self._verified[entry.seqno] = (entry.raw, record)
        while len(self._verified) > VERIFIED_SIGNATURES_MAX:
            del self._verified[next(iter(self._verified))]
        return record

    def _check_signature(
        self, entry: Entry, identity: Identity, value: bytes | None
    ) -> SignatureRecord:
        cose_value = entry.public.get(COSE_SIGNATURES_TABLE, {}).get(SINGLETON_KEY)
        seqno = entry.seqno
        if value is None or cose_value is None:
            raise _invalid(f"the signature transaction at seqno {seqno} lacks its signatures")
        try:
            sig = parse_signature(value)
            cose = parse_cose_signature(cose_value)
            if (sig.seqno, sig.view) != (seqno, entry.view):
                raise _invalid(f"the signature at seqno {seqno} names another transaction")
            service_cert = self._signing_service_cert(seqno) or identity.service_cert_pem
            verify_cose_root_signature(cose, service_cert, sig.root)
            if sig.cert_pem:
                verify_root(sig.cert_pem, sig.root, sig.sig)
        except (LedgerError, ValueError) as exc:
            raise _invalid(
                f"the signature transaction at seqno {seqno} does not verify against the "
                f"service certificate: {exc}"
            ) from None
        return SignatureRecord(
            seqno, entry.view, sig.node_id, sig.cert_pem, sig.root, sig.sig, cose
        )

    def _prove(
        self,
        unproven: list[tuple[int, bytes, Entry]],
        entry: Entry,
        raw: bytes,
        identity: Identity,
    ) -> _Segment:
        """Check old entries against the signature transaction `entry` that follows them."""
        signature = self._signature_record(entry, identity)
        tree_bytes = entry.public.get(TREE_TABLE, {}).get(SINGLETON_KEY)
        if tree_bytes is None:
            raise _invalid(f"the signature transaction at seqno {entry.seqno} has no tree")
        try:
            tree = MerkleTree.deserialise(tree_bytes)
        except LedgerError as exc:
            raise _invalid(
                f"the Merkle tree at seqno {entry.seqno} does not decode: {exc}"
            ) from None
        if tree.size != entry.seqno or tree.root() != signature.root:
            raise _invalid(f"the Merkle tree at seqno {entry.seqno} is not the signed one")
        first = unproven[0][0]
        if first < tree.min_index:
            raise _not_available(
                f"the signature at seqno {entry.seqno} proves seqnos from {tree.min_index} "
                f"only, not {first}"
            )
        for seqno, uraw, uentry in unproven:
            if self._leaf(uentry, uraw) != tree.leaf(seqno):
                raise _invalid(
                    f"the ledger entry at seqno {seqno} is not the one the service signed "
                    f"(its digest is not the leaf the root signed at seqno {entry.seqno} covers)"
                )
        return _Segment(tree, signature)

    def _state(
        self,
        entry: Entry,
        raw: bytes,
        identity: Identity,
        *,
        segment: _Segment | None,
        history: History | None,
    ) -> HistoricalState:
        seqno = entry.seqno
        secret = identity.secret_for(seqno)
        try:
            private = decrypt_private(entry, secret)
        except LedgerError:
            raise _invalid(f"the ledger entry at seqno {seqno} does not decrypt") from None
        evidence = commit_evidence(secret, entry.view, seqno)
        if commit_evidence_digest(evidence) != entry.commit_evidence_digest:
            raise _invalid(f"the commit evidence of seqno {seqno} does not match")
        own = self._signature_record(entry, identity) if self._signature_in(entry) else None
        assert entry.claims_digest is not None
        return HistoricalState(
            seqno=seqno,
            tx_view=entry.view,
            public=entry.public,
            private=private,
            write_set_digest=write_set_digest(raw),
            commit_evidence=evidence,
            claims_digest=entry.claims_digest,
            own_signature=own,
            size_bytes=len(raw) + STATE_OVERHEAD_BYTES,
            _segment=segment,
            _history=history,
        )

    def _complete(self, fetch: _Fetch) -> None:
        request = fetch.request
        states = request.prefix + fetch.accepted
        assert [s.seqno for s in states] == list(range(request.lo, request.hi + 1))
        request.prefix = []
        request.states = states
        request.fetching = False
        request.touched_ms = self.now_ms
        fresh = {state.seqno for state in states}
        for state in states:
            previous = self._cache.pop(state.seqno, None)
            if previous is not None:
                self.cached_bytes -= previous.size_bytes
            self._cache[state.seqno] = state
            self.cached_bytes += state.size_bytes
        self._evict(keep=fresh)

    def _evict(self, *, keep: set[int]) -> None:
        """Least recently used first, down to the soft limit; the request just completed is
        held by its `_Request` until collected, so it may exceed the limit alone."""
        cache = self._cache
        while self.cached_bytes > self.soft_limit_bytes and cache:
            seqno = next(iter(cache))
            if seqno in keep:
                if len(keep) >= len(cache):
                    break
                cache.move_to_end(seqno)
                continue
            state = cache.pop(seqno)
            self.cached_bytes -= state.size_bytes
            self.metrics["evicted"] += 1
        if self.cached_bytes > self.soft_limit_bytes:
            # One request larger than the limit: its states stay with the request only.
            for seqno in keep:
                if seqno in cache:
                    self.cached_bytes -= cache.pop(seqno).size_bytes
        assert self.cached_bytes >= 0

    # ------------------------------------------------------------------ introspection
    def cached_seqnos(self) -> Iterator[int]:
        return iter(self._cache)

    @property
    def fetches_in_flight(self) -> int:
        return len(self._in_flight)
