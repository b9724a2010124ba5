"""Redactor: the only way off a node. Enforces the event schema and removes secrets and PII before JetStream."""
