"""Writing outputs atomically: into a temporary sibling, then renamed, so a failure never leaves a partial file.

Outputs get the permissions any other tool's output gets — 0o666 for files and 0o777 for folders, less the umask
(0o644 / 0o755 under umask 022) — not the private 0o600 / 0o700 of ``tempfile.mkstemp``/``mkdtemp`` or of
writers that create private files themselves (safetensors' ``save_file`` does). The mode is learnt from the
kernel by creating the temporary with 0o666 / 0o777 (so the umask, and a default ACL, apply) and reading it back;
the process umask is never changed (that would race with other threads creating files).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Callable

TEMP_SUFFIX = ".part"  # marks an unfinished output next to its final name
FILE_MODE = 0o666  # before the umask
DIR_MODE = 0o777
_NAME_TRIES = 100


def _unique(parent: Path, name: str, suffix: str, create: Callable[[Path], None]) -> Path:
    for _ in range(_NAME_TRIES):
        candidate = parent / f".{name}.{secrets.token_hex(4)}{suffix}"
        try:
            create(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: no free temporary name for {name}")


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` with the umask's file mode; on any failure the
    temporary is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _unique(path.parent, path.name, TEMP_SUFFIX + path.suffix, _create_file)
    try:
        mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 less the umask, as the kernel applied it
        write(str(tmp))
        os.chmod(tmp, mode)  # the writer may have replaced the file by a private one
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def staging_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new empty folder in ``parent`` (a hidden sibling of ``parent/name``) to build an output folder in;
    created with 0o777 less the umask. Finish with :func:`publish_modes`, then rename it into place."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return _unique(parent, name, TEMP_SUFFIX, lambda p: os.mkdir(p, DIR_MODE))


def publish_modes(folder: str | os.PathLike) -> None:
    """Give every file and folder under ``folder`` (and ``folder`` itself, made by :func:`staging_dir`) the
    umask's modes: files 0o666, folders 0o777, less the umask (read from ``folder``'s own mode)."""
    folder = Path(folder)
    dir_mode = stat.S_IMODE(folder.stat().st_mode)
    file_mode = dir_mode & FILE_MODE
    for f in folder.rglob("*"):
        if not f.is_symlink():
            f.chmod(dir_mode if f.is_dir() else file_mode)
