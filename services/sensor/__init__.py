"""Per-node sensor: captures traffic (live or from capture files) and turns it into per-window ObservedCall records."""
