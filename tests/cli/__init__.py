"""Tests of lane.cli."""
