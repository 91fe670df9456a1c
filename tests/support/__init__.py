"""Helpers the tests share: processes and servers they start and stop, the fake Kubernetes API
server, RBAC checks and mesh test vectors. No tests here."""
