"""Runs under pyscitt's own virtual environment (scripts/pyscitt-venv), never Charter's.

What the `scitt` command line does not do, done with pyscitt 0.10.1's library, unmodified:

    identity DIR           a root CA and a leaf signing identity made with `pyscitt.crypto`
                           (as scitt-ccf-ledger's tests make them); writes DIR/key.pem,
                           DIR/chain.pem (leaf first) and prints the did:x509 issuer
    fetch URL CACERT TX DIR   `Client.get_receipt`, `Client.get_transparent_statement` and
                           `Client.get_parameters` into DIR/receipt.cose,
                           DIR/transparent.cose and DIR/trust/parameters.json
    verify STATEMENT TS TRUSTDIR   `verify_transparent_statement` (the client's verifier, over
                           `ccf.cose.verify_receipt`) of TS for the signed statement
    verify-dynamic STATEMENT TS    the same with a `DynamicTrustStore` over `httpx.get`: the
                           keys come from https://<receipt issuer>/.well-known/...; TLS is
                           verified the way httpx does by default (certifi's roots, or the
                           file named by SSL_CERT_FILE)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
from pyscitt import crypto
from pyscitt.client import Client
from pyscitt.verify import DynamicTrustStore, StaticTrustStore, verify_transparent_statement

# The EKU scitt-ccf-ledger's tests put in leaf certificates and name in did:x509 issuers.
EKU = "1.3.6.1.4.1.311.10.3.13"


def identity(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    root_key, _ = crypto.generate_keypair("ec", ec_curve="P-256")
    root_cert = crypto.generate_cert(root_key, ca=True)
    leaf_key, _ = crypto.generate_keypair("ec", ec_curve="P-256")
    leaf_cert = crypto.generate_cert(leaf_key, issuer=(root_cert, root_key), add_eku=EKU)
    (directory / "key.pem").write_text(leaf_key)
    (directory / "chain.pem").write_text(leaf_cert + root_cert)
    fingerprint = crypto.get_cert_fingerprint_b64url(root_cert)
    print(f"did:x509:0:sha256:{fingerprint}::eku:{EKU}")


def fetch(url: str, cacert: str, tx: str, directory: Path) -> None:
    client = Client(url, cacert=cacert)
    (directory / "trust").mkdir(parents=True, exist_ok=True)
    (directory / "receipt.cose").write_bytes(client.get_receipt(tx))
    (directory / "transparent.cose").write_bytes(client.get_transparent_statement(tx))
    parameters = client.get_parameters().as_dict()
    (directory / "trust" / "parameters.json").write_text(json.dumps(parameters))


def verify(statement: Path, transparent: Path, trust: Path) -> None:
    store = StaticTrustStore.load(trust)
    verify_transparent_statement(transparent.read_bytes(), store, statement.read_bytes())
    print("verified")


def verify_dynamic(statement: Path, transparent: Path) -> None:
    store = DynamicTrustStore(httpx.get)
    verify_transparent_statement(transparent.read_bytes(), store, statement.read_bytes())
    print("verified")


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "identity":
        identity(Path(args[0]))
    elif command == "fetch":
        fetch(args[0], args[1], args[2], Path(args[3]))
    elif command == "verify":
        verify(Path(args[0]), Path(args[1]), Path(args[2]))
    elif command == "verify-dynamic":
        verify_dynamic(Path(args[0]), Path(args[1]))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
