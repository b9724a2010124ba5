"""Redactor: the only way off a node. Enforces the event schema and removes secrets and PII before JetStream.

Modules, one job each: ``scan`` (secret/PII detectors, streaming scanner), ``shapes`` (route templates, query names,
SQL fingerprints), ``pseudonym`` (keyed tenant pseudonyms), ``policy`` (the allow-list and credential-header rules),
``records`` (applying all of them to batches, caches, merging), ``metrics``, ``service`` (NATS in, JetStream out).
"""
