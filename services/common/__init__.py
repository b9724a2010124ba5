"""What the services share: message contracts, config, NATS and database helpers, metrics, the embedded runtime."""
