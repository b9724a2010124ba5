"""Attributor: applies redacted call batches exactly once into the consumption store and the dependency graph."""
