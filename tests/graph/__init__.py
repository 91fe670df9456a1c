"""Tests of lane.graph."""
