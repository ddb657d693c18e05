"""Test-only builders of PyTorch reference models with random weights, saved in the formats users have."""
