"""The demo's errors (drawn in ``costmesh.common.errors``): each says which service or workload failed and where its
log is."""

from __future__ import annotations

from costmesh.common.errors import CostmeshError


class DemoError(CostmeshError):
    """The demo could not finish (a service or workload failed, or a wait timed out); the message says where."""


class CaptureUnavailable(DemoError):
    """Neither eBPF nor a packet socket is allowed here (not root, no capabilities): the SaaS cannot be observed."""


class SaasError(DemoError):
    """The SaaS could not run: a workload died or did not get ready; the message names it and its log."""
