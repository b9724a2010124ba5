"""Certificates for loopback TLS servers in tests: ``costmesh.common.certs`` (the demo makes its own the same way)."""

from costmesh.common.certs import make_pki, server_chain

__all__ = ["make_pki", "server_chain"]
