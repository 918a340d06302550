"""Charter's client side (`charter`): the Python SDK for users, members and auditors, the
`charter` command line and the sandbox, which starts nodes as processes.

May import: `charter.ledger` and `charter.governance`; never `charter.enclave_app` or
`charter.host` (nodes are separate processes; the sandbox runs `python -m charter.host`).
"""
