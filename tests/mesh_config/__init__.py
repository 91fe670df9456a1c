"""Tests of mesh_config."""
