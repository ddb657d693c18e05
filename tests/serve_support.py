"""Test support for the server: an ``$RVC_MLX_HOME`` with base models and a library voice (built from the
reference models), short clips, and a real ``rvc-mlx serve`` subprocess on loopback that always stops."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from rvc_mlx.serve.run import READY_PREFIX
from tests.reference import hubert_models
from tests.reference.rvc_pipeline import ReferenceModels

VOICE = "test-voice"
SR16 = 16000


def make_home(home: Path, models: ReferenceModels, voice_variant: str = "v2-40k-f0", index: bool = False) -> Path:
    """``home`` with hubert_base/rmvpe base models and the library voice ``VOICE``."""
    from rvc_mlx.service.voices import VoiceLibrary

    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(models.hubert_path, home / "hubert_base.safetensors")
    shutil.copyfile(models.rmvpe_path, home / "rmvpe.safetensors")
    voice, _, _ = models.voice(voice_variant)
    VoiceLibrary(home / "voices").add(voice, name=VOICE, index=models.index(768) if index else None)
    return home


def write_clip(path: Path, seconds: float = 0.6, seed: int = 2, sr: int = SR16) -> Path:
    audio = hubert_models.speech_like(int(SR16 * seconds), seed=seed)
    if sr != SR16:
        from rvc_mlx.audio import resample

        audio = resample(audio.astype(np.float32), SR16, sr)
    sf.write(path, audio, sr)
    return path


class ServerProcess:
    """``rvc-mlx serve`` in a subprocess (``--exit-after`` as a backstop); ``url`` once it is ready."""

    def __init__(self, home: Path, *args: str, exit_after: float = 600):
        env = {**os.environ, "RVC_MLX_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rvc_mlx", "serve", "--port", "0", "--exit-after", str(exit_after), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.url = line[len(READY_PREFIX):].split()[0].rstrip("/")

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def wait_until(predicate, timeout: float = 120, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")
