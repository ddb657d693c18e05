"""rvc-mlx: RVC voice conversion on Apple's MLX.

Importing the package loads an optimized BLAS before MLX (see ``backend``); nothing else happens at import.
"""

from .backend import preload_blas as _preload_blas

_preload_blas()

__version__ = "0.1.0"
