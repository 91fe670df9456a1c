"""Tests of lane.telemetry."""
