"""Sample applications the sandbox serves (logging, ACL-compatible, SCITT, DID:x509).

May import: what `charter.enclave_app` may (they are enclave code).
"""
