"""A node's identity: the ids derived from its key."""

from __future__ import annotations

from charter.enclave_app.identity import Identity
from charter.ledger import certs


def test_node_id_and_public_key_follow_the_node_key_they_are_derived_from() -> None:
    """The node id and SubjectPublicKeyInfo are derived once per key (FORMATS §4.1), and
    are those of the key the identity holds now, also after a restart from its sealed form."""
    key = certs.new_key()
    identity = Identity(node_key=key)
    assert identity.node_id == certs.node_id(key)
    assert identity.public_key_der == certs.spki_der(key.public_key())
    assert identity.node_id == certs.node_id(key)  # the remembered value
    restarted = Identity.from_bytes(identity.to_bytes())
    assert restarted.node_id == identity.node_id
    other = certs.new_key()
    identity.node_key = other
    assert identity.node_id == certs.node_id(other) != certs.node_id(key)
    assert identity.public_key_der == certs.spki_der(other.public_key())
