"""Shared test fixtures.

torch is imported before rvc_mlx so torch's own BLAS loads first (see rvc_mlx.backend). Reference models are
built by the tests themselves (random weights in the formats users have) and cached under pytest's cache dir,
so a second run skips rebuilding them. Nothing is downloaded.
"""

import os
import sys
from pathlib import Path

import pytest

import torch  # noqa: F401  (must load before mlx; see module docstring)

import rvc_mlx  # noqa: F401,E402  (BLAS preload)

# ultimate-rvc (reference for Applio's vocoders) writes ./logs/ on import unless told not to.
os.environ.setdefault("URVC_NO_LOGGING", "1")
TESTS_DIR = Path(__file__).parent
# rvc==0.3.5's Config() parses sys.argv at import/construct time; keep pytest's argv away from it.
sys.argv = sys.argv[:1]


@pytest.fixture(scope="session")
def ref_cache(request) -> Path:
    """A persistent directory for built reference models/outputs (under .pytest_cache)."""
    path = Path(request.config.cache.mkdir("rvc-reference"))
    return path


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size, options="")`` -> a folder on a real tmpfs of ``size`` (e.g. ``"2m"``), unmounted after the
    test. Needs root with CAP_SYS_ADMIN, as on the CI machines; the test is skipped where mounting fails."""
    import subprocess

    mounted = []

    def mount(size: str, options: str = "") -> Path:
        folder = tmp_path / f"tmpfs-{len(mounted)}"
        folder.mkdir()
        opts = ",".join(filter(None, [options, f"size={size}"]))
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True)
        if made.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)
