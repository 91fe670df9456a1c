"""Tests of lane.gateway."""
