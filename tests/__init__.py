"""Test package: import builders as ``from tests.reference import ...`` (the repo root is on sys.path)."""
