"""costmesh: runtime cost attribution for multi-tenant SaaS.

The folder ``services/`` is this package: one sub-package per service (``sensor``, ``redactor``, ``attributor``,
``billing``, ``api``), ``common`` for what they share (message contracts, config, NATS and database helpers,
migrations, metrics, the embedded runtime) and ``cli`` for the one entry point. The compiled hot paths are
``costmesh.native``, built from ``native/``. Which room may import which: the README's layout section, checked by
``tests/test_layering.py``.
"""

__version__ = "0.1.0"
