"""Charter's ledger: CCF's formats and proofs (entries, chunks, Merkle tree, signatures,
receipts, snapshots, COSE, certificates, attestation evidence) and offline audit; pure, no
sockets. Used by the enclave, the host and auditors alike, and the home of the service's own
state vocabulary (`service_state`: table names, statuses, the node record).

May import: nothing else of Charter's (DESIGN §2).
"""
