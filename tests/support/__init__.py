"""Helpers the tests share: processes and servers they start and stop, the fake Kubernetes API
server, RBAC checks, mesh test vectors and a stand-in for Istio's metrics. No tests here."""
