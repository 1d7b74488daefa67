"""The multi-process tests' other workers are in tests/conftest.py."""
