"""The propagation library apps import: the lane in OpenTelemetry baggage and the tag header,
aiohttp and gRPC hooks, the executor helper and the opentelemetry-instrument entry points."""
