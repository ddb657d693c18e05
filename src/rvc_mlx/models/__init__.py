"""One module per network, each with a config dataclass and an ``mlx.nn.Module``."""
