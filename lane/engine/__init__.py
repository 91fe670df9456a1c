"""The engine: bytes to requests and answers and back, for HTTP/1.1 and HTTP/2 (h2c, gRPC), connection
state, upstream pools, bodies, listeners. It knows nothing about lanes."""
