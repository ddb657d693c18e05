"""Converters from PyTorch checkpoints to the rvc-mlx format (see ``store``)."""
