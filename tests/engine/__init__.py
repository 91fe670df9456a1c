"""Tests of lane.engine."""
