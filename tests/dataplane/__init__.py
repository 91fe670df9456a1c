"""Tests of lane.dataplane."""
