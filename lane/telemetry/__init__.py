"""Telemetry: Prometheus metrics (with the batched tally), OpenTelemetry tracing, the access log."""
