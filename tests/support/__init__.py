"""Test doubles, recorders and fences shared by the test suites (not shipped)."""
