"""Processes: the listening server, admin endpoints, workers and their supervisor, readiness."""
