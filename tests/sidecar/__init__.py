"""Tests of lane.sidecar."""
