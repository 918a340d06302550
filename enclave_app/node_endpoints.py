"""Built-in `/node/…` endpoints, with CCF's paths and field names (DESIGN §9)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pydantic

from charter.consensus import ConsensusDetails
from charter.enclave_app import gc_pauses
from charter.enclave_app.app import App, Context, HttpResponse, Response
from charter.enclave_app.errors import HttpError
from charter.enclave_app.interface.config import SAN_BYTES_MAX, SAN_COUNT_MAX
from charter.enclave_app.metrics_format import (
    PROMETHEUS_CONTENT_TYPE,
    choose_format,
    render_prometheus,
)
from charter.enclave_app.operator_files import SNAPSHOT_NAME_HEADER
from charter.enclave_app.platform import VIRTUAL_FORMAT
from charter.governance import tables as gt
from charter.ledger import certs
from charter.ledger.errors import LedgerError
from charter.ledger.snapshot import parse_snapshot_file_name

if TYPE_CHECKING:
    from charter.enclave_app.node import Node

VERSION = "charter-0.1.0"
_TXID = re.compile(r"([0-9]{1,19})\.([0-9]{1,19})")


class TxQuery(pydantic.BaseModel):
    transaction_id: str = pydantic.Field(max_length=48)


class MetricsQuery(pydantic.BaseModel):
    format: Literal["json", "prometheus"] | None = None


class SnapshotQuery(pydantic.BaseModel):
    # CCF's `since`: only a snapshot at or after this seqno will do.
    since: Annotated[int, pydantic.Field(ge=0, le=2**63 - 1)] = 0


class JoinRequest(pydantic.BaseModel):
    """What a joining node presents: its key, its attestation report, its addresses."""

    model_config = pydantic.ConfigDict(extra="forbid")

    public_key: str = pydantic.Field(max_length=4096)
    quote: str = pydantic.Field(max_length=32 * 1024)
    # CCF's quote_info format; `virtual` reports are the default, SEV-SNP ones carry the
    # VCEK and its chain as endorsements (base64 of PEM).
    quote_format: str = pydantic.Field(default=VIRTUAL_FORMAT, max_length=64)
    endorsements: str = pydantic.Field(default="", max_length=48 * 1024)
    rpc_address: str = pydantic.Field(max_length=256)
    node_to_node_address: str = pydantic.Field(max_length=256)
    want_snapshot: bool = False
    # Its certificate's names ("dNSName:…", "iPAddress:…"), from its operator's config.
    subject_alt_names: (
        list[Annotated[str, pydantic.StringConstraints(max_length=SAN_BYTES_MAX + 16)]] | None
    ) = pydantic.Field(default=None, max_length=SAN_COUNT_MAX)


def parse_txid(text: str) -> tuple[int, int]:
    found = _TXID.fullmatch(text)
    if found is None:
        raise HttpError("transaction_id must look like <view>.<seqno>", code="InvalidInput")
    view, seqno = int(found.group(1)), int(found.group(2))
    if view < 1 or seqno < 1:
        raise HttpError("view and seqno start at 1", code="InvalidInput")
    return view, seqno


def _as_response(raw: HttpResponse) -> Response:
    body: Any = raw.body
    return Response(raw.status, body, dict(raw.headers), raw.content_type)


def _n2n_addresses(ctx: Context) -> dict[str, str]:
    """Node id -> published node-to-node address, from governance's nodes table."""
    found = {}
    for key, value in ctx.tx.items(gt.NODES_INFO):
        info = gt.load_json(value, what=gt.NODES_INFO)
        address = (info.get("node_to_node_interface") or {}).get("published_address")
        found[gt.key_to_id(key)] = str(address or "")
    return found


def consensus_details(d: ConsensusDetails, addresses: dict[str, str]) -> dict[str, Any]:
    """`GET /node/consensus`'s `details`, with CCF's field names (`ConsensusDetails`).

    CCF's `configs` lists configurations by `idx` (the seqno that set them) and `rid`;
    Charter numbers a configuration by that seqno alone, so `rid` = `idx`. Charter adds
    `node_id`, `commit_seqno`, `last_seqno`, `durable_seqno`, each ack's `commit_seqno` and
    `needs_snapshot`, and `primary_last_received_ms` on a node following a primary.
    """
    details: dict[str, Any] = {
        "node_id": d.node_id,
        "configs": [
            {
                "idx": d.configuration_seqno,
                "rid": d.configuration_seqno,
                "nodes": {n: {"address": addresses.get(n, "")} for n in sorted(d.configuration)},
            }
        ],
        "acks": {
            peer: {
                "seqno": ack.seqno,
                "last_received_ms": ack.last_received_ms,
                "commit_seqno": ack.commit_seqno,
                "needs_snapshot": ack.needs_snapshot,
            }
            for peer, ack in d.acks.items()
        },
        "membership_state": d.membership_state,
        "primary_id": d.primary_id,
        "current_view": d.current_view,
        "ticking": d.ticking,
        "commit_seqno": d.commit_seqno,
        "last_seqno": d.last_seqno,
        "durable_seqno": d.durable_seqno,
    }
    if d.leadership_state is not None:
        details["leadership_state"] = d.leadership_state
    if d.primary_last_received_ms is not None:
        details["primary_last_received_ms"] = d.primary_last_received_ms
    return details


def _not_after(pem: object) -> str | None:
    """A certificate's notAfter, ISO 8601 UTC (None if there is no readable one)."""
    if not isinstance(pem, str) or not pem:
        return None
    try:
        cert = certs.load_cert(pem)
    except LedgerError:
        return None
    return cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def _create_seqno(txid: Any) -> int | None:
    """The seqno of a "view.seqno" transaction id recorded by the service, if any."""
    if not isinstance(txid, str) or "." not in txid:
        return None
    seqno = txid.partition(".")[2]
    return int(seqno) if seqno.isdigit() else None


def build(node: Node) -> App:
    """The /node app of `node` (handlers read the node's live state)."""
    app = App("node", prefix="/node")

    @app.get("/state", auth="none")
    def state(ctx: Context) -> dict[str, Any]:
        """This node's id, state and last signed seqno."""
        last = node.history.last_signature
        recovery = node.recovery
        doc: dict[str, Any] = {
            "node_id": node.node_id,
            "state": node.state,
            "last_signed_seqno": last.seqno if last else 0,
            "startup_seqno": 0,
        }
        if recovery is not None:
            # CCF's field: the last seqno of the old ledger this recovery brings back.
            doc["recovery_target_seqno"] = recovery.recovery_target_seqno
            if recovery.stop is not None:
                # Charter's: where the replay of a damaged copy stopped, and why.
                doc["recovery_replay_stopped"] = {
                    "seqno": recovery.stop.seqno,
                    "reason": recovery.stop.reason,
                }
        return doc

    @app.get("/network", auth="none")
    def network(ctx: Context) -> dict[str, Any]:
        """Service status, certificate, current view and primary."""
        info = gt.service_info(ctx.tx) or {}
        raft = node.raft
        return {
            "service_status": info.get("status"),
            "service_certificate": info.get("cert"),
            # When clients stop accepting the certificates (renewed by governance, see
            # set_service_certificate_validity): ISO 8601, UTC.
            "service_certificate_not_after": _not_after(info.get("cert")),
            "node_certificates_not_after": {
                gt.key_to_id(key): _not_after(pem.decode())
                for key, pem in ctx.tx.items(gt.NODES_ENDORSED_CERTIFICATES)
            },
            "current_view": raft.view if raft else 0,
            "primary_id": raft.leader_id if raft else None,
            "recovery_target_seqno": (
                node.recovery.recovery_target_seqno if node.recovery is not None else None
            ),
            "recovery_count": info.get("recovery_count") or 0,
            "current_service_create_seqno": _create_seqno(info.get("current_service_create_txid")),
        }

    @app.get("/network/nodes", auth="none")
    def nodes(ctx: Context) -> dict[str, Any]:
        """Every node in governance: status, addresses, and which is primary."""
        primary = node.raft.leader_id if node.raft else None
        found = []
        for key, value in ctx.tx.items(gt.NODES_INFO):
            info = gt.load_json(value, what=gt.NODES_INFO)
            node_id = gt.key_to_id(key)
            found.append(
                {
                    "node_id": node_id,
                    "status": info.get("status"),
                    "primary": node_id == primary,
                    "rpc_interfaces": info.get("rpc_interfaces", {}),
                    "node_to_node_interface": info.get("node_to_node_interface", {}),
                    "node_data": info.get("node_data"),
                    "last_written": ctx.tx.version_of(gt.NODES_INFO, key),
                }
            )
        return {"nodes": found}

    @app.get("/consensus", auth="none")
    def consensus(ctx: Context) -> dict[str, Any]:
        """This node's view of consensus, in CCF's shape: on the primary, each peer's
        acknowledged seqno and how long ago it last answered (`acks`)."""
        if node.raft is None:
            raise HttpError("Consensus has not started on this node", code="ServiceNotReady")
        return {"details": consensus_details(node.raft.details(), _n2n_addresses(ctx))}

    @app.get("/commit", auth="none")
    def commit(ctx: Context) -> dict[str, Any]:
        """The latest committed transaction id."""
        seqno = node.commit_seqno
        return {"transaction_id": f"{node.view_at(seqno) or 0}.{seqno}"}

    @app.get("/tx", auth="none", query=TxQuery)
    def tx_status(ctx: Context) -> dict[str, Any]:
        """Status of a transaction: Unknown, Pending, Committed or Invalid."""
        view, seqno = parse_txid(ctx.query.transaction_id)
        return {"transaction_id": ctx.query.transaction_id, "status": node.tx_status(view, seqno)}

    @app.get("/receipt", auth="none", query=TxQuery)
    def json_receipt(ctx: Context) -> Response:
        """The JSON receipt of a committed transaction (202 while not yet available)."""
        view, seqno = parse_txid(ctx.query.transaction_id)
        return _as_response(node.receipt(view, seqno))

    @app.get("/receipt/cose", auth="none", query=TxQuery)
    def cose_receipt(ctx: Context) -> Response:
        """The COSE receipt of a committed transaction (202 while not yet available)."""
        view, seqno = parse_txid(ctx.query.transaction_id)
        return _as_response(node.receipt(view, seqno, cose=True))

    @app.get("/quotes/self", auth="none")
    def quote(ctx: Context) -> dict[str, Any]:
        """This node's attestation evidence: format, raw report and endorsements (base64),
        and its code measurement."""
        assert node.identity is not None
        info = node.platform.evidence(node.identity.public_key_der).quote_info()
        return {
            "node_id": node.node_id,
            "format": info["format"],
            "raw": info["quote"],
            "endorsements": info["endorsements"],
            "measurement": node.platform.measurement,
        }

    @app.get("/quotes", auth="none")
    def quotes(ctx: Context) -> dict[str, Any]:
        """The evidence every trusted node was admitted with, as governance recorded it."""
        found = []
        for key, raw in ctx.tx.items(gt.NODES_INFO):
            info = gt.load_json(raw, what=gt.NODES_INFO)
            if not isinstance(info, dict) or info.get("status") != gt.NodeStatus.TRUSTED:
                continue
            quote_info = info.get("quote_info") or {}
            found.append(
                {
                    "node_id": key.decode(),
                    "format": quote_info.get("format", ""),
                    "raw": quote_info.get("quote", ""),
                    "endorsements": quote_info.get("endorsements", ""),
                    "measurement": info.get("code_digest", ""),
                }
            )
        return {"quotes": found}

    @app.post("/join", auth="none", body=JoinRequest, max_body_bytes=64 * 1024)
    def join(ctx: Context) -> dict[str, Any]:
        """A node asks to join: recorded Pending, or, once trusted, given the network's
        secrets sealed to its key."""
        return node.join_request(ctx.tx, ctx.body.model_dump())

    @app.get("/snapshot", auth="none", query=SnapshotQuery)
    def snapshot(ctx: Context) -> Response:
        """The latest committed snapshot this node holds, once verified (operator feature
        `SnapshotRead`; `since`: only one at or after that seqno). Any trusted node serves
        its own: backups take the snapshots the primary records evidence of."""
        if "SnapshotRead" not in node.config.operator_features():
            raise HttpError(
                "SnapshotRead is not enabled on this RPC interface",
                code="OperatorFeatureNotEnabled",
            )
        data, name = node.latest_snapshot, node.latest_snapshot_name
        parsed = parse_snapshot_file_name(name) if name else None
        if data is None or name is None or (parsed is not None and parsed[0] < ctx.query.since):
            raise HttpError(
                f"No committed snapshot since seqno {ctx.query.since}", code="SnapshotNotFound"
            )
        return Response(200, data, {SNAPSHOT_NAME_HEADER: name}, "application/octet-stream")

    @app.get("/version", auth="none")
    def version(ctx: Context) -> dict[str, Any]:
        """Software version and platform."""
        return {
            "ccf_version": VERSION,
            "platform": node.platform.name,
            "unsafe": not node.platform.is_secure,
        }

    @app.get("/metrics", auth="none", query=MetricsQuery)
    def metrics(ctx: Context) -> Any:
        """Request counters and consensus progress: JSON, or the Prometheus text format for
        `?format=prometheus` or an Accept header that prefers text/plain to JSON."""
        values = {
            **node.metrics,
            "commit_seqno": node.commit_seqno,
            "last_seqno": node.applied_seqno,
            "uncommitted": node.applied_seqno - node.commit_seqno,
            **gc_pauses.PAUSES.metrics(),
            **{f"historical_{k}": v for k, v in node.historical.metrics.items()},
        }
        if choose_format(ctx.query.format, ctx.headers.get("accept")) == "json":
            return values
        raft = node.raft
        values["current_view"] = raft.view if raft else 0
        values["is_primary"] = int(node.is_primary)
        node_id = node.identity.node_id if node.identity is not None else ""
        text = render_prometheus(values, node_id=node_id, state=node.state)
        return Response(200, text, {}, PROMETHEUS_CONTENT_TYPE)

    return app
