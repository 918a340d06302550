"""Errors raised by the governance package, and the service's one table of HTTP statuses.

Every rejection carries a stable machine-readable `code` (CCF's where CCF has one) and a
message for people, in the shape every package's errors share: `XError(message, *, code)`.

`STATUS_BY_CODE` is the only place a code meets its HTTP status: the governance endpoints,
the node endpoints, the request pipeline (auth, backpressure), the HTTP session layer and the
framework's `HttpError` all look the status up here, so one code is always sent with one
status. It lives in `governance` because that is the lowest package on the HTTP side that
both `enclave_app` (which answers) and `client` (which reads answers) may import.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

_CODES_BY_STATUS: Final[dict[int, tuple[str, ...]]] = {
    # The request is malformed or asks for something the state does not allow.
    400: (
        # An index query outside what this node's index holds, or wider than one page.
        "IndexRangeNotCovered",
        "IndexRangeTooLarge",
        "InvalidActionArgs",
        "InvalidBallot",
        "InvalidCollectionId",
        "InvalidConstitution",
        "InvalidCoseSign1",
        "InvalidCreatedAt",
        # Genesis runs at node start, never behind HTTP; all its refusals are bad input.
        "InvalidGenesis",
        "InvalidHeaderValue",
        "InvalidInput",
        "InvalidNode",
        "InvalidProposal",
        # A submitted recovery share that is malformed or not the one issued to its member.
        "InvalidRecoveryShare",
        "InvalidQueryParameterValue",
        "NotEnoughRecoveryShares",
        "InvalidResourceName",
        "InvalidRole",
        "InvalidUserId",
        "MissingApiVersionParameter",
        "ProposalCreatedTooLongAgo",
        "ProposalFailedToValidate",
        "ProposalNotOpen",
        "ProposalReplay",
        "RequestExpired",
        "RequestInFuture",
        "RequestReplay",
        "StateDigestMismatch",
        # A historical query for a transaction that is not committed (CCF's code).
        "TransactionPendingOrUnknown",
        "UnknownAction",
        "UnsupportedApiVersion",
        "UnsupportedApiVersionValue",
        "VoteAlreadyExists",
    ),
    # No credential, or one that does not prove who the caller is.
    401: (
        "InvalidAuthentication",
        "InvalidClientCertificate",
        "InvalidKid",
        "InvalidMessageType",
        "InvalidSignature",
        "InvalidTokenFormat",
        "MissingBearerToken",
        "MissingClientCertificate",
        "MissingCoseSign1",
        "TokenAlgorithmNotAllowed",
        "TokenAudienceInvalid",
        "TokenClaimMissing",
        "TokenExpired",
        "TokenIssuerInvalid",
        "TokenKeyUnknown",
        "TokenKidMissing",
        "TokenNotYetValid",
        "TokenSignatureInvalid",
        "UnknownMember",
        "UnknownMemberCertificate",
        "UnknownUser",
        "UnknownUserCertificate",
    ),
    # The caller is known but may not do this.
    403: (
        "AuthorizationFailed",
        "Forbidden",
        "InvalidQuote",
        "LedgerExplorerDisabled",
        "MemberNotActive",
        "MemberRetired",
        "NodeAlreadyRecovering",
        "NodeRetired",
        # Recovery: a member who holds no recovery share; a node or service not recovering.
        "NotRecoveryMember",
        "ServiceNotRecovering",
        "ServiceNotWaitingForRecoveryShares",
        # A download endpoint whose feature is not enabled on this RPC interface.
        "OperatorFeatureNotEnabled",
        "ProposerNotAllowed",
    ),
    404: (
        "ConstitutionNotFound",
        "EntryNotFound",
        # A historical query for entries the host's ledger files do not hold (the reason is
        # in the message: deleted, not in its ledger directories, before its snapshot).
        "HistoricalStateNotAvailable",
        # The ACL sample: a rolled-back transaction id (its SDK stops waiting on it).
        "InvalidTransactionId",
        "ProposalNotFound",
        "RecoverySharesNotIssued",
        "ReceiptNotAvailable",
        "ResourceNotFound",
        "SnapshotNotFound",
        "TransactionInvalid",
        "TransactionNotFound",
        "UserNotFound",
        "VoteNotFound",
    ),
    405: ("MethodNotAllowed",),
    408: ("RequestTimeout",),
    # The recovered ledger secrets do not decrypt the recovering node's ledger copy.
    409: ("RecoveryLedgerMismatch", "UserConflict"),
    413: ("RequestTooLarge",),
    414: ("RequestUriTooLong",),
    415: ("UnsupportedContentType",),
    422: ("ValidationError",),
    429: ("TooManyOpenProposals", "TooManyRequests"),
    431: ("RequestHeaderTooLarge",),
    500: ("HistoricalVerificationFailed", "InternalError", "RecoveryFailed"),
    # A forwarded request's answer that the primary could not send back over the channel.
    # Or a file the host read back that the enclave refuses to serve, or an index blob the
    # host handed back that was not the one this enclave stored.
    502: ("HostFileInvalid", "IndexBlobRejected", "ResponseTooLarge"),
    # Not now: the client retries (these answers carry Retry-After).
    503: (
        "FrontendNotOpen",
        "HostBacklog",
        "NoPrimary",
        "NotPrimary",
        "ServiceNotReady",
        "SessionLimitReached",
        "TooManyPendingNodes",
        "TooManyPendingTransactions",
    ),
    504: ("GatewayTimeout",),
    505: ("UnsupportedHttpVersion",),
}

STATUS_BY_CODE: Final[Mapping[str, int]] = MappingProxyType(
    {code: status for status, codes in _CODES_BY_STATUS.items() for code in codes}
)
# A code listed under two statuses would silently keep the last one.
assert len(STATUS_BY_CODE) == sum(map(len, _CODES_BY_STATUS.values())), "a code is listed twice"
assert all(400 <= status <= 599 for status in _CODES_BY_STATUS)


def http_status(code: str) -> int:
    """The HTTP status the service answers `code` with; every code it sends has a row."""
    status = STATUS_BY_CODE.get(code)
    assert status is not None, f"error code {code!r} has no row in STATUS_BY_CODE"
    return status


class GovernanceError(Exception):
    """A governance request or action that is refused; the KV transaction must be dropped."""

    def __init__(self, message: str, *, code: str) -> None:
        assert code in STATUS_BY_CODE, f"error code {code!r} has no row in STATUS_BY_CODE"
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return STATUS_BY_CODE[self.code]

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}
