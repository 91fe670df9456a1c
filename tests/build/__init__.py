"""Tests of the build: the optional mypyc-compiled hot path (setup.py, `make compiled`)."""
