"""The MLX worker: a spawned process that owns MLX and runs one job at a time for a ``JobManager``.

It is spawned, never forked (forked children of a process that ran MLX hang), and MLX runs on its main thread
only. A native crash or a kill takes down this process, not the server: the manager marks the job failed and
starts a new worker. Messages (over a ``multiprocessing`` pipe):

  manager -> worker   ("run", job_id, kind, request, job_dir) | ("stop",)
  worker -> manager   ("ready", pid) | ("progress", job_id, event) | ("done", job_id, result)
                      | ("failed", job_id, message, detail, error_type)
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import traceback
from pathlib import Path


_ENV_LOCK = threading.Lock()


def spawn_process(target, args: tuple, name: str, env: dict[str, str] | None = None):
    """Start ``target(child_conn, *args)`` in a spawned (never forked: MLX may have run here) daemon process with
    ``env`` added to its environment from its first instruction (e.g. BLAS thread counts, which OpenBLAS reads
    when it loads). Returns ``(process, parent_conn)``."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)
    with _ENV_LOCK:  # spawn copies os.environ when it starts the child
        saved = {k: os.environ.get(k) for k in env or {}}
        os.environ.update(env or {})
        try:
            proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    child.close()
    return proc, parent


def scrub(message: str, job_dir: Path, home: Path) -> str:
    """A message fit for clients: no server paths (job files by their relative name, the home as a variable)."""
    for prefix in {str(job_dir.resolve()), str(job_dir)}:
        message = message.replace(prefix + os.sep, "").replace(prefix, "job")
    for prefix in {str(home.resolve()), str(home)}:
        message = message.replace(prefix, "$RVC_MLX_HOME")
    return message


def requests(conn, kind: str):
    """The arguments of each ``(kind, ...)`` message from the parent, until it closes the pipe or sends anything
    else (its stop message)."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] != kind:
            return
        yield msg[1:]


def worker_main(conn, home: str, cache_items: int, cache_bytes: int) -> None:
    os.environ["RVC_MLX_HOME"] = home
    import rvc_mlx  # noqa: F401  (the BLAS preload must come before MLX)
    from ..errors import RvcMlxError
    from .cache import ConverterCache
    from .tasks import Context, run
    from .voices import VoiceLibrary

    ctx = Context(VoiceLibrary(Path(home) / "voices"), ConverterCache(cache_items, cache_bytes))
    conn.send(("ready", os.getpid()))
    for job_id, kind, request, job_dir in requests(conn, "run"):
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
