"""API: aiohttp service for cost and usage queries, the graph, alerts; Prometheus metrics and health."""
