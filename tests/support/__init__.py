"""Helpers shared by tests (not fixtures: those live in conftest.py files and tests/ground/)."""
