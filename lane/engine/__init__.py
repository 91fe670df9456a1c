"""The HTTP/1.1 engine: bytes to requests and answers and back, connection state, upstream pool,
bodies, listeners. It knows nothing about lanes."""
