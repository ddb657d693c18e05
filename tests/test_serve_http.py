"""A real ``rvc-mlx serve`` on loopback, driven over HTTP: output equal to the CLI's, offline docs, jobs that
survive a restart, a worker killed mid-job, a 1 GB upload refused, 20 concurrent requests, and the refusal to
listen off loopback without a token."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from rvc_mlx.command import main
from tests.reference.rvc_pipeline import ReferenceModels
from tests.serve_support import VOICE, ServerProcess, make_home, wait_until, write_clip

MAX_UPLOAD_MB = 64


@pytest.fixture(scope="module")
def home(tmp_path_factory, ref_cache):
    return make_home(tmp_path_factory.mktemp("home"), ReferenceModels(ref_cache))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {s: write_clip(d / f"clip{s}.wav", seconds=s, seed=int(s * 10)) for s in (0.4, 0.6, 0.8)}


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("long") / "long.wav", seconds=12, seed=9)


@pytest.fixture(scope="module")
def server(home):
    with ServerProcess(home, "--no-ui", "--max-upload-mb", str(MAX_UPLOAD_MB)) as s:
        yield s


def post_convert(url, clip, timeout=300, run_async=False, **fields):
    with open(clip, "rb") as f:
        return httpx.post(f"{url}/v1/convert", params={"async": "1"} if run_async else None,
                          data={"voice": VOICE, "deterministic": "true", **fields},
                          files={"audio": (clip.name, f.read())}, timeout=timeout)


def cli_bytes(home, clip, out, *flags) -> bytes:
    old = os.environ.get("RVC_MLX_HOME")
    os.environ["RVC_MLX_HOME"] = str(home)
    try:
        assert main(["infer", "-i", str(clip), "-o", str(out), "-m", VOICE, "--deterministic", *flags]) == 0
    finally:
        os.environ.pop("RVC_MLX_HOME") if old is None else os.environ.__setitem__("RVC_MLX_HOME", old)
    return out.read_bytes()


def job_state(url, job_id):
    return httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_http_convert_equals_cli_and_docs_are_offline(server, home, clips, tmp_path):
    health = httpx.get(f"{server.url}/v1/health").json()
    assert health["status"] == "ok" and health["auth_required"] is False
    r = post_convert(server.url, clips[0.6])
    assert r.status_code == 200, r.text
    assert r.content == cli_bytes(home, clips[0.6], tmp_path / "cli.wav")
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "http://" not in docs.text.replace(server.url, "") and "https://" not in docs.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert httpx.get(f"{server.url}/docs-assets/{asset}").status_code == 200
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/convert" in spec["paths"] and "/convert" in spec["paths"]


def test_worker_killed_mid_job(server, clips, long_clip):
    r = post_convert(server.url, long_clip, run_async=True)
    job_id = r.json()["id"]
    wait_until(lambda: job_state(server.url, job_id)["state"] == "running")
    pid = httpx.get(f"{server.url}/v1/health").json()["jobs"]["worker"]["pid"]
    assert pid and pid != server.proc.pid
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    job = wait_until(lambda: (j := job_state(server.url, job_id))["state"] in ("failed", "done") and j, 60)
    assert job["state"] == "failed" and "worker process stopped" in job["error"] and "-9" in job["error"]
    assert server.proc.poll() is None
    after = post_convert(server.url, clips[0.4])  # the next job runs on a new worker
    assert after.status_code == 200
    worker = httpx.get(f"{server.url}/v1/health").json()["jobs"]["worker"]
    assert worker["pid"] != pid and worker["restarts"] >= 1 and worker["alive"]


def _raw_request(url: str, head: bytes) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(head)
    return sock


def _read_until_closed(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    """The whole reply: headers and body may arrive in separate packets."""
    reply = b""
    while len(reply) < limit:
        try:
            data = sock.recv(4096)
        except (ConnectionResetError, socket.timeout):
            break
        if not data:
            break
        reply += data
    return reply


def test_huge_upload_is_refused_without_being_stored(server, home):
    jobs_before = set(os.listdir(home / "jobs"))
    host = urlsplit(server.url).netloc
    start = (f"POST /v1/convert HTTP/1.1\r\nHost: {host}\r\n"
             "Content-Type: multipart/form-data; boundary=xyz\r\n").encode()
    # declared 1 GB: refused from the headers alone
    sock = _raw_request(server.url, start + b"Content-Length: 1073741824\r\n\r\n")
    reply = _read_until_closed(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413") and b"too_large" in reply, reply[:300]
    # 1 GB streamed without a length: cut off near the cap
    sock = _raw_request(server.url, start + b"Transfer-Encoding: chunked\r\n\r\n")
    part = (b'--xyz\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
    chunk = b"\0" * (1 << 20)
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent, reply = 0, b""
    sock.settimeout(0.05)
    try:
        while sent < (1 << 30):
            sock.sendall(frame)
            sent += len(chunk)
            try:
                reply = sock.recv(4096)
                if reply:
                    break
            except (socket.timeout, BlockingIOError):
                pass
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(10)
    try:
        reply = reply or sock.recv(4096)
    except (ConnectionResetError, socket.timeout):
        pass
    sock.close()
    assert sent < (MAX_UPLOAD_MB + 64) << 20, f"server kept reading: {sent >> 20} MB sent"
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert httpx.get(f"{server.url}/v1/health").status_code == 200
    assert set(os.listdir(home / "jobs")) == jobs_before  # no job folder, no stored upload


def test_concurrent_requests_none_lost_or_mixed(server, clips):
    expected = {s: post_convert(server.url, c).content for s, c in clips.items()}
    assert all(expected.values()) and len(set(expected.values())) == 3
    worker_pid = httpx.get(f"{server.url}/v1/health").json()["jobs"]["worker"]["pid"]
    rss_before = rss_mb(server.proc.pid) + rss_mb(worker_pid)
    results = {}

    def one(i):
        seconds = (0.4, 0.6, 0.8)[i % 3]
        try:
            results[i] = (seconds, post_convert(server.url, clips[seconds], timeout=600))
        except httpx.HTTPError as e:
            results[i] = (seconds, e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20
    ok = busy = 0
    for seconds, r in results.values():
        assert isinstance(r, httpx.Response), r
        if r.status_code == 200:
            assert r.content == expected[seconds]  # its own input's output, nobody else's
            ok += 1
        else:
            assert r.status_code == 429 and r.json()["error"] == "queue_full" and int(r.headers["retry-after"]) > 0
            busy += 1
    assert ok >= 1 and ok + busy == 20
    assert server.proc.poll() is None and httpx.get(f"{server.url}/v1/health").json()["status"] == "ok"
    rss_after = rss_mb(server.proc.pid) + rss_mb(worker_pid)
    assert rss_after < rss_before + 300, (rss_before, rss_after)


def test_jobs_survive_a_restart(home, clips, long_clip):
    with ServerProcess(home, "--no-ui") as first:
        done = post_convert(first.url, clips[0.6], run_async=True).json()["id"]
        wait_until(lambda: job_state(first.url, done)["state"] == "done", 300)
        output = httpx.get(f"{first.url}/v1/jobs/{done}/result").content
        running = post_convert(first.url, long_clip, run_async=True).json()["id"]
        wait_until(lambda: job_state(first.url, running)["state"] == "running")
        first.proc.kill()  # the server dies mid-job
        first.proc.wait()
    with ServerProcess(home, "--no-ui") as second:
        job = job_state(second.url, done)
        assert job["state"] == "done" and job["files"][0]["name"] == "clip0.6.wav"
        assert httpx.get(f"{second.url}/v1/jobs/{done}/result").content == output
        interrupted = job_state(second.url, running)
        assert interrupted["state"] == "interrupted" and "retry" in interrupted["error"]
        assert httpx.post(f"{second.url}/v1/jobs/{running}/retry").status_code == 202
        job = wait_until(lambda: (j := job_state(second.url, running))["state"] in ("done", "failed") and j, 300)
        assert job["state"] == "done" and job["attempts"] == 2


def test_refuses_to_listen_off_loopback_without_token(home):
    env = {**os.environ, "RVC_MLX_HOME": str(home)}
    env.pop("RVC_MLX_TOKEN", None)
    for extra in ([], ["--token", "short"]):
        proc = subprocess.run([sys.executable, "-m", "rvc_mlx", "serve", "--host", "0.0.0.0", "--port", "0",
                               *extra], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and "token" in proc.stderr and "Traceback" not in proc.stderr
