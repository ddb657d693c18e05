"""The MLX worker: a spawned process that owns MLX and runs one job at a time for a ``JobManager``.

It is spawned, never forked (forked children of a process that ran MLX hang), and MLX runs on its main thread
only. A native crash or a kill takes down this process, not the server: the manager marks the job failed and
starts a new worker. Messages (over a ``multiprocessing`` pipe):

  manager -> worker   ("run", job_id, kind, request, job_dir) | ("stop",)
  worker -> manager   ("ready", pid) | ("progress", job_id, event) | ("done", job_id, result)
                      | ("failed", job_id, message, detail, error_type)
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path


def scrub(message: str, job_dir: Path, home: Path) -> str:
    """A message fit for clients: no server paths (job files by their relative name, the home as a variable)."""
    for prefix in {str(job_dir.resolve()), str(job_dir)}:
        message = message.replace(prefix + os.sep, "").replace(prefix, "job")
    for prefix in {str(home.resolve()), str(home)}:
        message = message.replace(prefix, "$RVC_MLX_HOME")
    return message


def worker_main(conn, home: str, cache_items: int, cache_bytes: int) -> None:
    os.environ["RVC_MLX_HOME"] = home
    import rvc_mlx  # noqa: F401  (the BLAS preload must come before MLX)
    from ..errors import RvcMlxError
    from .cache import ConverterCache
    from .tasks import Context, run
    from .voices import VoiceLibrary

    ctx = Context(VoiceLibrary(Path(home) / "voices"), ConverterCache(cache_items, cache_bytes))
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg[0] != "run":
            break
        _, job_id, kind, request, job_dir = msg
        job_dir = Path(job_dir)

        def emit(event, job_id=job_id):
            conn.send(("progress", job_id, event))

        try:
            result = run(kind, request, job_dir, ctx, emit)
            conn.send(("done", job_id, result))
        except RvcMlxError as e:
            conn.send(("failed", job_id, scrub(str(e), job_dir, Path(home)), None, type(e).__name__))
        except MemoryError:
            ctx.cache.lru.clear()
            conn.send(("failed", job_id, "out of memory; the model cache was emptied, try again", None, "MemoryError"))
        except Exception as e:  # a bug, not a user error: one line for the client, the traceback for the log
            conn.send(("failed", job_id, scrub(f"internal error: {type(e).__name__}: {e}", job_dir, Path(home)),
                       traceback.format_exc(), "InternalError"))
    conn.close()
