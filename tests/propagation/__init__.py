"""Tests of lane.propagation."""
