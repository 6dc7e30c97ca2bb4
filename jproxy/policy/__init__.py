"""Decisions with no I/O: egress, admission budgets, host names, fd budget, passwords."""
