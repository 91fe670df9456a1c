"""Tests of lane.core."""
