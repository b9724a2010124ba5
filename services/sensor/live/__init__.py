"""Live capture on the node (``costmesh sensor`` without ``--replay``), one job per module:

- ``capture``: ``LiveCapture`` owns the kernel programs, the rings and the window loop.
- ``ring``: one PACKET_RX_RING (TPACKET_V3) per interface, read a block at a time (walked by ``costmesh.native.ring``).
- ``flows``: the kernel's per-flow byte and packet counters as ``FlowVolume`` records.
- ``tls_probes``: uprobes on OpenSSL in every ``libssl.so.3`` in use; ``tls``: its plaintext through the engine.
- ``ai_marker``: which flows are AI traffic (SNI or Host of their first frame), marked in the kernel.
- ``identity``, ``identity_k8s``: who is at each end of a flow (workloads table, Kubernetes, ``/proc``).
- ``sinks``: the seams to the parsers and what a window hands on; ``metrics``: Prometheus metrics.
- ``service``: the live mode of the sensor service (capture, name, send).

Nothing here is imported unless the sensor captures live (the replay path never loads it).
"""
