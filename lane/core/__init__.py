"""The pure core: config model and loading, tags, baggage, the lane carrier, rules, hashing, hop record,
routing with the fallback walk, errors. No I/O, no aiohttp, no prometheus, no OpenTelemetry SDK."""
