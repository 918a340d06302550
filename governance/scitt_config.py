"""The SCITT registration policy, set by governance (action `set_scitt_configuration`).

Microsoft's scitt-ccf-ledger keeps its configuration in `public:ccf.gov.scitt.configuration`
and changes it with the constitution action `set_scitt_configuration`, args
`{"configuration": {...}}`; Charter uses the same table and action name, so pyscitt's
`scitt governance propose_configuration` builds a proposal Charter accepts. Where the real
service runs a JavaScript `policyScript`, Charter's policy is declarative (no script engine in
the enclave): the fields below, all checked at registration by the SCITT sample app
(`charter.enclave_app.samples.scitt`).

    {"policy": {
        "acceptedAlgorithms":   ["ES256", ...]      (None: every algorithm the app verifies)
        "acceptedIssuers":      ["did:x509:0:sha256:...::subject:CN:...", ...]   (exact match)
        "acceptedContentTypes": ["application/json", ...]   (None: any; compared lower-case)
        "maxStatementBytes":    1024..1048576      (the size of the submitted COSE_Sign1)
    }}

Without a configuration nothing is registered (as the real service refuses issuers it has no
policy for).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from charter.governance import tables as t
from charter.governance.effects import NO_EFFECTS, ActionContext, Effects
from charter.governance.tx import KvTx

SCITT_CONFIGURATION = t.SCITT_CONFIGURATION

# The real service's MAX_ENTRY_SIZE_BYTES: no policy may raise the limit above it.
STATEMENT_BYTES_MAX = 1024 * 1024
STATEMENT_BYTES_MIN = 1024
ISSUERS_MAX = 256
CONTENT_TYPES_MAX = 256

# COSE algorithms the SCITT app verifies (JOSE names, as the real service's configuration).
Algorithm = Literal["ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"]
Issuer = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
ContentType = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ScittPolicy(_Strict):
    acceptedAlgorithms: list[Algorithm] | None = Field(default=None, max_length=7)
    acceptedIssuers: list[Issuer] = Field(default_factory=list, max_length=ISSUERS_MAX)
    acceptedContentTypes: list[ContentType] | None = Field(
        default=None, max_length=CONTENT_TYPES_MAX
    )
    maxStatementBytes: int = Field(
        default=STATEMENT_BYTES_MAX, ge=STATEMENT_BYTES_MIN, le=STATEMENT_BYTES_MAX
    )


class ScittConfiguration(_Strict):
    policy: ScittPolicy = Field(default_factory=ScittPolicy)


class SetScittConfigurationArgs(_Strict):
    configuration: ScittConfiguration


def check_set_scitt_configuration(tx: KvTx, args: SetScittConfigurationArgs) -> None:
    """Everything that can be wrong is caught by the schema."""


def apply_set_scitt_configuration(
    tx: KvTx, args: SetScittConfigurationArgs, ctx: ActionContext
) -> Effects:
    t.put_json(
        tx,
        SCITT_CONFIGURATION,
        t.SINGLETON_KEY,
        args.configuration.model_dump(mode="json", exclude_none=True),
    )
    return NO_EFFECTS


def load_scitt_configuration(tx: KvTx) -> ScittConfiguration | None:
    """The configuration in force, or None if governance never set one."""
    raw = tx.get(SCITT_CONFIGURATION, t.SINGLETON_KEY)
    if raw is None:
        return None
    value: Any = t.load_json(raw, what=SCITT_CONFIGURATION)
    return ScittConfiguration.model_validate(value)
