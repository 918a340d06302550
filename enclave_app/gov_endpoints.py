"""The /gov endpoints in CCF's 2024-07-01 shape: thin HTTP wrappers over `governance`.

The node runtime calls `register(app, hooks)` with an `App` whose prefix is "/gov" (or
uses `make_gov_app(hooks)`), supplying the current Merkle root, the time, and a callback
that performs an accepted proposal's `Effects` (endorse nodes, open the service, rekey)
in the same transaction. Every state-changing route authenticates its caller itself by
verifying the COSE_Sign1 body (charter.governance.requests): the routes are registered with
auth "none" so that the runtime does not need to know the governance rules.

`?api-version=2024-07-01` (or `2023-06-01-preview`) is required on every route; missing →
400 MissingApiVersionParameter, unknown → 400 UnsupportedApiVersionValue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from charter.enclave_app.app import JSON_CONTENT_TYPE, App, Context, Response
from charter.enclave_app.errors import HttpError
from charter.governance import handlers, proposals, queries
from charter.governance.acks import get_state_digest
from charter.governance.effects import Effects
from charter.governance.errors import GovernanceError
from charter.governance.requests import DEFAULT_POLICY, MAX_ENVELOPE_BYTES, RequestPolicy
from charter.governance.tables import is_hex_id

logger = logging.getLogger(__name__)

GOV_PREFIX = "/gov"
API_VERSIONS = ("2024-07-01", "2023-06-01-preview")
COSE_CONTENT_TYPE = "application/cose"


@dataclass(frozen=True, slots=True)
class GovHooks:
    """What the runtime supplies: all reads of the world governance needs, and effects."""

    merkle_root: Callable[[], bytes]  # root of the tree at the read version (32 bytes)
    now_s: Callable[[], int]  # current time, unix seconds
    apply_effects: Callable[[Any, Effects], None]  # (tx, effects), same transaction
    policy: RequestPolicy = DEFAULT_POLICY


def _check_api_version(ctx: Context) -> None:
    value = ctx.query.get("api-version") if isinstance(ctx.query, dict) else None
    if value is None:
        raise HttpError(
            f"the api-version query parameter is required; supported: {', '.join(API_VERSIONS)}",
            code="MissingApiVersionParameter",
        )
    if value not in API_VERSIONS:
        raise HttpError(
            f"unsupported api-version {str(value)[:64]!r}; supported: {', '.join(API_VERSIONS)}",
            code="UnsupportedApiVersionValue",
        )


def _check_cose_body(ctx: Context) -> bytes:
    content_type = ctx.headers.get("content-type")
    if content_type is not None and content_type.split(";")[0].strip() != COSE_CONTENT_TYPE:
        raise HttpError(f"expected {COSE_CONTENT_TYPE}", code="UnsupportedContentType")
    assert isinstance(ctx.body, bytes)
    return ctx.body


def _gov(fn: Callable[[Context], Any]) -> Callable[[Context], Any]:
    """Check the api-version and turn governance refusals into HTTP errors."""

    def wrapped(ctx: Context) -> Any:
        _check_api_version(ctx)
        try:
            return fn(ctx)
        except GovernanceError as exc:
            logger.info("gov request refused path=%s code=%s", ctx.endpoint.path, exc.code)
            raise HttpError(exc.message, code=exc.code) from None

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _render(
    ctx: Context, hooks: GovHooks, result: handlers.GovResult
) -> Response | dict[str, Any] | None:
    if not result.effects.empty:
        hooks.apply_effects(ctx.tx, result.effects)
    if result.body is None:
        ctx.set_status(result.status)
        return None
    return Response(status=result.status, body=result.body)


def register(app: App, hooks: GovHooks) -> None:
    """Add the /gov routes to `app` (whose prefix must be "/gov")."""
    if app.prefix != GOV_PREFIX:
        raise ValueError(f"gov endpoints need an App with prefix {GOV_PREFIX!r}")
    write = {"auth": "none", "max_body_bytes": MAX_ENVELOPE_BYTES}
    read = {"auth": "none"}

    # ---------------------------------------------------------------- proposals

    @app.post("/members/proposals:create", **write)
    @_gov
    def create_proposal(ctx: Context) -> Any:
        """Create a proposal (COSE_Sign1, msg type proposal)."""
        result = handlers.create_proposal(
            ctx.tx,
            _check_cose_body(ctx),
            now_s=hooks.now_s(),
            merkle_root=hooks.merkle_root(),
            policy=hooks.policy,
        )
        return _render(ctx, hooks, result)

    @app.post("/members/proposals:dry-run", read_only=True, **write)
    @_gov
    def dry_run_proposal(ctx: Context) -> Any:
        """Report what a proposal would do, recording nothing."""
        result = handlers.dry_run_proposal(
            ctx.tx,
            _check_cose_body(ctx),
            now_s=hooks.now_s(),
            merkle_root=hooks.merkle_root(),
            policy=hooks.policy,
        )
        return result.body

    @app.get("/members/proposals", **read)
    @_gov
    def list_proposals(ctx: Context) -> Any:
        """List proposals in id order, a page at a time (`nextLink` leads to the next)."""
        after = ctx.query.get("after")
        if after is not None and not (isinstance(after, str) and is_hex_id(after)):
            raise HttpError("after must be one proposal id (64 hex digits)", code="InvalidInput")
        page = proposals.list_proposals(ctx.tx, after=after)
        body: dict[str, Any] = {"value": page.proposals}
        if page.next_after is not None:
            version = ctx.query["api-version"]
            body["nextLink"] = (
                f"{GOV_PREFIX}/members/proposals?api-version={version}&after={page.next_after}"
            )
        return body

    @app.get("/members/proposals/{proposalId}", **read)
    @_gov
    def get_proposal(ctx: Context) -> Any:
        """Get a proposal."""
        return proposals.get_proposal(ctx.tx, ctx.path["proposalId"])

    @app.get("/members/proposals/{proposalId}/actions", **read)
    @_gov
    def get_proposal_actions(ctx: Context) -> Any:
        """Get a proposal's actions (the signed proposal body)."""
        body = proposals.get_actions(ctx.tx, ctx.path["proposalId"])
        return Response(body=body, content_type=JSON_CONTENT_TYPE)

    @app.post("/members/proposals/{proposalId}:withdraw", **write)
    @_gov
    def withdraw_proposal(ctx: Context) -> Any:
        """Withdraw a proposal (COSE_Sign1, msg type withdrawal)."""
        result = handlers.withdraw_proposal(
            ctx.tx,
            _check_cose_body(ctx),
            proposal_id=ctx.path["proposalId"],
            now_s=hooks.now_s(),
            policy=hooks.policy,
        )
        return _render(ctx, hooks, result)

    @app.post("/members/proposals/{proposalId}/ballots/{memberId}:submit", **write)
    @_gov
    def submit_ballot(ctx: Context) -> Any:
        """Submit a ballot (COSE_Sign1, msg type ballot)."""
        result = handlers.submit_ballot(
            ctx.tx,
            _check_cose_body(ctx),
            proposal_id=ctx.path["proposalId"],
            member_id=ctx.path["memberId"],
            now_s=hooks.now_s(),
            merkle_root=hooks.merkle_root(),
            policy=hooks.policy,
        )
        return _render(ctx, hooks, result)

    @app.get("/members/proposals/{proposalId}/ballots/{memberId}", **read)
    @_gov
    def get_ballot(ctx: Context) -> Any:
        """Get a member's ballot on a proposal."""
        return proposals.get_ballot(ctx.tx, ctx.path["proposalId"], ctx.path["memberId"])

    # ---------------------------------------------------------------- state digests

    @app.get("/members/state-digests/{memberId}", **read)
    @_gov
    def get_member_state_digest(ctx: Context) -> Any:
        """Get the state digest a member is expected to ack."""
        return get_state_digest(ctx.tx, ctx.path["memberId"])

    @app.post("/members/state-digests/{memberId}:update", **write)
    @_gov
    def update_state_digest(ctx: Context) -> Any:
        """Set a member's expected state digest to the current root (msg type state_digest)."""
        result = handlers.update_state_digest(
            ctx.tx,
            _check_cose_body(ctx),
            member_id=ctx.path["memberId"],
            now_s=hooks.now_s(),
            merkle_root=hooks.merkle_root(),
            policy=hooks.policy,
        )
        return _render(ctx, hooks, result)

    @app.post("/members/state-digests/{memberId}:ack", **write)
    @_gov
    def ack_state_digest(ctx: Context) -> Any:
        """Ack the state digest, activating the member (msg type ack)."""
        result = handlers.ack_state_digest(
            ctx.tx,
            _check_cose_body(ctx),
            member_id=ctx.path["memberId"],
            now_s=hooks.now_s(),
            policy=hooks.policy,
        )
        return _render(ctx, hooks, result)

    # ---------------------------------------------------------------- service state

    @app.get("/service/info", **read)
    @_gov
    def service_info(ctx: Context) -> Any:
        """Service status, certificate and configuration."""
        return queries.service_info(ctx.tx)

    @app.get("/service/members", **read)
    @_gov
    def members(ctx: Context) -> Any:
        """All members."""
        return queries.members(ctx.tx)

    @app.get("/service/members/{memberId}", **read)
    @_gov
    def member(ctx: Context) -> Any:
        """One member."""
        return queries.member(ctx.tx, ctx.path["memberId"])

    @app.get("/service/users", **read)
    @_gov
    def users(ctx: Context) -> Any:
        """All users."""
        return queries.users(ctx.tx)

    @app.get("/service/users/{userId}", **read)
    @_gov
    def user(ctx: Context) -> Any:
        """One user."""
        return queries.user(ctx.tx, ctx.path["userId"])

    @app.get("/service/nodes", **read)
    @_gov
    def nodes(ctx: Context) -> Any:
        """All nodes."""
        return queries.nodes(ctx.tx)

    @app.get("/service/nodes/{nodeId}", **read)
    @_gov
    def node(ctx: Context) -> Any:
        """One node."""
        return queries.node(ctx.tx, ctx.path["nodeId"])

    @app.get("/service/constitution", **read)
    @_gov
    def constitution(ctx: Context) -> Any:
        """The constitution document."""
        return queries.constitution(ctx.tx)

    @app.get("/service/join-policy", **read)
    @_gov
    def join_policy(ctx: Context) -> Any:
        """Measurements allowed to join."""
        return queries.join_policy(ctx.tx)


def make_gov_app(hooks: GovHooks) -> App:
    """A fresh "/gov" app with every governance route (and its OpenAPI at /gov/api)."""
    app = App("governance", prefix=GOV_PREFIX, max_body_bytes=MAX_ENVELOPE_BYTES)
    register(app, hooks)
    return app
