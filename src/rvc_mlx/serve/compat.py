"""rvc-python's HTTP API (daswer123/rvc-python ``rvc_python/api.py``), so its clients work unchanged.

SillyTavern's RVC extension speaks it: pick a model (``GET /models``, ``POST /models/{name}``), set parameters
(``GET/POST /params`` with rvc-python's names), then ``POST /convert`` with base64 ``audio_data`` -> WAV.
Models are voices of our library (``POST /upload_model`` takes rvc-python's zip: a folder with a ``.pth`` and an
optional ``.index``). The selection and parameters live in this server process, as in rvc-python.
``/set_models_dir`` is refused: clients never name server paths.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import zipfile
from pathlib import PurePosixPath
from typing import Any

import anyio
from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel

from ..errors import InputError
from ..options import ConversionOptions
from ..service.voices import NotFound, name_from_filename
from .api import failed_response, submit_add_voice, wait_job

router = APIRouter(tags=["rvc-python compatible"])

# rvc-python parameter name -> ConversionOptions field
PARAM_NAMES = {"f0method": "f0_method", "f0up_key": "pitch", "index_rate": "index_rate",
               "filter_radius": "filter_radius", "resample_sr": "resample_sr", "rms_mix_rate": "rms_mix_rate",
               "protect": "protect"}


class ConvertAudioRequest(BaseModel):
    audio_data: str


class SetParamsRequest(BaseModel):
    params: dict[str, Any]


class SetDeviceRequest(BaseModel):
    device: str


class SetModelsDirRequest(BaseModel):
    models_dir: str


class CompatState:
    """The selected voice and parameters (one per server, as rvc-python keeps them)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.model: str | None = None
        self.options: dict = {}

    def params(self) -> dict:
        opts = ConversionOptions(**self.options).to_dict()
        return {ours_to: opts[ours] for ours_to, ours in PARAM_NAMES.items()}


def compat_state(request: Request) -> CompatState:
    app = request.app
    if not hasattr(app.state, "compat"):
        app.state.compat = CompatState()
    return app.state.compat


def _message(text: str) -> JSONResponse:
    return JSONResponse({"message": text})


@router.post("/convert", responses={200: {"content": {"audio/wav": {}}, "description": "the converted WAV"}})
async def rvc_convert(request: Request, body: ConvertAudioRequest):
    """Convert base64 audio with the selected model and parameters; returns WAV bytes."""
    from .api import submit_convert, services

    state = compat_state(request)
    if state.model is None:
        raise InputError("No model loaded. Please load a model first (POST /models/{model_name}).")
    try:
        data = base64.b64decode(body.audio_data, validate=False)
    except (binascii.Error, ValueError):
        raise InputError("audio_data is not valid base64") from None
    svc = services(request)
    upload = _Upload("audio.wav", data)
    job = await anyio.to_thread.run_sync(submit_convert, svc, upload, state.model, None, None, "wav", True, False,
                                         dict(state.options))
    job = await wait_job(svc, job["id"])
    if job["state"] != "done":
        return failed_response(job)
    first = job["result"]["files"][0]
    return FileResponse(svc.jobs.job_dir(job["id"]) / first["path"], media_type="audio/wav",
                        headers={"X-Job-Id": job["id"]})


@router.get("/models")
def list_models(request: Request):
    from .api import services

    return {"models": services(request).library.names()}


@router.post("/models/{model_name}")
def load_model(request: Request, model_name: str):
    from .api import services

    if not services(request).library.exists(model_name):
        raise NotFound(f"Model {model_name} not found.")
    compat_state(request).model = model_name
    return _message(f"Model {model_name} loaded successfully")


@router.get("/params")
def get_params(request: Request):
    return compat_state(request).params()


@router.post("/params")
def set_params(request: Request, body: SetParamsRequest):
    """Set parameters by rvc-python's names (f0method, f0up_key, index_rate, filter_radius, resample_sr,
    rms_mix_rate, protect); unknown names are ignored, as rvc-python does."""
    from ..options import parse_options

    state = compat_state(request)
    ours = {PARAM_NAMES[k]: v for k, v in body.params.items() if k in PARAM_NAMES}
    with state.lock:
        candidate = {**state.options, **ours}
        parse_options(candidate)  # bad values are refused, and nothing changes
        state.options = {k: parse_options({k: v}).to_dict()[k] for k, v in candidate.items()}
    return _message("Parameters updated successfully")


@router.post("/upload_model")
async def upload_models(request: Request, file: UploadFile = File(...)):
    """A zip as rvc-python takes it: ``name/name.pth`` (+ ``name/*.index``); the folder names the voice."""
    from .api import services

    svc = services(request)
    head = await file.read(4)
    await file.seek(0)
    if head != b"PK\x03\x04":
        raise InputError(f"{file.filename}: not a zip file")
    name = await anyio.to_thread.run_sync(_zip_voice_name, file)
    job = await anyio.to_thread.run_sync(submit_add_voice, svc, file, None, name, True, "model.zip")
    job = await wait_job(svc, job["id"])
    if job["state"] != "done":
        return failed_response(job)
    return _message("Models uploaded and extracted successfully")


def _zip_voice_name(upload: UploadFile) -> str:
    try:
        with zipfile.ZipFile(upload.file) as z:
            pths = [n for n in z.namelist() if n.lower().endswith(".pth")]
    except zipfile.BadZipFile:
        raise InputError(f"{upload.filename}: not a zip file (or a damaged one)") from None
    finally:
        upload.file.seek(0)
    if len(pths) != 1:
        raise InputError(f"{upload.filename}: upload one model per zip (found {len(pths)} .pth files)")
    parts = PurePosixPath(pths[0]).parts
    return name_from_filename(parts[-2] if len(parts) > 1 else parts[-1])


@router.post("/set_device")
def set_device(body: SetDeviceRequest):
    """Accepted for compatibility: rvc-mlx runs on MLX's default device (Metal on Macs, else the CPU)."""
    return _message(f"Device set to {body.device} (rvc-mlx uses MLX's default device)")


@router.post("/set_models_dir", status_code=403, responses={403: {"description": "always refused"}})
def set_models_dir(body: SetModelsDirRequest):
    from .app import error_response

    return error_response(403, "forbidden", "the models directory is set when the server starts "
                          "($RVC_MLX_HOME); clients cannot point it at server paths")


class _Upload:
    """Bytes shaped like an ``UploadFile`` for the shared upload helpers."""

    def __init__(self, filename: str, data: bytes):
        self.filename, self.file = filename, io.BytesIO(data)
