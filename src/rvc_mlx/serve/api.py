"""REST routes under ``/v1``: convert, batch, pitch, jobs (with server-sent events), voices, presets, base models.

Routes are thin: they save uploads into a new job's folder, resolve options through the service layer and submit
a job; synchronous routes wait for it. The conversion options are form fields generated from
``rvc_mlx.options`` (same names, ranges, defaults and help as the CLI flags and the UI controls).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Literal, Optional

import anyio
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field

from .. import __version__
from ..errors import AudioError, InputError
from ..hub import BASE_MODELS, model_path
from ..options import F0_METHODS, option_specs
from ..service.jobs import STATES, TERMINAL
from ..service.tasks import PITCH_FORMATS, WRITE_FORMATS
from ..service.voices import NotFound
from .security import TooLarge

router = APIRouter(prefix="/v1")
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg",
               "zip": "application/zip", "png": "image/png", "csv": "text/csv", "json": "application/json"}
SYNC_TIMEOUT_S = 3600
EVENT_HEARTBEAT_S = 15
ERROR_TEXT = {400: "invalid input", 404: "not found", 409: "conflicts with what exists", 413: "too large",
              422: "invalid request, audio or model", 429: "job queue full (see Retry-After)"}


# -- schemas ------------------------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. not_found, invalid_audio, queue_full")
    detail: str = Field(description="one readable line")


def errors(*codes: int) -> dict:
    """OpenAPI ``responses`` entries for error statuses (all with the ``ErrorBody`` shape)."""
    return {code: {"model": ErrorBody, "description": ERROR_TEXT[code]} for code in codes}


class FileView(BaseModel):
    name: str
    format: str
    url: str
    sample_rate: Optional[int] = None
    seconds: Optional[float] = None


class JobView(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
    progress: dict[str, Any] = Field(description="{stage, fraction, overall[, item]}")
    error: Optional[str] = None
    files: list[FileView] = []
    result: dict[str, Any] = Field(default={}, description="what the job produced, with the options that made it")
    request: dict[str, Any] = Field(default={}, description="what was asked (voice, options, format, inputs)")
    attempts: int
    created: float
    started: Optional[float] = None
    finished: Optional[float] = None
    log: str = ""


class VoiceView(BaseModel):
    name: str
    version: Optional[str] = None
    sample_rate: Optional[int] = None
    use_f0: Optional[bool] = None
    n_speakers: Optional[int] = None
    vocoder: Optional[str] = None
    embedder: Optional[str] = None
    source: Optional[str] = None
    source_sha256: Optional[str] = None
    added: Optional[float] = None
    has_index: bool
    default_preset: Optional[str] = None


class PresetBody(BaseModel):
    options: dict[str, Any] = Field(description="ConversionOptions fields this preset sets")


class PresetView(BaseModel):
    name: str
    options: dict[str, Any]
    default_for: list[str]
    created: float
    updated: float


class VoicePresetBody(BaseModel):
    preset: Optional[str] = Field(description="preset name, or null for none")


class BaseModelView(BaseModel):
    name: str
    kind: str
    repo: str
    installed: bool


class Health(BaseModel):
    status: str
    version: str
    auth_required: bool
    jobs: dict[str, Any]


class OptionView(BaseModel):
    name: str
    type: str
    default: Any
    label: str
    help: str
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    choices: Optional[list[str]] = None
    file: bool = False
    advanced: bool = False


# -- helpers ------------------------------------------------------------------------------------------------------


def services(request: Request):
    return request.app.state.services


def job_view(job: dict) -> dict:
    """A job as clients see it: file URLs instead of server paths."""
    result = dict(job.get("result") or {})
    files = [{**{k: v for k, v in f.items() if k != "path"},
              "url": f"/v1/jobs/{job['id']}/result?name={f['name']}"} for f in result.pop("files", [])]
    request = {k: v for k, v in (job.get("request") or {}).items() if k not in ("inputs", "model", "index")}
    return {"id": job["id"], "kind": job["kind"], "state": job["state"], "progress": job.get("progress") or {},
            "error": job.get("error"), "files": files if job["state"] == "done" else [], "result": result,
            "request": request, "attempts": job["attempts"], "created": job["created"], "started": job["started"],
            "finished": job["finished"], "log": job.get("log") or ""}


def save_upload(upload: UploadFile, dest: Path, limit: int) -> Path:
    """Copy an upload to ``dest`` in blocks, refusing more than ``limit`` bytes (no partial file is kept)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(dest, "wb") as out:
        while chunk := upload.file.read(1 << 20):
            n += len(chunk)
            if n > limit:
                out.close()
                dest.unlink()
                raise TooLarge(f"{upload.filename}: larger than the upload limit")
            out.write(chunk)
    if n == 0:
        dest.unlink()
        raise InputError(f"{upload.filename or 'upload'}: empty file")
    return dest


def upload_name(upload: UploadFile, fallback: str) -> str:
    """The client's file name without any directory part (never used as a path on its own)."""
    name = Path((upload.filename or "").replace("\\", "/")).name
    return name if name not in ("", ".", "..") else fallback


def probe_seconds(path: Path) -> float:
    """Duration of an audio file from its header when it has one (decoding it otherwise)."""
    from .. import audio as audio_io

    try:
        seconds = audio_io.header_seconds(path)
    except AudioError:
        raise AudioError(f"{path.name}: not an audio file (or a damaged one)") from None
    if seconds is not None:
        return seconds
    audio, sr = audio_io.read(path)
    return audio.shape[0] / sr


def save_audio_input(svc, upload: UploadFile, job_dir: Path, slot: str, strict: bool = True) -> tuple[str, str]:
    """Save one uploaded audio file into the job as ``input/<slot><suffix>``; checks it is audio within the
    duration cap (``strict=False``: a file that does not decode is kept, for the job to report it).
    Returns (path relative to the job, the client's name)."""
    name = upload_name(upload, f"{slot}.wav")
    suffix = Path(name).suffix.lower()[:8] if Path(name).suffix.isascii() else ""
    rel = f"input/{slot}{suffix}"
    path = save_upload(upload, job_dir / rel, svc.settings.max_upload_bytes)
    try:
        seconds = probe_seconds(path)
    except AudioError as e:
        if not strict:
            return rel, name
        raise AudioError(str(e).replace(path.name, name)) from None
    if seconds > svc.settings.max_seconds:
        raise TooLarge(f"{name}: audio is {seconds:.0f} s long; this server takes at most "
                       f"{svc.settings.max_seconds:g} s")
    return rel, name


def _option_parameters() -> list[inspect.Parameter]:
    """One optional form field per ConversionOptions field (file options excepted), with its range and help."""
    params = []
    for s in option_specs():
        if s.param.file:
            continue
        kind = Literal[s.param.choices] if s.param.choices else s.type
        default = Form(None, ge=s.param.lo, le=s.param.hi, description=f"{s.param.help} (default {s.default})")
        params.append(inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Optional[kind]))
    return params


def option_fields(**values) -> dict:
    """The conversion options a request set (FastAPI fills the generated form fields)."""
    return {k: v for k, v in values.items() if v is not None}


option_fields.__signature__ = inspect.Signature(_option_parameters(), return_annotation=dict)


async def wait_job(svc, job_id: str, timeout: float = SYNC_TIMEOUT_S) -> dict:
    return await anyio.to_thread.run_sync(svc.jobs.wait, job_id, timeout)


def failed_response(job: dict) -> JSONResponse:
    from .app import JOB_ERROR_STATUS, error_response

    if job["state"] not in TERMINAL:
        return JSONResponse(job_view(job), status_code=202, headers={"Location": f"/v1/jobs/{job['id']}"})
    error_type = (job.get("result") or {}).get("error_type")
    status, code = JOB_ERROR_STATUS.get(error_type, (500, "job_failed"))
    if job["state"] in ("cancelled", "interrupted"):
        status, code = 409, job["state"]
    return error_response(status, code, job.get("error") or job["state"], {"X-Job-Id": job["id"]})


def _resolve_options(svc, voice: str, preset: str | None, values: dict):
    return svc.presets.resolve(voice=voice, preset=preset, options=values, allow_files=False)


# -- health and options -------------------------------------------------------------------------------------------


@router.get("/health", response_model=Health, tags=["server"])
def health(request: Request):
    svc = services(request)
    return {"status": "ok", "version": __version__, "auth_required": svc.settings.token is not None,
            "jobs": svc.jobs.status()}


@router.get("/options", response_model=list[OptionView], tags=["server"])
def options():
    """Every conversion option: type, default, range, help (what the UI and the CLI are generated from)."""
    return [{"name": s.name, "type": s.type.__name__, "default": s.default, "label": s.param.label,
             "help": s.param.help, "min": s.param.lo, "max": s.param.hi, "step": s.param.step,
             "choices": list(s.param.choices) if s.param.choices else None, "file": s.param.file,
             "advanced": s.param.advanced} for s in option_specs()]


# -- conversion ---------------------------------------------------------------------------------------------------


@router.post("/convert", tags=["convert"], responses={
    200: {"content": {t: {} for t in ("audio/wav", "audio/flac", "audio/ogg", "audio/mpeg")},
          "description": "the converted audio"},
    202: {"model": JobView, "description": "with ?async=1: the queued job"}, **errors(400, 404, 413, 422, 429)})
async def convert(request: Request, audio: UploadFile = File(description="input audio (wav, flac, ogg, mp3, m4a)"),
                  voice: str = Form(description="a voice from the library (GET /v1/voices)"),
                  preset: Optional[str] = Form(None, description="named option set; fields given here override it"),
                  f0_file: Optional[UploadFile] = File(None, description="CSV of time,Hz replacing the pitch"),
                  format: Literal["wav", "flac", "ogg", "mp3"] = Form("wav", description="output format"),
                  use_index: bool = Form(True, description="use the voice's own index, if it has one"),
                  pitch_plot: bool = Form(False, description="also write pitch.png (input and output contours)"),
                  run_async: bool = Query(False, alias="async", description="return the job at once (202)"),
                  values: dict = Depends(option_fields)):
    """Convert one file with a library voice. Returns the audio, or with ``?async=1`` the job (poll
    ``GET /v1/jobs/{id}`` or stream ``/v1/jobs/{id}/events``)."""
    svc = services(request)
    job = await anyio.to_thread.run_sync(submit_convert, svc, audio, voice, preset, f0_file, format, use_index,
                                         pitch_plot, values)
    if run_async:
        return JSONResponse(job_view(job), status_code=202, headers={"Location": f"/v1/jobs/{job['id']}"})
    job = await wait_job(svc, job["id"])
    if job["state"] != "done":
        return failed_response(job)
    first = job["result"]["files"][0]
    return FileResponse(svc.jobs.job_dir(job["id"]) / first["path"], media_type=MEDIA_TYPES[first["format"]],
                        filename=first["name"], headers={"X-Job-Id": job["id"]})


def submit_convert(svc, audio, voice, preset, f0_file, fmt, use_index, pitch_plot, values) -> dict:
    if not svc.library.exists(voice):
        raise NotFound(f"voice {voice!r} not found (GET /v1/voices lists them)")
    job_id, job_dir = svc.jobs.new_job()
    try:
        options = _resolve_options(svc, voice, preset, values).to_dict()
        rel, name = save_audio_input(svc, audio, job_dir, "audio")
        if f0_file is not None:
            options["f0_file"] = "input/f0.csv"
            save_upload(f0_file, job_dir / "input" / "f0.csv", svc.settings.max_upload_bytes)
        request = {"voice": voice, "preset": preset, "options": options, "format": fmt, "inputs": [rel],
                   "input_names": [name], "use_index": use_index, "pitch_plot": pitch_plot}
        return svc.jobs.submit("convert", request, job_id)
    except BaseException:
        svc.jobs.discard(job_id)
        raise


@router.post("/batch", status_code=202, response_model=JobView, tags=["convert"],
             responses=errors(400, 404, 413, 422, 429))
async def batch(request: Request, files: list[UploadFile] = File(description="input audio files"),
                voice: str = Form(description="a voice from the library"),
                preset: Optional[str] = Form(None, description="named option set"),
                format: Literal["wav", "flac", "ogg", "mp3"] = Form("wav"),
                use_index: bool = Form(True, description="use the voice's own index, if it has one"),
                values: dict = Depends(option_fields)):
    """Convert many files as one job; its result is a zip (``converted.zip``) plus each file. Files that fail
    are listed in the result's ``failed``; the job fails only if none converts."""
    svc = services(request)
    job = await anyio.to_thread.run_sync(submit_batch, svc, files, voice, preset, format, use_index, values)
    return JSONResponse(job_view(job), status_code=202, headers={"Location": f"/v1/jobs/{job['id']}"})


def submit_batch(svc, files, voice, preset, fmt, use_index, values) -> dict:
    if not svc.library.exists(voice):
        raise NotFound(f"voice {voice!r} not found (GET /v1/voices lists them)")
    if len(files) > svc.settings.max_batch_files:
        raise TooLarge(f"{len(files)} files; this server takes at most {svc.settings.max_batch_files} per batch")
    job_id, job_dir = svc.jobs.new_job()
    try:
        options = _resolve_options(svc, voice, preset, values).to_dict()
        inputs, names = [], []
        for i, upload in enumerate(files):
            rel, name = save_audio_input(svc, upload, job_dir, f"{i:04d}", strict=False)
            inputs.append(rel)
            names.append(name)
        request = {"voice": voice, "preset": preset, "options": options, "format": fmt, "inputs": inputs,
                   "input_names": names, "use_index": use_index}
        return svc.jobs.submit("batch", request, job_id)
    except BaseException:
        svc.jobs.discard(job_id)
        raise


@router.post("/pitch", tags=["convert"], responses={
    200: {"content": {"text/csv": {}, "application/json": {}}, "description": "F0 at 100 frames per second"},
    **errors(400, 413, 422, 429)})
async def pitch(request: Request, audio: UploadFile = File(description="input audio"),
                method: Literal[F0_METHODS] = Form("rmvpe", description="pitch estimator"),
                format: Literal["csv", "json"] = Form("csv", description="csv: time,f0,voiced rows; json")):
    """The F0 contour of an audio file (Hz, 0 = unvoiced, one value per 10 ms)."""
    svc = services(request)

    def submit():
        job_id, job_dir = svc.jobs.new_job()
        try:
            rel, name = save_audio_input(svc, audio, job_dir, "audio")
            return svc.jobs.submit("pitch", {"inputs": [rel], "input_names": [name], "method": method,
                                             "format": format}, job_id)
        except BaseException:
            svc.jobs.discard(job_id)
            raise

    job = await wait_job(svc, (await anyio.to_thread.run_sync(submit))["id"])
    if job["state"] != "done":
        return failed_response(job)
    path = svc.jobs.job_dir(job["id"]) / job["result"]["files"][0]["path"]
    if format == "json":
        body = {**json.loads(path.read_text()), "method": method, "voiced": job["result"]["voiced"],
                "median_hz": job["result"]["median_hz"]}
        return JSONResponse(body, headers={"X-Job-Id": job["id"]})
    return PlainTextResponse(path.read_text(), media_type="text/csv", headers={"X-Job-Id": job["id"]})


# -- jobs -----------------------------------------------------------------------------------------------------------


@router.get("/jobs", response_model=list[JobView], tags=["jobs"])
def list_jobs(request: Request, state: Optional[Literal[STATES]] = None, limit: int = Query(50, ge=1, le=500)):
    """Recent jobs, newest first."""
    return [job_view(j) for j in services(request).jobs.list(limit, state)]


@router.get("/jobs/{job_id}", response_model=JobView, tags=["jobs"],
            responses={404: {"model": ErrorBody, "description": "no such job"}})
def get_job(request: Request, job_id: str):
    return job_view(services(request).jobs.get(job_id))


@router.delete("/jobs/{job_id}", response_model=JobView, tags=["jobs"],
               responses={404: {"model": ErrorBody, "description": "no such job"}})
def delete_job(request: Request, job_id: str):
    """Cancel a queued or running job; delete a finished one (and its files)."""
    jobs = services(request).jobs
    job = jobs.get(job_id)
    if job["state"] in ("queued", "running"):
        return job_view(jobs.cancel(job_id))
    jobs.delete(job_id)
    return {**job_view(job), "files": []}


@router.post("/jobs/{job_id}/retry", response_model=JobView, status_code=202, tags=["jobs"],
             responses={404: {"model": ErrorBody, "description": "no such job"},
                        409: {"model": ErrorBody, "description": "the job is not failed, cancelled or interrupted"}})
def retry_job(request: Request, job_id: str):
    """Run a failed, cancelled or interrupted job again, with its stored request and files."""
    return job_view(services(request).jobs.retry(job_id))


@router.get("/jobs/{job_id}/result", tags=["jobs"], responses={
    200: {"content": {"application/octet-stream": {}}, "description": "an output file"},
    404: {"model": ErrorBody, "description": "no such job or file"},
    409: {"model": ErrorBody, "description": "the job is not done"}})
def job_result(request: Request, job_id: str, name: Optional[str] = None):
    """An output file of a finished job (by ``name``; the first one by default)."""
    path = services(request).jobs.result_file(job_id, name)
    return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lstrip("."), "application/octet-stream"),
                        filename=path.name)


@router.get("/jobs/{job_id}/events", tags=["jobs"], responses={
    200: {"content": {"text/event-stream": {}}, "description": "'job' events (JobView JSON) until 'end'"},
    404: {"model": ErrorBody, "description": "no such job"}})
async def job_events(request: Request, job_id: str):
    """Server-sent events: the job (a JobView) on every change, then ``event: end`` once it is finished."""
    jobs = services(request).jobs
    job = jobs.get(job_id)

    async def stream():
        current = job
        while True:
            yield f"event: job\ndata: {json.dumps(job_view(current))}\n\n"
            if current["state"] in TERMINAL:
                yield "event: end\ndata: {}\n\n"
                return
            version = current["version"]
            while True:
                current = await anyio.to_thread.run_sync(jobs.wait_change, job_id, version, EVENT_HEARTBEAT_S)
                if current["version"] != version or await request.is_disconnected():
                    break
                yield ": keep-alive\n\n"
            if await request.is_disconnected():
                return

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# -- voices ---------------------------------------------------------------------------------------------------------


def voice_view(svc, name: str) -> dict:
    return {**svc.library.get(name).to_dict(), "default_preset": svc.presets.voice_default(name)}


@router.get("/voices", response_model=list[VoiceView], tags=["voices"])
def list_voices(request: Request):
    svc = services(request)
    return [voice_view(svc, n) for n in svc.library.names()]


@router.post("/voices", response_model=VoiceView, status_code=201, tags=["voices"],
             responses=errors(400, 409, 413, 422, 429))
async def add_voice(request: Request,
                    model: UploadFile = File(description="RVC .pth, converted .safetensors, or a .zip with them"),
                    index: Optional[UploadFile] = File(None, description="the voice's .index"),
                    name: Optional[str] = Form(None, description="voice name (default: from the file name)"),
                    replace: bool = Form(False, description="replace a voice of the same name")):
    """Add a voice to the library. ``.pth`` files are read by rvc-mlx's safe reader (nothing in the pickle is
    executed) and converted once."""
    svc = services(request)
    job = await anyio.to_thread.run_sync(submit_add_voice, svc, model, index, name, replace)
    job = await wait_job(svc, job["id"])
    if job["state"] != "done":
        return failed_response(job)
    return JSONResponse(voice_view(svc, job["result"]["voice"]["name"]), status_code=201)


def submit_add_voice(svc, model: UploadFile, index: UploadFile | None, name: str | None, replace: bool,
                     model_name: str | None = None) -> dict:
    """Queue an add-voice job for an uploaded model (and index); shared with the compat and UI routes."""
    job_id, job_dir = svc.jobs.new_job()
    try:
        shown = model_name or upload_name(model, "voice.pth")
        suffix = Path(shown).suffix.lower() if Path(shown).suffix.lower() in (".pth", ".pt", ".safetensors",
                                                                            ".zip") else ""
        request = {"model": f"input/model{suffix}", "model_name": shown, "name": name, "replace": replace}
        save_upload(model, job_dir / request["model"], svc.settings.max_upload_bytes)
        if index is not None:
            request["index"] = "input/voice.index"
            save_upload(index, job_dir / request["index"], svc.settings.max_upload_bytes)
        return svc.jobs.submit("add-voice", request, job_id)
    except BaseException:
        svc.jobs.discard(job_id)
        raise


@router.get("/voices/{name}", response_model=VoiceView, tags=["voices"],
            responses={404: {"model": ErrorBody, "description": "no such voice"}})
def get_voice(request: Request, name: str):
    return voice_view(services(request), name)


@router.delete("/voices/{name}", response_model=VoiceView, tags=["voices"],
               responses={404: {"model": ErrorBody, "description": "no such voice"}})
def delete_voice(request: Request, name: str):
    svc = services(request)
    view = voice_view(svc, name)
    svc.library.remove(name)
    svc.presets.set_voice_default(name, None)
    return view


@router.put("/voices/{name}/preset", response_model=VoiceView, tags=["voices"],
            responses={404: {"model": ErrorBody, "description": "no such voice or preset"}})
def set_voice_preset(request: Request, name: str, body: VoicePresetBody):
    """Make a preset the voice's default (its options apply to every conversion with this voice)."""
    svc = services(request)
    svc.library.get(name)
    svc.presets.set_voice_default(name, body.preset)
    return voice_view(svc, name)


# -- presets --------------------------------------------------------------------------------------------------------


@router.get("/presets", response_model=list[PresetView], tags=["presets"])
def list_presets(request: Request):
    return services(request).presets.list()


@router.get("/presets/{name}", response_model=PresetView, tags=["presets"],
            responses={404: {"model": ErrorBody, "description": "no such preset"}})
def get_preset(request: Request, name: str):
    return services(request).presets.get(name)


@router.put("/presets/{name}", response_model=PresetView, tags=["presets"],
            responses={400: {"model": ErrorBody, "description": "unknown option or value out of range"}})
def put_preset(request: Request, name: str, body: PresetBody):
    """Create or replace a preset (only the options it names are stored)."""
    return services(request).presets.save(name, body.options)


@router.delete("/presets/{name}", response_model=PresetView, tags=["presets"],
               responses={404: {"model": ErrorBody, "description": "no such preset"}})
def delete_preset(request: Request, name: str):
    presets = services(request).presets
    view = presets.get(name)
    presets.delete(name)
    return view


# -- base models ----------------------------------------------------------------------------------------------------


@router.get("/models", response_model=list[BaseModelView], tags=["models"])
def list_base_models(request: Request):
    """The base models rvc-mlx can download (HuBERT/ContentVec, RMVPE) and whether each is installed."""
    home = services(request).settings.home
    return [{"name": m.name, "kind": m.kind, "repo": m.repo_id, "installed": model_path(m.name, home).is_file()}
            for m in BASE_MODELS.values()]


@router.post("/models/{name}/download", response_model=JobView, status_code=202, tags=["models"],
             responses={404: {"model": ErrorBody, "description": "unknown base model"},
                        429: {"model": ErrorBody, "description": "job queue full"}})
def download_base_model(request: Request, name: str, force: bool = False):
    """Download and convert a base model from the Hugging Face hub, as a job."""
    if name not in BASE_MODELS:
        raise NotFound(f"unknown base model {name!r} (choose from {', '.join(BASE_MODELS)})")
    job = services(request).jobs.submit("download", {"name": name, "force": force})
    return JSONResponse(job_view(job), status_code=202, headers={"Location": f"/v1/jobs/{job['id']}"})
