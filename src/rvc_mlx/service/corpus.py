"""Corpus batches: convert many files with one voice, in this process, in N spawned workers, or on Ray.

``convert_corpus(files, out_dir, options, paths, workers=N, ray=ADDRESS)`` is what ``rvc-mlx batch`` runs. One
coordinator (the calling process) plans the batch, hands files out longest first, one at a time, to worker slots
that each load the models once, and is the only writer of the manifest ``OUT/.rvc-mlx-batch.json``. Slots are:

  workers=1           the calling process itself (sequential)
  workers=N           N processes started with *spawn* (never fork: forked children of a process that ran MLX
                      hang), each with cores / N BLAS threads (``worker_env``), MLX on their main thread
  ray=ADDRESS|"local" one Ray actor per slot (``pip install 'rvc-mlx[ray]'``); every node must see the input,
                      output and model paths under the same names (a shared filesystem)

A file is held by one slot at a time; if that slot's process dies the file goes back to the front of the queue
(at most ``retries`` times) and the slot is replaced, so no file is converted twice or lost. Outputs are written
atomically by ``tasks.convert_file``, so an existing output is always complete: reruns skip existing outputs
(``overwrite=True``: convert them again). The manifest records the settings (options, format, model hashes) and
per-file states; a rerun with other settings is refused unless ``force=True``, which converts every file again.
A lock file keeps two batches from writing into one folder at once.

What a batch does with trouble: a silent take (digital silence) is skipped and reported, not failed; a file that
cannot be read or converted fails with one line and the batch goes on; a full output device stops the batch (every
later file would fail the same way): the files not started are listed and a rerun, after freeing space, converts
them. A batch killed at any point leaves only complete outputs; the temporary files of the writes it interrupted are
removed by the next run in that folder.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import DiskFullError, InputError, OutputError, RvcMlxError, SilentAudioError
from ..options import ConversionOptions, parse_options
from .models import ModelPaths

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aiff", ".aif", ".webm", ".mp4")
MANIFEST = ".rvc-mlx-batch.json"
LOCK = ".rvc-mlx-batch.lock"
WORKERS_LOCK = ".rvc-mlx-batch.workers.lock"  # held shared by every worker process while it lives
WORKERS_GONE_WAIT_S = 600.0  # how long a new batch waits for the workers of a killed one to finish their file
MANIFEST_FORMAT = "rvc-mlx-batch"
MANIFEST_VERSION = 1
MANIFEST_EVERY_S = 1.0  # rewrite the manifest at most this often (and at the end); outputs are atomic anyway
BYTES_PER_SECOND = 16000  # length estimate for files whose header gives none (~128 kbit/s compressed audio)
DEFAULT_RETRIES = 2  # times a file is handed out again after the worker holding it died
POLL_S = 0.5
RAY_OBJECT_STORE_BYTES = 100 << 20  # only paths and small results travel through it (Ray's minimum is 75 MiB)
RAY_MISSING = "Ray is not installed: pip install 'rvc-mlx[ray]'"

Emit = Callable[[dict], None]


@dataclass
class CorpusSummary:
    """What a corpus batch did. ``converted``/``skipped`` are output paths relative to the output folder
    (``skipped``: the output existed); ``silent``, ``failed`` and ``retried`` are ``(input, reason)`` pairs
    (``silent``: digital silence, nothing written; ``retried``: a worker died holding the file). ``stopped``: why
    the batch stopped early (a full device); ``not_started``: the inputs it did not get to."""

    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    silent: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    retried: list[tuple[str, str]] = field(default_factory=list)
    stopped: str | None = None
    not_started: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    workers: int = 1
    backend: str = "process"
    audio_seconds: float = 0.0  # input audio converted
    wall_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"converted": self.converted, "skipped": self.skipped,
                "silent": [{"input": i, "reason": r} for i, r in self.silent],
                "failed": [{"input": i, "error": e} for i, e in self.failed],
                "stopped": self.stopped, "not_started": self.not_started, "warnings": self.warnings,
                "retried": [{"input": i, "reason": r} for i, r in self.retried], "workers": self.workers,
                "backend": self.backend, "audio_seconds": round(self.audio_seconds, 3),
                "wall_seconds": round(self.wall_seconds, 3)}


@dataclass
class _Item:
    index: int
    src: Path
    out: Path
    name: str  # how the summary names the input (relative to the input folder when there is one)
    given: str  # the input's path as the caller gave it (errors name it so, not by its absolute path)
    key: str  # the output, relative to the output folder (the manifest's key)
    seconds: float  # estimated length, for longest-first order


def find_inputs(in_dir: str | Path) -> list[Path]:
    """Audio files under ``in_dir`` (recursively, by suffix), sorted; one-line error when there are none."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise InputError(f"{in_dir}: not a directory")
    files = sorted(p for p in in_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise InputError(f"{in_dir}: no audio files found ({', '.join(AUDIO_SUFFIXES)})")
    return files


def estimate_seconds(path: Path) -> float:
    """The length of an audio file from its header (no decoding); from its size when the header says nothing."""
    from ..audio import header_seconds
    from ..errors import AudioError

    try:
        seconds = header_seconds(path)
    except AudioError:
        seconds = None
    if seconds:
        return seconds
    try:
        return path.stat().st_size / BYTES_PER_SECOND
    except OSError:
        return 0.0


def model_hashes(paths: ModelPaths) -> dict[str, str]:
    """sha256 of every model file a conversion uses (name -> hex digest)."""
    from ..convert import sha256_file

    return {k: sha256_file(v) for k, v in paths.to_dict().items() if v}


def plan(files: list[Path], out_dir: Path, fmt: str, in_dir: Path | None) -> tuple[list[_Item], list[tuple]]:
    """One item per input (output at the same relative path with suffix ``fmt``), and ``(input, reason)`` for
    inputs whose output another input already claims (``a.wav`` and ``a.flac`` -> ``a.wav``: the first wins)."""
    items, clashes, owner = [], [], {}
    for i, src in enumerate(files):
        src = Path(src)
        rel = src.relative_to(in_dir) if in_dir is not None else Path(src.name)
        key = rel.with_suffix(f".{fmt}").as_posix()
        name = rel.as_posix()
        if key in owner:
            clashes.append((name, f"{name}: its output {key} is also the output of {owner[key]}; rename one"))
            continue
        owner[key] = name
        items.append(_Item(i, src.resolve(), (out_dir / key).resolve(), name, str(src), key,
                           estimate_seconds(src)))
    return items, clashes


# -- manifest --------------------------------------------------------------------------------------------------


class Manifest:
    """``OUT/.rvc-mlx-batch.json``: the settings a folder's outputs were made with, and each file's state."""

    def __init__(self, out_dir: Path, settings: dict):
        self.path = out_dir / MANIFEST
        self.settings = settings
        self.files: dict[str, dict] = {}
        self._written = 0.0

    @staticmethod
    def read(out_dir: Path) -> dict | None:
        path = out_dir / MANIFEST
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: unreadable batch manifest ({e}); remove it or use --force") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise InputError(f"{path}: not an rvc-mlx batch manifest; remove it or use --force")
        return data

    def set(self, key: str, **entry) -> str | None:
        """Record a file's state; rewrites the manifest at most every ``MANIFEST_EVERY_S`` (see :meth:`write`)."""
        self.files[key] = entry
        if time.monotonic() - self._written >= MANIFEST_EVERY_S:
            return self.write()
        return None

    def write(self) -> str | None:
        """Rewrite the manifest atomically. Returns None, or why it could not be written (a full device): the
        previous manifest then stays, and since outputs are atomic a rerun still skips every finished file."""
        from ..atomic import atomic_write

        data = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "settings": self.settings,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": dict(sorted(self.files.items()))}
        self._written = time.monotonic()
        try:
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))
        except OSError as e:
            return f"{self.path}: could not be updated ({e.strerror or type(e).__name__})"
        return None


def settings_changes(old: dict, new: dict) -> list[str]:
    """What differs between two manifests' settings, as short phrases (``pitch 0 -> 12``, ``voice model``)."""
    changes = []
    for name in sorted(set(old.get("options", {})) | set(new["options"])):
        a, b = old.get("options", {}).get(name), new["options"].get(name)
        if a != b:
            changes.append(f"{name} {a} -> {b}")
    if old.get("format") != new["format"]:
        changes.append(f"format {old.get('format')} -> {new['format']}")
    for kind in sorted(set(old.get("models", {})) | set(new["models"])):
        if old.get("models", {}).get(kind) != new["models"].get(kind):
            changes.append(f"{kind} model")
    return changes


class _FolderLock:
    """An exclusive lock on the output folder (released by the OS if this process dies), taken only once no worker
    process of an earlier batch in the folder is alive: a coordinator killed with ``kill -9`` leaves its workers
    finishing their file (they exit when they find the coordinator gone; on Linux the kernel kills them with it),
    and each holds ``WORKERS_LOCK`` shared until it exits."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK
        self.fd = None

    def __enter__(self):
        import fcntl

        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"{self.path.parent}: cannot write to this folder ({e.strerror})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise InputError(f"{self.path.parent}: another batch is writing to this folder") from None
        try:
            _wait_for_exclusive(self.path.with_name(WORKERS_LOCK), WORKERS_GONE_WAIT_S)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # the lock file stays: removing it could let two batches lock different files


def _wait_for_exclusive(path: Path, timeout: float) -> None:
    """Wait until nobody holds ``path``'s lock (take it exclusively, then let it go)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise InputError(f"{path.parent}: worker processes of an earlier batch in this folder are "
                                     f"still running after {timeout:.0f} s; stop them or wait") from None
                time.sleep(POLL_S / 5)
    finally:
        os.close(fd)


def hold_worker_lock(out_dir: str) -> int:
    """In a worker process: hold ``WORKERS_LOCK`` shared for the life of the process (the descriptor is kept open),
    and on Linux ask the kernel to kill this process when its coordinator dies."""
    import fcntl
    import sys

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    fd = os.open(Path(out_dir) / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:  # a file system without flock (some network mounts): convert anyway, unguarded
        pass
    return fd


def remove_orphans(outputs: list[Path]) -> list[Path]:
    """Delete what a killed batch left of its unfinished writes: the hidden temporaries ``atomic_write`` makes
    next to an output (``.NAME.<8 hex>.part.EXT``), for these outputs only. Run under the folder lock, so no other
    batch is writing them. Returns the removed paths."""
    import re

    from ..atomic import TEMP_SUFFIX

    removed, listings = [], {}
    for out in set(outputs):
        if out.parent not in listings:
            try:
                listings[out.parent] = [p for p in out.parent.iterdir() if p.name.endswith(TEMP_SUFFIX + p.suffix)]
            except OSError:  # not there yet
                listings[out.parent] = []
        pattern = re.compile(rf"\.{re.escape(out.name)}\.[0-9a-f]{{8}}{re.escape(TEMP_SUFFIX + out.suffix)}")
        for path in listings[out.parent]:
            if pattern.fullmatch(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# -- the work on one file, wherever it runs ------------------------------------------------------------------------


def worker_env(slots_per_machine: int, deterministic: bool) -> dict[str, str]:
    """The thread settings of one worker when ``slots_per_machine`` share this machine's cores: cores / slots BLAS
    threads and as many cores for rvc-mlx's own splitting (CPU lanes, NumPy helper threads). Both can change the
    last bits of the output (OpenBLAS's split of a product depends on its thread count with some of its CPU
    kernels), so in deterministic mode a worker uses the thread counts of one process on this machine (the same
    bytes as a sequential run, at the cost of more threads than cores)."""
    from ..backend import cpu_count

    share = str(max(1, cpu_count() // max(1, slots_per_machine)))
    threads = str(cpu_count()) if deterministic else share
    return {"RVC_MLX_CPUS": threads, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}


def _limit_threads(env: dict[str, str]) -> None:
    """Before MLX runs: apply ``worker_env`` to this process (also to an OpenBLAS already loaded)."""
    os.environ.update(env)
    from .. import backend

    backend.set_blas_threads(int(env["OPENBLAS_NUM_THREADS"]))


def _load(paths: dict, options: dict):
    from ..pipeline import VoiceConverter

    return VoiceConverter.load(**paths), parse_options(options)


def _convert_one(converter, options: ConversionOptions, src: str, out: str, fmt: str) -> tuple:
    """``("done", info)``, ``("silent", message)`` (digital silence: nothing written), ``("full", message)`` (the
    output device is full) or ``("failed", message)``: one line for user errors and bugs alike."""
    from .tasks import convert_file

    try:
        return "done", convert_file(converter, options, Path(src), Path(out), fmt)
    except SilentAudioError as e:
        return "silent", str(e)
    except DiskFullError as e:
        return "full", str(e)
    except RvcMlxError as e:
        return "failed", str(e)
    except MemoryError:
        return "failed", f"{src}: out of memory"
    except OSError as e:  # reading or writing a file (not a bug): the file and the system's reason
        return "failed", f"{e.filename or src}: {e.strerror or type(e).__name__}"
    except Exception as e:  # a bug: one line for the summary, the traceback on the worker's stderr
        traceback.print_exc()
        return "failed", f"{src}: internal error: {type(e).__name__}: {e}"


def process_worker_main(conn, paths: dict, options: dict, env: dict[str, str], out_dir: str) -> None:
    """A spawned worker: load the models once, then convert what the coordinator sends until it says stop (or is
    gone: the pipe closes). Holds the output folder's worker lock while it lives (``hold_worker_lock``).

    Messages: coordinator -> worker ("convert", index, src, out, fmt) | ("stop",);
    worker -> coordinator ("ready", pid) | ("fatal", message) | (state, index, info_or_message)."""
    hold_worker_lock(out_dir)
    _limit_threads(env)
    import rvc_mlx  # noqa: F401  (the BLAS preload comes before MLX)

    try:
        converter, opts = _load(paths, options)
    except RvcMlxError as e:
        conn.send(("fatal", str(e)))
        return
    from .worker import requests

    conn.send(("ready", os.getpid()))
    for index, src, out, fmt in requests(conn, "convert"):
        state, result = _convert_one(converter, opts, src, out, fmt)
        conn.send((state, index, result))
    conn.close()


# -- worker slots: in this process, spawned processes, Ray actors --------------------------------------------------
# Each backend reports events from poll(): ("ready", slot, pid), ("fatal", slot, message),
# ("done"|"failed", slot, index, info_or_message), ("died", slot, reason).


class _InlineSlots:
    """One slot: this process (sequential batches)."""

    backend = "process"

    def __init__(self, paths: dict, options: dict):
        self.paths, self.options = paths, options
        self.events: list[tuple] = []
        self.pids = {0: os.getpid()}

    def start(self, slot: int) -> None:
        self.converter, self.opts = _load(self.paths, self.options)
        self.events.append(("ready", slot, os.getpid()))

    def assign(self, slot: int, item: _Item, fmt: str) -> None:
        state, result = _convert_one(self.converter, self.opts, str(item.src), str(item.out), fmt)
        self.events.append((state, slot, item.index, result))

    def poll(self, timeout: float) -> list[tuple]:
        events, self.events = self.events, []
        return events

    def close(self) -> None:
        pass


class _ProcessSlots:
    """Spawned worker processes, one per slot."""

    backend = "process"

    def __init__(self, paths: dict, options: dict, env: dict[str, str], out_dir: Path):
        self.args, self.env = (paths, options, env, str(out_dir)), env
        self.procs: dict[int, tuple] = {}
        self.pids: dict[int, int] = {}

    def start(self, slot: int) -> None:
        from .worker import spawn_process

        self.procs[slot] = spawn_process(process_worker_main, self.args, f"rvc-mlx-batch-{slot}", self.env)

    def assign(self, slot: int, item: _Item, fmt: str) -> None:
        try:
            self.procs[slot][1].send(("convert", item.index, str(item.src), str(item.out), fmt))
        except (OSError, ValueError):
            pass  # the worker is gone: poll() reports it

    def poll(self, timeout: float) -> list[tuple]:
        from multiprocessing.connection import wait

        waitables = {}
        for slot, (proc, conn) in self.procs.items():
            waitables[conn] = slot
            waitables[proc.sentinel] = slot
        events, dead = [], set()
        for ready in wait(list(waitables), timeout):
            slot = waitables[ready]
            if slot in dead:
                continue
            proc, conn = self.procs[slot]
            try:
                while conn.poll():
                    msg = conn.recv()
                    if msg[0] == "ready":
                        self.pids[slot] = msg[1]
                    events.append((msg[0], slot, *msg[1:]))
                    if msg[0] == "fatal":
                        break
            except (EOFError, OSError):
                pass
            else:
                if proc.is_alive() or ready is conn:
                    continue
            proc.join(timeout=5)
            dead.add(slot)
            events.append(("died", slot, f"worker pid {proc.pid} {_exit_reason(proc.exitcode)}"))
            self._drop(slot)
        return events

    def _drop(self, slot: int) -> None:
        proc, conn = self.procs.pop(slot)
        self.pids.pop(slot, None)
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
        conn.close()

    def close(self) -> None:
        for slot, (proc, conn) in list(self.procs.items()):
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
        for slot in list(self.procs):
            self.procs[slot][0].join(timeout=10)
            self._drop(slot)


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        import signal

        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class CorpusActor:
    """What one Ray actor runs: the models loaded once, then one file per call (MLX on one actor thread)."""

    def __init__(self, paths: dict, options: dict, env: dict[str, str]):
        _limit_threads(env)
        import rvc_mlx  # noqa: F401

        self.error = None
        try:
            self.converter, self.opts = _load(paths, options)
        except RvcMlxError as e:
            self.error = str(e)

    def ready(self) -> tuple:
        return ("fatal", self.error) if self.error else ("ready", os.getpid())

    def convert(self, index: int, src: str, out: str, fmt: str) -> tuple:
        state, result = _convert_one(self.converter, self.opts, src, out, fmt)
        return state, index, result

    def close(self) -> None:
        import mlx.core as mx

        mx.clear_streams()  # the actor's thread ran MLX


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


def ray_init(address: str | None, slots: int | None):
    """Connect to the Ray cluster at ``address`` (``auto``: the one this machine belongs to), or start a local one
    for this batch (``None``/``"local"``): ``slots`` CPUs, every process bound to 127.0.0.1, no dashboard, no usage
    reporting, a small object store, and token authentication with a fresh token held in the environment (nothing
    written to ``~/.ray``, no warning). Returns ``(ray, started)``; ``started``: this call connected."""
    local = address in (None, "local")
    if local:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Ray on Linux turns 127.0.0.1 into the machine's address unless "clusters" are off (read at import)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        token = "RAY_AUTH_MODE" not in os.environ
        if token:
            import secrets

            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
    ray = _import_ray()
    if ray.is_initialized():
        return ray, False
    if local and token:
        from ray._raylet import Config

        Config.initialize("")  # Ray reads the auth mode once; refresh it if ray was imported before (as Ray does)
    common = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
    try:
        if local:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False  # as the variable above, when ray was imported before it
            ray.init(num_cpus=slots, _node_ip_address="127.0.0.1", object_store_memory=RAY_OBJECT_STORE_BYTES,
                     **common)
        else:
            ray.init(address=address, **common)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise RvcMlxError(f"ray: cannot connect to {address or 'a local cluster'}: {str(e).splitlines()[0]}") from None
    bound = {n.get("NodeManagerAddress") for n in ray.nodes()}
    if local and bound != {"127.0.0.1"}:
        ray.shutdown()
        raise RvcMlxError(f"ray: the local cluster did not bind to 127.0.0.1 (it used {', '.join(sorted(bound))})")
    return ray, True


class _RaySlots:
    """One Ray actor per slot (one CPU each), tasks per file."""

    backend = "ray"

    def __init__(self, ray, paths: dict, options: dict, env: dict[str, str]):
        self.ray = ray
        self.args = (paths, options, env)
        self.actor_class = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(CorpusActor)
        self.actors: dict[int, object] = {}
        self.refs: dict = {}  # object ref -> (slot, actor, index or None for a ready call)
        self.pids: dict[int, int] = {}

    def start(self, slot: int) -> None:
        actor = self.actor_class.remote(*self.args)
        self.actors[slot] = actor
        self.refs[actor.ready.remote()] = (slot, actor, None)

    def assign(self, slot: int, item: _Item, fmt: str) -> None:
        actor = self.actors[slot]
        self.refs[actor.convert.remote(item.index, str(item.src), str(item.out), fmt)] = (slot, actor, item.index)

    def poll(self, timeout: float) -> list[tuple]:
        from ray.exceptions import RayActorError, RayError

        if not self.refs:
            time.sleep(timeout)
            return []
        done, rest = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        if done and rest:
            done += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        events = []
        for ref in done:
            slot, actor, index = self.refs.pop(ref)
            if self.actors.get(slot) is not actor:
                continue  # a call to an actor already reported dead
            try:
                result = self.ray.get(ref)
            except RayActorError:
                pid = self.pids.pop(slot, None)
                events.append(("died", slot, f"ray actor{f' pid {pid}' if pid else ''} died"))
                del self.actors[slot]
                continue
            except RayError as e:  # the call itself failed (not the actor): that file failed
                if index is None:
                    events.append(("fatal", slot, f"ray: a worker could not start: {str(e).splitlines()[0]}"))
                else:
                    events.append(("failed", slot, index, f"ray: {str(e).splitlines()[0]}"))
                continue
            if result[0] == "ready":
                self.pids[slot] = result[1]
            events.append((result[0], slot, *result[1:]))
        return events

    def close(self) -> None:
        closing = [a.close.remote() for a in self.actors.values()]
        try:
            self.ray.get(closing, timeout=30)
        except Exception:  # noqa: BLE001 - an actor that died meanwhile has nothing to close
            pass
        for actor in self.actors.values():
            self.ray.kill(actor)
        self.actors.clear()


# -- the coordinator -------------------------------------------------------------------------------------------


def convert_corpus(files: list[str | Path], out_dir: str | Path, options: ConversionOptions, paths: ModelPaths, *,
                   in_dir: str | Path | None = None, fmt: str = "wav", workers: int | None = None,
                   ray: str | None = None, overwrite: bool = False, force: bool = False,
                   retries: int = DEFAULT_RETRIES, on_event: Emit | None = None) -> CorpusSummary:
    """Convert ``files`` into ``out_dir`` (at their paths relative to ``in_dir``, else by name) with one voice.

    ``workers``: slots (default 1: this process; N > 1: N spawned processes; with ``ray``: Ray actors, default
    the cluster's CPUs). ``ray``: ``"local"`` (a Ray cluster on this machine for this batch), ``"auto"`` or an
    address (``ray://host:10001``). Existing outputs are skipped unless ``overwrite``; a folder converted with other
    settings is refused unless ``force`` (then every file is converted again). ``on_event`` gets
    ``{"event": "planned"|"skipped"|"started"|"done"|"failed"|"retry", ...}`` from the calling thread.
    Per-file failures are collected in the summary, not raised; bad settings raise a one-line ``RvcMlxError``."""
    from .tasks import WRITE_FORMATS

    started_at = time.monotonic()
    emit = on_event or (lambda event: None)
    fmt = fmt.lower()
    if fmt not in WRITE_FORMATS:
        raise InputError(f"cannot write format {fmt!r} (choose from {', '.join(WRITE_FORMATS)})")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1 (got {workers})")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a directory")
    in_dir = Path(in_dir) if in_dir is not None else None
    items, clashes = plan([Path(f) for f in files], out_dir, fmt, in_dir)
    settings = {"options": options.to_dict(), "format": fmt, "models": model_hashes(paths)}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out_dir}: cannot create the output folder ({e.strerror})") from None
    with _FolderLock(out_dir):
        remove_orphans([item.out for item in items] + [(out_dir / MANIFEST).resolve()])
        previous = None if force else Manifest.read(out_dir)
        if previous is not None and previous.get("settings") != settings:
            changes = settings_changes(previous.get("settings") or {}, settings)
            raise InputError(f"{out_dir}: holds outputs converted with other settings ({', '.join(changes)}); "
                             "use --force to convert every file again with these, or another output folder")
        manifest = Manifest(out_dir, settings)
        if previous is not None:
            manifest.files.update({k: v for k, v in previous.get("files", {}).items() if isinstance(v, dict)})
        summary = CorpusSummary()
        for name, reason in clashes:
            summary.failed.append((name, reason))
        todo = []
        for item in items:
            if item.out.exists() and not (overwrite or force):
                summary.skipped.append(item.key)
                emit({"event": "skipped", "file": item.name})
            else:
                todo.append(item)
        emit({"event": "planned", "total": len(items) + len(clashes), "todo": len(todo),
              "skipped": len(summary.skipped), "failed": len(clashes)})
        try:
            if todo:
                _run(todo, manifest, summary, paths, options, fmt, workers, ray, retries, emit)
        finally:
            _warn(summary, manifest.write(), emit)
    summary.wall_seconds = time.monotonic() - started_at
    return summary


def _make_slots(paths: ModelPaths, options: ConversionOptions, workers: int | None, ray_address: str | None,
                n_items: int, out_dir: Path):
    """The slots for this batch and how many to start; the second value: a Ray connection to close after."""
    from ..backend import cpu_count

    args = (paths.to_dict(), options.to_dict())
    if ray_address is not None:
        ray, started = ray_init(ray_address, workers or cpu_count())
        slots = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # on a cluster a slot is one CPU of some node; locally the slots share this machine
        env = worker_env(slots if ray_address in (None, "local") else cpu_count(), options.deterministic)
        return _RaySlots(ray, *args, env), min(slots, n_items), (ray if started else None)
    workers = workers or 1
    if workers == 1:
        return _InlineSlots(*args), 1, None
    env = worker_env(workers, options.deterministic)
    return _ProcessSlots(*args, env, out_dir), min(workers, n_items), None


def _run(todo: list[_Item], manifest: Manifest, summary: CorpusSummary, paths: ModelPaths,
         options: ConversionOptions, fmt: str, workers: int | None, ray_address: str | None, retries: int,
         emit: Emit) -> None:
    pool, n_slots, ray_conn = _make_slots(paths, options, workers, ray_address, len(todo), manifest.path.parent)
    summary.workers, summary.backend = n_slots, pool.backend
    by_index = {item.index: item for item in todo}
    queue = deque(sorted(todo, key=lambda it: (-it.seconds, it.key)))  # longest first
    holding: dict[int, _Item] = {}
    idle: list[int] = []
    deaths: dict[int, int] = {}
    restarts, max_restarts = 0, n_slots + retries * len(todo)
    try:
        for slot in range(n_slots):
            pool.start(slot)
        while queue or holding:
            while idle and queue:
                slot, item = idle.pop(0), queue.popleft()
                holding[slot] = item
                emit({"event": "started", "file": item.name, "slot": slot, "worker": pool.pids.get(slot)})
                pool.assign(slot, item, fmt)
            for event in pool.poll(POLL_S):
                kind, slot = event[0], event[1]
                if kind == "ready":
                    idle.append(slot)
                elif kind == "fatal":
                    raise RvcMlxError(event[2])
                elif kind in ("done", "failed", "silent", "full"):
                    item = by_index[event[2]]
                    holding.pop(slot, None)
                    idle.append(slot)
                    _finished(item, kind, event[3], manifest, summary, emit, deaths.get(item.index, 0))
                    if kind == "full" and queue:  # every later file would fail the same way
                        summary.not_started = [it.name for it in queue]
                        emit({"event": "stopped", "reason": summary.stopped, "not_started": len(queue)})
                        queue.clear()
                elif kind == "died":
                    item = holding.pop(slot, None)
                    if slot in idle:
                        idle.remove(slot)
                    if item is not None:
                        deaths[item.index] = deaths.get(item.index, 0) + 1
                        if deaths[item.index] > retries:
                            _finished(item, "failed", f"{item.name}: the worker died {deaths[item.index]} times "
                                      f"while converting it (last: {event[2]})", manifest, summary, emit,
                                      deaths[item.index])
                        else:
                            queue.appendleft(item)
                            summary.retried.append((item.name, event[2]))
                            emit({"event": "retry", "file": item.name, "reason": event[2]})
                    restarts += 1
                    if restarts > max_restarts:
                        raise RvcMlxError(f"batch: workers keep dying ({event[2]}); stopped")
                    if queue or holding:
                        pool.start(slot)
    finally:
        pool.close()
        if ray_conn is not None:
            ray_conn.shutdown()


def _finished(item: _Item, state: str, result, manifest: Manifest, summary: CorpusSummary, emit: Emit,
              deaths: int) -> None:
    """Record one file's end: ``state`` done | silent | failed | full (failed because the device is full)."""
    if state == "full":
        summary.stopped = str(result)
        state = "failed"
    entry = {"input": item.name, "state": state}
    if deaths:
        entry["retried"] = deaths
    if state == "done":
        summary.converted.append(item.key)
        summary.audio_seconds += item.seconds
        entry["seconds"] = result.get("seconds")
        emit({"event": "done", "file": item.name})
    else:
        result = str(result).replace(str(item.src), item.given)
        (summary.silent if state == "silent" else summary.failed).append((item.name, result))
        entry["error" if state == "failed" else "reason"] = result
        emit({"event": state, "file": item.name, "error": result})
    _warn(summary, manifest.set(item.key, **entry), emit)


def _warn(summary: CorpusSummary, warning: str | None, emit: Emit) -> None:
    if warning and warning not in summary.warnings:
        summary.warnings.append(warning)
        emit({"event": "warning", "message": warning})
