"""Client test fixtures; they live in client_helpers.py (see its docstring)."""

from client_helpers import closed_port_url, pki, threaded_server, tls_server

__all__ = ["closed_port_url", "pki", "threaded_server", "tls_server"]
