"""Tests of docker/."""
