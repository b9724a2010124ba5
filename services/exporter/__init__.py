"""OTLP exporter: the redacted event stream, as OpenTelemetry metrics (and logs), to a customer's collector."""
