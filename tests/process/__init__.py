"""Tests of lane.process."""
