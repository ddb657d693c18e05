"""Test support for the command line: running it, a short speech clip, and a fake Hugging Face hub on loopback
for download tests (the real hub is not reachable from test machines).

``serve_hub(root, tmp_path, monkeypatch)`` serves ``root/<owner>/<repo>/<path>`` at
``/<owner>/<repo>/resolve/<revision>/<path>`` (HEAD and GET, as ``huggingface_hub`` asks), points
``huggingface_hub`` at it through ``HF_ENDPOINT``, and gives ``$RVC_MLX_HOME`` a fresh ``tmp_path/home``.
Every served path is recorded in ``server.requests``.
"""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import soundfile as sf

from rvc_mlx.command import main
from tests.reference import hubert_models

CLIP_SR = 16000


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``rvc-mlx ARGV`` in process: (exit code, stdout, stderr) of this run only."""
    capsys.readouterr()  # not what the test's own setup printed (e.g. torch's warnings)
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def speech_clip(directory: Path) -> Path:
    """A 0.6 s speech-like 16 kHz wav in ``directory``."""
    path = Path(directory) / "speech.wav"
    sf.write(path, hubert_models.speech_like(int(CLIP_SR * 0.6) + 3, seed=2), CLIP_SR)
    return path


class FakeHubHandler(http.server.BaseHTTPRequestHandler):
    root: Path
    requests: list

    def log_message(self, *args):
        pass

    def _serve(self, body: bool):
        parts = self.path.split("?")[0].lstrip("/").split("/")
        path = self.root.joinpath(parts[0], parts[1], *parts[4:]) if len(parts) > 4 and parts[2] == "resolve" else None
        if path is None or not path.is_file():
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        if body:
            self.requests.append("/".join([parts[0], parts[1], *parts[4:]]))
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{abs(hash(data))}"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._serve(False)

    def do_GET(self):
        self._serve(True)


def place(root: Path, repo_path: str, source: Path) -> None:
    """Put ``source`` at ``root/<repo_path>`` (a hard link: the reference files are large)."""
    dest = root / repo_path
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, dest)


def serve_hub(root: Path, tmp_path: Path, monkeypatch) -> http.server.ThreadingHTTPServer:
    """Start the fake hub over ``root`` and point huggingface_hub and rvc-mlx at it; call ``shutdown()`` after."""
    handler = type("Hub", (FakeHubHandler,), {"root": root, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = handler.requests
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("RVC_MLX_HOME", str(tmp_path / "home"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", endpoint)
    monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return server


# -- batches: the deterministic pm conversion the corpus and durability tests compare runs of --------------------

BATCH_VOICE = "v2-40k-f0"


def batch_args(models) -> list:
    """``rvc-mlx batch`` flags: the reference v2 40 kHz voice, its HuBERT, pm F0, deterministic, quiet."""
    path, _, _ = models.voice(BATCH_VOICE)
    return ["-m", path, "--hubert", models.hubert_path, "--rmvpe", models.rmvpe_path, "--f0-method", "pm",
            "--deterministic", "-q"]


def batch_paths(models):
    """The same models as ``batch_args``, resolved for ``service.corpus.convert_corpus``."""
    from rvc_mlx.service.models import resolve_models

    path, _, _ = models.voice(BATCH_VOICE)
    return resolve_models(path, hubert=models.hubert_path, rmvpe=models.rmvpe_path, f0_method="pm")


def batch_options():
    from rvc_mlx.options import parse_options

    return parse_options({"f0_method": "pm", "deterministic": True})


def wav_outputs(folder: Path) -> dict[str, bytes]:
    """Every ``.wav`` under ``folder`` (not hidden ones) by relative path -> bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.wav"))
            if not p.name.startswith(".")}
