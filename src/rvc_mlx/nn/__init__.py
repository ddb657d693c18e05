"""Shared layers and CPU-fast formulations used by every network."""
