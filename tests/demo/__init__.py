"""Tests of lane.demo."""
