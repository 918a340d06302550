"""Charter's governance: members, users, proposals, ballots, the constitution and actions, as
pure functions over a KV transaction (DESIGN §7). Returns `Effects` for what it cannot do
itself (sign with the service key, touch ledger secrets).

May import: `charter.ledger` only.
"""
