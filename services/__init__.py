"""costmesh: runtime cost attribution for multi-tenant SaaS.

The folder ``services/`` is this package: one sub-package per service (``sensor``, ``redactor``, ``attributor``,
``billing``, ``api``) and ``common`` for what they share (message contracts, config, NATS and database helpers,
metrics, the embedded runtime). The Cython hot path is ``costmesh.native``, built from ``native/``.
"""

__version__ = "0.1.0"
