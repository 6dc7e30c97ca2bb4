"""Tests of the unit layer (see tests/conftest.py)."""
