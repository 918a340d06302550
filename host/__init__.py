"""Charter's host: the untrusted partition (sockets, disk, timers, process supervision). It
accepts connections, relays sealed node-to-node frames, writes and reads ledger chunks and
snapshots, and never holds a key or a plaintext (DESIGN §3).

May import: `charter.ledger` and `charter.enclave_app.interface` only.
"""
