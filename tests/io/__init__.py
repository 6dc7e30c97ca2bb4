"""Tests of the io layer (see tests/conftest.py)."""
