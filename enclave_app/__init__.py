"""Charter's enclave: the trusted partition (KV store, app framework, TLS and HTTP, keys,
attestation, node-to-node channels) and the runtime that drives consensus and governance.
`interface/` is the host ⇄ enclave contract, the only part the host imports.

May import: `charter.ledger`, `charter.consensus`, `charter.governance`; never `charter.host`
or the client (`charter.sdk`, `charter.cli`, ...).
"""
