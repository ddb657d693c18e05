"""Jobs: every conversion, batch, pitch estimate, download and voice import is a row in the embedded store.

A job has a request (JSON; files in its own folder ``$RVC_MLX_HOME/jobs/<id>/``), a state, per-stage progress,
a log, a result (output files and the settings that made them) or an error. States::

    queued -> running -> done | failed | cancelled
    running (when the server stopped) -> interrupted        failed | interrupted | cancelled -> queued (retry)

``JobManager`` runs queued jobs in order on one spawned MLX worker process (``worker.py``); a worker that dies
mid-job fails that job and is restarted. The queue is bounded (``QueueFull`` carries a retry-after estimate).
Waiters (``wait``, ``wait_change``) are woken on every change, which is what progress streams use.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from pathlib import Path

from ..errors import InputError, RvcMlxError
from .cache import DEFAULT_MAX_BYTES, DEFAULT_MAX_ITEMS
from .db import Database, dumps, loads
from .voices import Conflict, NotFound

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
TERMINAL = ("done", "failed", "cancelled", "interrupted")
RETRYABLE = ("failed", "cancelled", "interrupted")
DEFAULT_MAX_QUEUE = 8
WORKER_START_TIMEOUT_S = 120
POLL_S = 0.2
RETRY_AFTER_PER_JOB_S = 5
LOG_MAX_CHARS = 20000


class QueueFull(RvcMlxError):
    """The job queue is full (HTTP 429); try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)


class JobStore:
    """The jobs table: create, read, update (no scheduling)."""

    FIELDS = ("id", "kind", "state", "request", "progress", "log", "result", "error", "attempts", "created",
              "started", "finished")

    def __init__(self, db: Database):
        self.db = db

    def create(self, job_id: str, kind: str, request: dict, max_active: int | None = None) -> None:
        with self.db.connect() as c:
            if max_active is not None:
                active = c.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[0]
                if active >= max_active:
                    raise QueueFull(f"the job queue is full ({active} jobs waiting or running); try again later",
                                    retry_after=RETRY_AFTER_PER_JOB_S * active)
            c.execute("INSERT INTO jobs (id, kind, state, request, created) VALUES (?, ?, 'queued', ?, ?)",
                      (job_id, kind, dumps(request), time.time()))

    def get(self, job_id: str) -> dict:
        with self.db.connect() as c:
            row = c.execute(f"SELECT {', '.join(self.FIELDS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id!r} not found")
        job = dict(row)
        for key in ("request", "progress", "result"):
            job[key] = loads(job[key])
        return job

    def list(self, limit: int = 50, state: str | None = None) -> list[dict]:
        query, args = "SELECT id FROM jobs", []
        if state:
            query, args = query + " WHERE state = ?", [state]
        with self.db.connect() as c:
            ids = [r[0] for r in c.execute(query + " ORDER BY created DESC LIMIT ?", (*args, limit))]
        return [self.get(i) for i in ids]

    def update(self, job_id: str, **fields) -> None:
        for key in ("request", "progress", "result"):
            if key in fields:
                fields[key] = dumps(fields[key])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.db.connect() as c:
            c.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def append_log(self, job_id: str, line: str) -> None:
        with self.db.connect() as c:
            c.execute("UPDATE jobs SET log = substr(log || ?, -?) WHERE id = ?",
                      (f"{time.strftime('%H:%M:%S')} {line.rstrip()}\n", LOG_MAX_CHARS, job_id))

    def next_queued(self) -> str | None:
        with self.db.connect() as c:
            row = c.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY created LIMIT 1").fetchone()
        return row[0] if row else None

    def count(self, states=ACTIVE) -> int:
        with self.db.connect() as c:
            marks = ", ".join("?" for _ in states)
            return c.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", tuple(states)).fetchone()[0]

    def interrupt_running(self) -> int:
        """Jobs left 'running' by a server that stopped become 'interrupted' (retry them)."""
        with self.db.connect() as c:
            return c.execute("UPDATE jobs SET state = 'interrupted', finished = ?, "
                             "error = 'the server stopped while this job was running; retry it' "
                             "WHERE state = 'running'", (time.time(),)).rowcount

    def delete(self, job_id: str) -> None:
        with self.db.connect() as c:
            c.execute("DELETE FROM jobs WHERE id = ?", (job_id,))


class JobManager:
    """Schedules jobs onto one MLX worker process. ``start()`` launches the dispatcher; ``close()`` stops it."""

    def __init__(self, home: str | Path, db: Database | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
                 cache_items: int = DEFAULT_MAX_ITEMS, cache_bytes: int = DEFAULT_MAX_BYTES):
        self.home = Path(home)
        self.jobs_dir = self.home / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.db = db or Database(self.home / "rvc-mlx.sqlite3")
        self.store = JobStore(self.db)
        self.max_queue = max_queue
        self.cache_limits = (cache_items, cache_bytes)
        self.interrupted_at_start = self.store.interrupt_running()
        self._cond = threading.Condition()
        self._versions: dict[str, int] = {}
        self._cancel: set[str] = set()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._proc = None
        self._conn = None
        self.worker_pid: int | None = None
        self.worker_restarts = -1  # the first start is not a restart
        self.running_job: str | None = None

    # -- client side ---------------------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not job_id.replace("-", "").isalnum():
            raise NotFound(f"job {job_id!r} not found")
        return self.jobs_dir / job_id

    def new_job(self) -> tuple[str, Path]:
        """A fresh job id and its folder, for the caller to put the request's files in before ``submit``."""
        job_id = new_job_id()
        folder = self.job_dir(job_id)
        (folder / "input").mkdir(parents=True)
        return job_id, folder

    def discard(self, job_id: str) -> None:
        """Remove a folder made by ``new_job`` for a job that was never submitted."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def submit(self, kind: str, request: dict, job_id: str | None = None) -> dict:
        """Queue a job (its files already in ``job_dir(job_id)``); raises ``QueueFull`` when the queue is full."""
        if job_id is None:
            job_id, _ = self.new_job()
        try:
            self.store.create(job_id, kind, request, max_active=self.max_queue)
        except QueueFull:
            self.discard(job_id)
            raise
        self._changed(job_id)
        return self.get(job_id)

    def get(self, job_id: str) -> dict:
        job = self.store.get(job_id)
        job["version"] = self._versions.get(job_id, 0)
        return job

    def list(self, limit: int = 50, state: str | None = None) -> list[dict]:
        if state is not None and state not in STATES:
            raise InputError(f"unknown job state {state!r} (choose from {', '.join(STATES)})")
        return self.store.list(limit, state)

    def wait(self, job_id: str, timeout: float | None = None) -> dict:
        """Block until the job is finished (or ``timeout`` seconds pass); returns the job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                job = self.get(job_id)
                if job["state"] in TERMINAL:
                    return job
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return job
                self._cond.wait(POLL_S * 5 if remaining is None else min(remaining, POLL_S * 5))

    def wait_change(self, job_id: str, version: int, timeout: float) -> dict:
        """The job once its version passes ``version`` (or after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._versions.get(job_id, 0) <= version and time.monotonic() < deadline:
                self._cond.wait(max(0.0, min(deadline - time.monotonic(), POLL_S * 5)))
        return self.get(job_id)

    def cancel(self, job_id: str) -> dict:
        """Cancel a queued or running job (a running one stops with its worker, which is restarted)."""
        job = self.get(job_id)
        if job["state"] == "queued":
            self.store.update(job_id, state="cancelled", finished=time.time(), error="cancelled")
            self._changed(job_id)
        elif job["state"] == "running":
            with self._cond:
                self._cancel.add(job_id)
            self.wait(job_id, timeout=30)
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Forget a finished job and its files."""
        job = self.get(job_id)
        if job["state"] in ACTIVE:
            raise Conflict(f"job {job_id} is {job['state']}; cancel it first")
        self.store.delete(job_id)
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        self._changed(job_id)

    def retry(self, job_id: str) -> dict:
        job = self.get(job_id)
        if job["state"] not in RETRYABLE:
            raise Conflict(f"job {job_id} is {job['state']}; only failed, cancelled or interrupted jobs can be retried")
        if self.store.count() >= self.max_queue:
            raise QueueFull("the job queue is full; try again later", retry_after=RETRY_AFTER_PER_JOB_S * self.max_queue)
        self.store.update(job_id, state="queued", error=None, result=None, progress={}, started=None, finished=None)
        self.store.append_log(job_id, "retry requested")
        self._changed(job_id)
        return self.get(job_id)

    def result_file(self, job_id: str, name: str | None = None) -> Path:
        """An output file of a finished job (the first one by default)."""
        job = self.get(job_id)
        if job["state"] != "done":
            raise Conflict(f"job {job_id} is {job['state']}; it has no result")
        files = (job["result"] or {}).get("files", [])
        for f in files:
            if name is None or f["name"] == name:
                path = self.job_dir(job_id) / f["path"]
                if path.is_file():
                    return path
        raise NotFound(f"job {job_id} has no output file {name!r}" if name else f"job {job_id} has no output file")

    def status(self) -> dict:
        return {"queued": self.store.count(("queued",)), "running": self.running_job, "limit": self.max_queue,
                "worker": {"pid": self.worker_pid, "alive": bool(self._proc and self._proc.is_alive()),
                           "restarts": max(self.worker_restarts, 0)}}

    def _changed(self, job_id: str) -> None:
        with self._cond:
            self._versions[job_id] = self._versions.get(job_id, 0) + 1
            self._cond.notify_all()

    # -- scheduling ----------------------------------------------------------------------------------------------

    def start(self) -> "JobManager":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rvc-mlx-jobs", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._stop_worker()

    def _try_start_worker(self) -> None:
        """Start a worker now (warm for the next job); a failure is reported by the next job instead."""
        try:
            self._start_worker()
        except RvcMlxError:
            self._stop_worker(kill=True)

    def _loop(self) -> None:
        self._try_start_worker()
        while True:
            with self._cond:
                if self._closed:
                    return
            job_id = self.store.next_queued()
            if job_id is None:
                with self._cond:
                    if not self._closed:
                        self._cond.wait(POLL_S * 5)
                continue
            self._run(job_id)

    def _start_worker(self) -> None:
        from .worker import spawn_process, worker_main

        proc, parent = spawn_process(worker_main, (str(self.home), *self.cache_limits), "rvc-mlx-worker")
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if parent.poll(POLL_S):
                try:
                    msg = parent.recv()
                except (EOFError, OSError):
                    break
                if msg[0] == "ready":
                    self._proc, self._conn, self.worker_pid = proc, parent, msg[1]
                    self.worker_restarts += 1
                    return
            if not proc.is_alive():
                break
        proc.kill()
        raise RvcMlxError(f"the MLX worker process did not start (exit code {proc.exitcode})")

    def _stop_worker(self, kill: bool = False) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        self.worker_pid = None
        if proc is None:
            return
        if not kill and proc.is_alive():
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
            proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10)
        conn.close()

    def _finish(self, job_id: str, state: str, **fields) -> None:
        self.store.update(job_id, state=state, finished=time.time(), **fields)
        self.running_job = None
        self._changed(job_id)

    def _run(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job["state"] != "queued":
            return
        self.running_job = job_id
        self.store.update(job_id, state="running", started=time.time(), attempts=job["attempts"] + 1,
                          progress={"stage": "start", "fraction": 0.0, "overall": 0.0})
        self._changed(job_id)
        try:
            if self._proc is None or not self._proc.is_alive():
                self._stop_worker(kill=True)
                self._start_worker()
            self._conn.send(("run", job_id, job["kind"], job["request"], str(self.job_dir(job_id))))
        except (RvcMlxError, OSError, ValueError) as e:
            self._stop_worker(kill=True)
            self._finish(job_id, "failed", error=f"could not run the job: {e}")
            return
        self.store.append_log(job_id, f"running on worker pid {self.worker_pid}")
        while True:
            with self._cond:
                cancelled = job_id in self._cancel
                self._cancel.discard(job_id)
            if cancelled:
                self._stop_worker(kill=True)
                self.store.append_log(job_id, "cancelled; worker stopped")
                self._finish(job_id, "cancelled", error="cancelled")
                self._try_start_worker()
                return
            try:
                ready = self._conn.poll(POLL_S)
                msg = self._conn.recv() if ready else None
            except (EOFError, OSError):
                msg, ready = None, True
            if msg is None:
                if ready or not self._proc.is_alive():
                    self._proc.join(timeout=5)
                    code = self._proc.exitcode
                    self._stop_worker(kill=True)
                    error = (f"the worker process stopped while running this job (exit code {code}); "
                             "a new worker was started")
                    self.store.append_log(job_id, error)
                    self._finish(job_id, "failed", error=error, result={"error_type": "WorkerDied"})
                    self._try_start_worker()
                    return
                continue
            kind = msg[0]
            if kind == "progress":
                self.store.update(job_id, progress=msg[2])
                self._changed(job_id)
            elif kind == "done":
                self.store.append_log(job_id, "done")
                self._finish(job_id, "done", result=msg[2], progress={"stage": "done", "fraction": 1.0,
                                                                        "overall": 1.0})
                return
            elif kind == "failed":
                self.store.append_log(job_id, f"failed: {msg[2]}")
                if msg[3]:
                    self.store.append_log(job_id, msg[3])
                self._finish(job_id, "failed", error=msg[2], result={"error_type": msg[4]})
                return
