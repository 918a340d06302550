"""The sample logging application: the app the sandbox serves, and the developer guide's example.

It keeps messages by integer id, like CCF's logging sample: private ones in the private map
``records`` (encrypted in the ledger), public ones in ``public:records`` (in clear), both with
u64 little-endian keys and UTF-8 string values. The main endpoints need a registered user's
TLS client certificate (``auth="user_cert"``); others show each authentication policy, as
CCF's logging sample does:

    POST   /app/log/private/jwt        a JWT bearer token of a registered issuer (jwt)
    GET    /app/log/private/jwt?id=42
    POST   /app/log/private/cose       body: a user's COSE_Sign1 over the JSON record
    POST   /app/log/private/anonymous  no authentication at all (auth=[])
    GET    /app/multi_auth             any policy: says who the caller is and how
    POST   /app/multi_auth             the same, COSE-signed requests included
    GET    /app/all_of_auth            a user's certificate AND a JWT, both identities

    POST   /app/log/private        {"id": 42, "msg": "hello"}   -> true
    GET    /app/log/private?id=42                               -> {"msg": "hello"}
    POST   /app/log/public         {"id": 42, "msg": "hello"}   -> true
    GET    /app/log/public?id=42                                -> {"msg": "hello"}
    DELETE /app/log/private?id=42                               -> 204
    GET    /app/log/private/count                               -> {"count": 0}
    GET    /app/log/private/index?id=42&from_seqno=1&to_seqno=900 -> {"id": 42, "seqnos": [..]}
    GET    /app/log/public/index?id=42                           (the same for public records)

Historical endpoints (CCF's; see the developer guide's "Historical queries"): the node reads
old transactions back from its ledger files, checks them, and answers ``202`` with
``Retry-After`` until it holds them; the client asks again.

    GET    /app/log/private/historical?id=42          (header x-ms-ccf-transaction-id: 2.17)
                                                      -> {"msg": "hello"}: id 42 as written
                                                         by that transaction
    GET    /app/log/private/historical_receipt?id=42  (same header) -> {"msg", "receipt"}
    GET    /app/log/private/historical/range?id=42&from_seqno=1&to_seqno=9000
                                                      -> {"entries": [{"seqno", "id", "msg"}],
                                                          "@nextLink": "..."} (pages)
    GET    /app/receipt?transaction_id=2.17           -> CCF's JSON receipt (any age)

A POST answers ``true`` with no newline, as CCF's logging sample does (CCF clients parse
it); ``curl -w '\n'`` keeps a terminal's prompt on its own line.

Set ``"record_claim": true`` in a POST to bind SHA-256(msg) into the transaction's ledger leaf
as its claims digest: the receipt of that transaction then proves the message.

How the framework helps: the pydantic models below validate input before a handler runs (a bad
id answers 422 and writes nothing); GET handlers are read-only and never create a transaction;
a POST handler's writes are committed only if it answers 2xx.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from charter.enclave_app.app import App, Caller, Context, Response, all_of
from charter.enclave_app.errors import HttpError
from charter.enclave_app.indexing import IndexingError, IndexNotReady, SeqnosByKey
from charter.enclave_app.kv import STR, U64, U64_MAX

if TYPE_CHECKING:
    from charter.enclave_app.node.historical import HistoricalState

PRIVATE_RECORDS = "records"
PUBLIC_RECORDS = "public:records"
MSG_BYTES_MAX = 64 * 1024

app = App("logging")


def _fits(msg: str) -> str:
    if len(msg.encode("utf-8")) > MSG_BYTES_MAX:
        raise ValueError(f"msg is longer than {MSG_BYTES_MAX} bytes in UTF-8")
    return msg


class LogRecord(BaseModel):
    """A message to record under an id."""

    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=0, le=U64_MAX)
    msg: Annotated[str, AfterValidator(_fits)]
    record_claim: bool = False


class LogQuery(BaseModel):
    """Which record to read or delete."""

    id: int = Field(ge=0, le=U64_MAX)


class LogMessage(BaseModel):
    """A recorded message."""

    msg: str


class LogCount(BaseModel):
    """How many records a map holds."""

    count: int


def _record(ctx: Context, map_name: str) -> bool:
    record: LogRecord = ctx.body
    ctx.tx.view(map_name, U64, STR).put(record.id, record.msg)
    if record.record_claim:
        ctx.set_claims_digest(hashlib.sha256(record.msg.encode("utf-8")).digest())
    return True


def _read(ctx: Context, map_name: str) -> LogMessage:
    query: LogQuery = ctx.query
    msg = ctx.tx.view(map_name, U64, STR).get(query.id)
    if msg is None:
        raise HttpError(f"No such record: {query.id}", code="ResourceNotFound")
    return LogMessage(msg=msg)


@app.post("/log/private", auth="user_cert", body=LogRecord)
def record_private(ctx: Context) -> bool:
    """Record a private message (encrypted in the ledger)."""
    return _record(ctx, PRIVATE_RECORDS)


@app.get("/log/private", auth="user_cert", query=LogQuery, response=LogMessage)
def get_private(ctx: Context) -> LogMessage:
    """Read a private message by id (404 if absent)."""
    return _read(ctx, PRIVATE_RECORDS)


@app.post("/log/public", auth="user_cert", body=LogRecord)
def record_public(ctx: Context) -> bool:
    """Record a public message (in clear in the ledger)."""
    return _record(ctx, PUBLIC_RECORDS)


@app.get("/log/public", auth="user_cert", query=LogQuery, response=LogMessage)
def get_public(ctx: Context) -> LogMessage:
    """Read a public message by id (404 if absent)."""
    return _read(ctx, PUBLIC_RECORDS)


@app.delete("/log/private", auth="user_cert", query=LogQuery)
def delete_private(ctx: Context) -> None:
    """Delete a private message by id (204; 404 if absent)."""
    query: LogQuery = ctx.query
    if not ctx.tx.view(PRIVATE_RECORDS, U64, STR).remove(query.id):
        raise HttpError(f"No such record: {query.id}", code="ResourceNotFound")


@app.get("/log/private/count", auth="user_cert", response=LogCount)
def count_private(ctx: Context) -> LogCount:
    """Count the private messages (reads the whole map: a demo, not for large maps)."""
    return LogCount(count=sum(1 for _ in ctx.tx.items(PRIVATE_RECORDS)))


# ------------------------------------------------------------------ one endpoint per policy


@app.post("/log/private/jwt", auth="jwt", body=LogRecord)
def record_private_jwt(ctx: Context) -> bool:
    """Record a private message, authenticated by a JWT bearer token."""
    return _record(ctx, PRIVATE_RECORDS)


@app.get("/log/private/jwt", auth="jwt", query=LogQuery, response=LogMessage)
def get_private_jwt(ctx: Context) -> LogMessage:
    """Read a private message, authenticated by a JWT bearer token."""
    return _read(ctx, PRIVATE_RECORDS)


@app.post("/log/private/cose", auth="user_cose_sign1", body=LogRecord)
def record_private_cose(ctx: Context) -> bool:
    """Record a private message sent as a user's COSE_Sign1 envelope (fresh, played once)."""
    return _record(ctx, PRIVATE_RECORDS)


@app.post("/log/private/anonymous", auth=[], body=LogRecord)
def record_private_anonymous(ctx: Context) -> bool:
    """Record a private message without authentication (an empty policy list)."""
    return _record(ctx, PRIVATE_RECORDS)


def describe(caller: Caller) -> dict[str, object]:
    """What an endpoint knows of its caller, as JSON."""
    described: dict[str, object] = {"policy": caller.policy, "kind": caller.kind, "id": caller.id}
    if caller.kind == "jwt":
        described["issuer"] = caller.data.get("issuer")
        described["claims"] = caller.data.get("claims")
    if caller.identities:
        described["identities"] = {k: describe(v) for k, v in caller.identities.items()}
    return described


MULTI_AUTH = ["user_cert", "member_cert", "jwt", "any_cert", "none"]


@app.get("/multi_auth", auth=MULTI_AUTH)
def multi_auth(ctx: Context) -> dict[str, object]:
    """Who the caller is, under whichever policy admitted it (CCF's /multi_auth)."""
    return describe(ctx.caller)


@app.post("/multi_auth", auth=["user_cose_sign1", "member_cose", *MULTI_AUTH], read_only=True)
def multi_auth_signed(ctx: Context) -> dict[str, object]:
    """The same, for a COSE-signed request too (read-only: nothing is recorded)."""
    return describe(ctx.caller)


@app.get("/all_of_auth", auth=all_of("user_cert", "jwt"))
def all_of_auth(ctx: Context) -> dict[str, object]:
    """Needs both a user's TLS certificate and a JWT; answers both identities."""
    return describe(ctx.caller)


# ------------------------------------------------------------------ historical (CCF's)

# Seqnos one range page spans; a wider range answers with a link to the next page.
RANGE_PAGE_SEQNOS_MAX = 2_000
HISTORICAL_RETRY_AFTER_S = "1"


class HistoricalRecord(BaseModel):
    """A record as one past transaction wrote it."""

    msg: str


class HistoricalReceipt(BaseModel):
    """A record as one past transaction wrote it, with that transaction's receipt."""

    msg: str
    receipt: dict[str, object]


class RangeQuery(BaseModel):
    """The writes to one id over a range of seqnos (to_seqno: the commit seqno if absent)."""

    id: int = Field(ge=0, le=U64_MAX)
    from_seqno: int = Field(default=1, ge=1)
    to_seqno: int | None = Field(default=None, ge=1)


class RangeEntry(BaseModel):
    seqno: int
    id: int
    msg: str


class RangePage(BaseModel):
    """One page of a range; `@nextLink` is the next page's path, absent on the last."""

    model_config = ConfigDict(populate_by_name=True)

    entries: list[RangeEntry]
    next_link: str | None = Field(default=None, alias="@nextLink")


def _historical_msg(ctx: Context) -> str:
    query: LogQuery = ctx.query
    msg: str | None = ctx.historical.view(PRIVATE_RECORDS, U64, STR).get(query.id)
    if msg is None:
        raise HttpError(
            f"No record {query.id} written at {ctx.historical.txid}", code="ResourceNotFound"
        )
    return msg


@app.get(
    "/log/private/historical",
    auth="user_cert",
    query=LogQuery,
    response=HistoricalRecord,
    mode="historical",
)
def get_historical(ctx: Context) -> HistoricalRecord:
    """A private record as written by the transaction named in x-ms-ccf-transaction-id."""
    return HistoricalRecord(msg=_historical_msg(ctx))


@app.get(
    "/log/private/historical_receipt",
    auth="user_cert",
    query=LogQuery,
    response=HistoricalReceipt,
    mode="historical",
)
def get_historical_with_receipt(ctx: Context) -> HistoricalReceipt:
    """The same, with the receipt of that transaction."""
    msg = _historical_msg(ctx)
    return HistoricalReceipt(msg=msg, receipt=ctx.runtime.historical_receipt(ctx.historical))


@app.get("/log/private/historical/range", auth="user_cert", query=RangeQuery, response=RangePage)
def get_historical_range(ctx: Context) -> RangePage | Response:
    """Every value a private record took over a range of committed seqnos, paged. Where this
    node's index covers the range, only the transactions that wrote the id are read back;
    elsewhere (before a snapshot this node started from) the page is scanned."""
    query: RangeQuery = ctx.query
    _view, commit = ctx.runtime.commit_txid
    to_seqno = commit if query.to_seqno is None else query.to_seqno
    if to_seqno < query.from_seqno:
        raise HttpError(
            f"to_seqno {to_seqno} is before from_seqno {query.from_seqno}", code="InvalidInput"
        )
    page_end = min(to_seqno, query.from_seqno + RANGE_PAGE_SEQNOS_MAX - 1)
    index = ctx.runtime.index(PRIVATE_BY_ID)
    if query.from_seqno >= index.covers_from:
        page_end = min(page_end, index.page_end(query.from_seqno))
        try:
            written = index.get_write_txs_in_range(query.id, query.from_seqno, page_end)
        except IndexNotReady as exc:
            return _range_pending(str(exc.retry_after_s))
        except IndexingError as exc:
            raise exc.as_http_error() from None
        states = _states_at(ctx, written)
    else:
        states = ctx.runtime.historical_range(query.from_seqno, page_end)
    if states is None:
        return _range_pending(HISTORICAL_RETRY_AFTER_S)
    entries = []
    for state in states:
        msg = state.view(PRIVATE_RECORDS, U64, STR).get(query.id)
        if msg is not None:
            entries.append(RangeEntry(seqno=state.seqno, id=query.id, msg=msg))
    next_link = None
    if page_end < to_seqno:
        next_link = (
            f"/app/log/private/historical/range?from_seqno={page_end + 1}"
            f"&to_seqno={to_seqno}&id={query.id}"
        )
    return RangePage.model_validate({"entries": entries, "@nextLink": next_link})


# Written seqnos are read back one by one when they are few and far apart; when there are
# many, or they fill a good part of their span, the span is read in one go (one read of the
# ledger instead of one per write, each of which reads on to the next signature).
SPARSE_READS_MAX = 64
DENSE_SPAN_FACTOR = 4


def _states_at(ctx: Context, seqnos: list[int]) -> list[HistoricalState] | None:
    """The historical states of `seqnos` (ascending), or None while any is being fetched."""
    if not seqnos:
        return []
    span_seqnos = seqnos[-1] - seqnos[0] + 1
    if len(seqnos) > SPARSE_READS_MAX or span_seqnos <= DENSE_SPAN_FACTOR * len(seqnos):
        span = ctx.runtime.historical_range(seqnos[0], seqnos[-1])
        if span is None:
            return None
        wanted = set(seqnos)
        return [state for state in span if state.seqno in wanted]
    # Ask for every one first, so the node fetches them together, not one per retry.
    answers = [ctx.runtime.historical_range(seqno, seqno) for seqno in seqnos]
    if any(one is None for one in answers):
        return None
    return [state for one in answers if one is not None for state in one]


def _range_pending(retry_after_s: str) -> Response:
    return Response(
        202,
        {"status": "Pending", "message": "Historical range is not yet available."},
        {"Retry-After": retry_after_s},
    )


class ReceiptQuery(BaseModel):
    """A transaction id, view.seqno."""

    transaction_id: Annotated[str, Field(pattern=r"^(0|[1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,18})$")]


@app.get("/receipt", auth="user_cert", query=ReceiptQuery)
def get_receipt(ctx: Context) -> Response:
    """CCF's JSON receipt of a committed transaction of any age (202 while not ready)."""
    query: ReceiptQuery = ctx.query
    view, _, seqno = query.transaction_id.partition(".")
    answer = ctx.runtime.receipt_response(int(view), int(seqno))
    return Response(answer.status, answer.body, answer.headers, answer.content_type)


# ------------------------------------------------------------------ indexing (issue #15)
# The seqnos at which each record id was written (or deleted), from the node's indexes:
# fed with committed transactions only, answered without scanning the ledger. Buckets of
# 256 seqnos: the node keeps `indexing.buckets_in_memory` of them per index in the enclave.

INDEX_SEQNOS_PER_BUCKET = 256
PRIVATE_BY_ID = app.install_index(
    SeqnosByKey(PRIVATE_RECORDS, key_codec=U64, seqnos_per_bucket=INDEX_SEQNOS_PER_BUCKET)
)
PUBLIC_BY_ID = app.install_index(
    SeqnosByKey(PUBLIC_RECORDS, key_codec=U64, seqnos_per_bucket=INDEX_SEQNOS_PER_BUCKET)
)


class IndexQuery(BaseModel):
    """Which id, over which seqnos (from_seqno defaults to where this node's index starts,
    to_seqno to what it has seen committed)."""

    id: int = Field(ge=0, le=U64_MAX)
    from_seqno: int | None = Field(default=None, ge=1, le=U64_MAX)
    to_seqno: int | None = Field(default=None, ge=1, le=U64_MAX)


def _index_page(ctx: Context, strategy: SeqnosByKey, path: str) -> dict[str, object]:
    query: IndexQuery = ctx.query
    index = ctx.runtime.index(strategy)
    from_seqno = query.from_seqno if query.from_seqno is not None else index.covers_from
    to_seqno = query.to_seqno if query.to_seqno is not None else index.indexed_to
    if to_seqno < from_seqno:
        if query.to_seqno is None:  # nothing committed from there on yet
            return {"id": query.id, "seqnos": []}
        raise HttpError(
            f"to_seqno {to_seqno} is before from_seqno {from_seqno}", code="InvalidInput"
        )
    page_end = min(to_seqno, index.page_end(from_seqno))
    try:
        seqnos = index.get_write_txs_in_range(query.id, from_seqno, page_end)
    except IndexNotReady as exc:
        ctx.set_status(202)
        ctx.set_header("retry-after", str(exc.retry_after_s))
        return {"status": "pending", "message": exc.message}
    except IndexingError as exc:
        raise exc.as_http_error() from None
    # What this node's index covers, so a client sees where its answers can start and end.
    page: dict[str, object] = {
        "id": query.id,
        "seqnos": seqnos,
        "covers_from": index.covers_from,
        "indexed_to": index.indexed_to,
    }
    if page_end < to_seqno:
        page["@nextLink"] = f"{path}?id={query.id}&from_seqno={page_end + 1}&to_seqno={to_seqno}"
    return page


@app.get("/log/private/index", auth="user_cert", query=IndexQuery)
def private_index(ctx: Context) -> dict[str, object]:
    """The seqnos in [from_seqno, to_seqno] at which private record `id` was written, one
    page at a time (`@nextLink` names the next page); 202 + Retry-After while the node
    fetches index buckets back from its host or has not committed `to_seqno` yet."""
    return _index_page(ctx, PRIVATE_BY_ID, "/app/log/private/index")


@app.get("/log/public/index", auth="user_cert", query=IndexQuery)
def public_index(ctx: Context) -> dict[str, object]:
    """The same for public records (whose writes anyone can check in the ledger files)."""
    return _index_page(ctx, PUBLIC_BY_ID, "/app/log/public/index")
