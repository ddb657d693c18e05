"""The web UI: Gradio 6 Blocks mounted at ``/ui`` on the server's FastAPI app (``mount_ui``).

Tabs: **Convert** (one file, with the input/output pitch plot), **Batch** (many files -> a zip), **Models**
(base models, library voices). The option controls are generated from ``rvc_mlx.options.option_specs()`` (the
same names, ranges, defaults and help as the CLI flags and the REST form fields). Handlers only translate: UI
values -> the service calls the REST routes make (``api.submit_convert`` ...) -> UI values. Every piece of work
is a job on the spawned MLX worker (MLX never runs in this process); a handler waits on its job and feeds the
job's progress to the Gradio progress bar. Errors reach the page as one line (``gr.Error``), never a traceback.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from fastapi.responses import RedirectResponse  # noqa: E402

from ..errors import RvcMlxError  # noqa: E402
from ..hub import BASE_MODELS, model_path  # noqa: E402
from ..options import option_specs  # noqa: E402
from ..service.jobs import TERMINAL  # noqa: E402
from ..service.tasks import WRITE_FORMATS  # noqa: E402
from . import api  # noqa: E402

log = logging.getLogger("rvc_mlx.serve.ui")
PATH = "/ui"
POLL_S = 1.0
VOICE_FILE_TYPES = [".pth", ".pt", ".safetensors", ".zip"]
VOICE_COLUMNS = (("name", "name"), ("version", "version"), ("sample_rate", "sample rate"), ("use_f0", "f0"),
                 ("has_index", "index"), ("embedder", "embedder"), ("vocoder", "vocoder"), ("source", "source"))
INTRO = ("# rvc-mlx\nRVC voice conversion on MLX. Every conversion runs as a job on the server's worker; "
         "the same server speaks a REST API ([docs](/docs)).")


# -- controls generated from the options --------------------------------------------------------------------------


def option_control(s, prefix: str):
    """One control for one ConversionOptions field, by its type and Param."""
    p = s.param
    kw = {"label": p.label, "elem_id": f"{prefix}opt-{s.name}"}
    if p.file:
        return gr.File(type="filepath", file_types=[".csv", ".txt"], **{**kw, "label": f"{p.label}: {p.help}"})
    kw["info"] = p.help
    if p.choices:
        return gr.Dropdown(list(p.choices), value=s.default, **kw)
    if s.type is bool:
        return gr.Checkbox(value=s.default, **kw)
    if s.type is str:
        return gr.Textbox(value=s.default, **kw)
    if None not in (p.lo, p.hi, p.step):
        return gr.Slider(p.lo, p.hi, value=s.default, step=p.step, **kw)
    return gr.Number(value=s.default, minimum=p.lo, maximum=p.hi, precision=0 if s.type is int else None, **kw)


def option_controls(prefix: str = "", files: bool = True) -> dict:
    """Every option's control (name -> component) in spec order; the advanced ones in a closed accordion."""
    specs = [s for s in option_specs() if files or not s.param.file]
    controls = {s.name: option_control(s, prefix) for s in specs if not s.param.advanced}
    with gr.Accordion("advanced options", open=False, elem_id=f"{prefix}advanced"):
        controls.update({s.name: option_control(s, prefix) for s in specs if s.param.advanced})
    return {s.name: controls[s.name] for s in specs}


def option_values(values: dict) -> dict:
    """UI values -> the options dict the service layer checks (empty fields are left to the lower layers)."""
    names = {s.name for s in option_specs() if not s.param.file}
    return {k: v for k, v in values.items() if k in names and v is not None and v != ""}


# -- handler plumbing ---------------------------------------------------------------------------------------------


def one_line(text) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else "failed"


def ui_errors(fn):
    """Errors as one line on the page: ours by their message, anything else as 'internal error' (logged)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except RvcMlxError as e:
            raise gr.Error(one_line(e)) from None
        except Exception as e:
            log.exception("UI handler %s failed", fn.__name__)
            raise gr.Error(f"internal error ({type(e).__name__}); see the server log") from None

    return wrapper


def named_handler(fn, names: list[str]):
    """``fn(values: dict, progress)`` as a Gradio handler with one parameter per input, named ``names`` (so the
    API page and gradio_client use these names; each defaults to None or its control's value) and a progress
    tracker last."""
    P = inspect.Parameter

    @ui_errors
    def handler(*args):
        *values, progress = args
        return fn(dict(zip(names, values)), progress)

    handler.__signature__ = inspect.Signature(
        [P(n, P.POSITIONAL_OR_KEYWORD, default=None) for n in names]
        + [P("progress", P.POSITIONAL_OR_KEYWORD, default=gr.Progress())])
    handler.__name__ = handler.__qualname__ = fn.__name__
    return handler


class Upload:
    """A file Gradio received, shaped like the ``UploadFile`` the api helpers take (``.filename``, ``.file``)."""

    def __init__(self, stack: ExitStack, path: str):
        self.filename = Path(path).name  # Gradio keeps the client's name: <cache>/<hash>/<name>
        self.file = stack.enter_context(open(path, "rb"))


def wait_job(svc, job: dict, progress, what: str) -> dict:
    """Wait for a job, showing its progress; the finished job, or ``gr.Error`` with its one-line error."""
    deadline = time.monotonic() + api.SYNC_TIMEOUT_S
    while job["state"] not in TERMINAL:
        if time.monotonic() > deadline:
            raise gr.Error(f"{what} is taking too long; job {job['id']} is still {job['state']}")
        p = job.get("progress") or {}
        desc = "queued" if job["state"] == "queued" else ": ".join(
            str(p[k]) for k in ("item", "stage") if p.get(k)) or job["state"]
        progress(float(p.get("overall") or 0.0), desc=desc)
        job = svc.jobs.wait_change(job["id"], job["version"], POLL_S)
    if job["state"] != "done":
        raise gr.Error(f"{what} failed: {one_line(job.get('error') or job['state'])}")
    return job


def result_path(svc, job: dict, name: str | None = None) -> str | None:
    for f in job["result"].get("files", []):
        if name is None or f["name"] == name:
            return str(svc.jobs.job_dir(job["id"]) / f["path"])
    return None


# -- what the handlers show ---------------------------------------------------------------------------------------


def voice_dropdown(svc, current: str | None = None):
    names = svc.library.names()
    return gr.Dropdown(choices=names, value=current if current in names else (names[0] if names else None))


def voice_picker(svc, **kw):
    """A voice dropdown (any name is accepted: voices added elsewhere after the page loaded are found by the
    service, which names unknown ones)."""
    names = svc.library.names()
    return gr.Dropdown(names, value=names[0] if names else None, label="voice", allow_custom_value=True, **kw)


def preset_dropdown(svc, current: str | None = None):
    names = [p["name"] for p in svc.presets.list()]
    return gr.Dropdown(choices=names, value=current if current in names else None)


def base_model_rows(svc) -> list[list]:
    return [[m.name, m.kind, m.repo_id, "yes" if model_path(m.name, svc.settings.home).is_file() else "no"]
            for m in BASE_MODELS.values()]


def voice_rows(svc) -> list[list]:
    rows = []
    for name in svc.library.names():
        info = svc.library.get(name).to_dict()
        rows.append([_cell(info.get(k)) for k, _ in VOICE_COLUMNS] + [svc.presets.voice_default(name) or ""])
    return rows


def _cell(value) -> str:
    return "yes" if value is True else "no" if value is False else "" if value is None else str(value)


def wire_presets(svc, voice, preset, controls: dict) -> None:
    """Choosing a preset loads what it resolves to (with the voice's default preset below it) into the
    controls, so a conversion sends exactly what the page shows; choosing a voice picks its default preset."""

    @ui_errors
    def load(voice_name, preset_name):
        opts = svc.presets.resolve(voice=voice_name or None, preset=preset_name or None).to_dict()
        return [opts[n] for n in controls]

    @ui_errors
    def voice_default(voice_name, current):
        default = svc.presets.voice_default(voice_name) if voice_name else None
        return gr.Dropdown(value=default) if default and default != current else gr.skip()

    preset.change(load, [voice, preset], list(controls.values()), api_visibility="undocumented")
    voice.change(voice_default, [voice, preset], preset, api_visibility="undocumented")


# -- the page -------------------------------------------------------------------------------------------------------


def build_ui(svc) -> gr.Blocks:
    """The Blocks app over ``svc`` (a ``Services``)."""
    # uploads are copied into job folders, results into Gradio's cache: drop cached files after a day
    with gr.Blocks(title="rvc-mlx", analytics_enabled=False, delete_cache=(3600, 86400)) as blocks:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Convert", id="convert"):
                c = convert_tab(svc)
            with gr.Tab("Batch", id="batch"):
                b = batch_tab(svc)
            with gr.Tab("Models", id="models"):
                m = models_tab(svc)

        voice_pickers = [c["voice"], b["voice"], m["voice"]]

        @ui_errors
        def refresh_voices(*current):
            return [voice_dropdown(svc, v) for v in current] + [voice_rows(svc)]

        @ui_errors
        def refresh_all(*current):
            presets = [preset_dropdown(svc, p) for p in current[len(voice_pickers):]]
            return [*refresh_voices(*current[:len(voice_pickers)]), *presets, base_model_rows(svc)]

        voices_out = [*voice_pickers, m["voices"]]
        preset_pickers = [c["preset"], b["preset"]]
        hidden = {"api_visibility": "undocumented"}
        blocks.load(refresh_all, voice_pickers + preset_pickers, [*voices_out, *preset_pickers, m["base"]], **hidden)
        c["refresh"].click(refresh_all, voice_pickers + preset_pickers, [*voices_out, *preset_pickers, m["base"]],
                           **hidden)
        c["voice_added"].success(lambda added, *current: refresh_voices(added, *current[1:]),
                                 [c["added_name"], *voice_pickers], voices_out, **hidden)
        m["voice_removed"].success(refresh_voices, voice_pickers, voices_out, **hidden)
        c["preset_saved"].success(lambda current: preset_dropdown(svc, current), b["preset"], b["preset"], **hidden)
    return blocks


def convert_tab(svc) -> dict:
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                voice = voice_picker(svc, elem_id="voice", scale=4, info="a voice from the library")
                refresh = gr.Button("refresh", elem_id="voice-refresh", scale=0, min_width=90, size="sm")
            with gr.Accordion("add a voice", open=False, elem_id="add-voice"):
                model_file = gr.File(label="RVC model (.pth, .zip or converted .safetensors)",
                                     file_types=VOICE_FILE_TYPES, type="filepath", elem_id="add-voice-model")
                index_file = gr.File(label="its .index (optional)", file_types=[".index"], type="filepath",
                                     elem_id="add-voice-index")
                with gr.Row():
                    name = gr.Textbox(label="name", placeholder="default: from the file name",
                                      elem_id="add-voice-name")
                    replace = gr.Checkbox(label="replace a voice of that name", elem_id="add-voice-replace")
                add = gr.Button("add voice", elem_id="add-voice-button")
                added_name = gr.Textbox(visible=False)
                add_status = gr.Textbox(label="", show_label=False, interactive=False, max_lines=1,
                                        elem_id="add-voice-status")
            preset = gr.Dropdown([p["name"] for p in svc.presets.list()], value=None, label="preset",
                                 elem_id="preset", info="named option set; loads its values into the controls",
                                 allow_custom_value=True)
            audio = gr.Audio(type="filepath", sources=["upload", "microphone"], label="input audio",
                             elem_id="input-audio")
            with gr.Row():
                fmt = gr.Dropdown(list(WRITE_FORMATS), value="wav", label="output format", elem_id="format")
                use_index = gr.Checkbox(True, label="use the voice's index", elem_id="use-index",
                                        info="when the voice has one")
            controls = option_controls()
            with gr.Row():
                preset_name = gr.Textbox(label="save these options as a preset", placeholder="preset name",
                                         elem_id="preset-name", scale=4)
                save_preset = gr.Button("save preset", elem_id="preset-save", scale=0, min_width=120, size="sm")
        with gr.Column(scale=2):
            run = gr.Button("Convert", variant="primary", elem_id="convert")
            status = gr.Textbox(label="result", interactive=False, max_lines=1, elem_id="status")
            out_audio = gr.Audio(type="filepath", label="converted", interactive=False, elem_id="output-audio")
            out_file = gr.File(label="download", interactive=False, elem_id="output-file")
            plot = gr.Image(type="filepath", label="pitch: input (shifted) and output", interactive=False,
                            elem_id="pitch-plot")

    values = {k: v for k, v in controls.items() if k != "f0_file"}
    inputs = {"audio": audio, "voice": voice, "preset": preset, "format": fmt, "use_index": use_index, **values,
              "f0_file": controls["f0_file"]}

    def convert(v: dict, progress) -> tuple:
        if not v["audio"]:
            raise gr.Error("add the input audio first (upload a file or record)")
        if not v["voice"]:
            raise gr.Error("choose a voice (or add one under 'add a voice')")
        started = time.monotonic()
        with ExitStack() as stack:
            f0 = Upload(stack, v["f0_file"]) if v["f0_file"] else None
            job = api.submit_convert(svc, Upload(stack, v["audio"]), v["voice"], v["preset"] or None, f0,
                                      v["format"] or "wav", v["use_index"] is not False, True, option_values(v))
        job = wait_job(svc, job, progress, "conversion")
        first = job["result"]["files"][0]
        path = result_path(svc, job, first["name"])
        status_line = (f"{first['name']}: {first.get('seconds', 0):.2f} s at {first.get('sample_rate')} Hz, "
                       f"voice {v['voice']}{' with its index' if job['result'].get('index') else ''}, "
                       f"in {time.monotonic() - started:.1f} s")
        return path, path, result_path(svc, job, "pitch.png"), status_line

    run.click(named_handler(convert, list(inputs)), list(inputs.values()), [out_audio, out_file, plot, status],
              api_name="convert", show_progress_on=status)

    @ui_errors
    def add_voice(model, index, name, replace, progress=gr.Progress()):
        if not model:
            raise gr.Error("choose the voice's model file first")
        with ExitStack() as stack:
            job = api.submit_add_voice(svc, Upload(stack, model), Upload(stack, index) if index else None,
                                       (name or "").strip() or None, bool(replace))
        job = wait_job(svc, job, progress, "adding the voice")
        voice_name = job["result"]["voice"]["name"]
        return voice_name, f"added voice {voice_name}"

    voice_added = add.click(add_voice, [model_file, index_file, name, replace], [added_name, add_status],
                            api_name="add_voice", show_progress_on=add_status)

    wire_presets(svc, voice, preset, values)

    @ui_errors
    def save(preset_name_, *current):
        if not (preset_name_ or "").strip():
            raise gr.Error("give the preset a name")
        saved = svc.presets.save(preset_name_.strip(), option_values(dict(zip(values, current))))
        return preset_dropdown(svc, saved["name"]), f"saved preset {saved['name']}"

    preset_saved = save_preset.click(save, [preset_name, *values.values()], [preset, status],
                                     api_visibility="undocumented")
    return {"voice": voice, "refresh": refresh, "preset": preset, "voice_added": voice_added,
            "added_name": added_name, "preset_saved": preset_saved}


def batch_tab(svc) -> dict:
    with gr.Row():
        with gr.Column(scale=3):
            files = gr.File(file_count="multiple", type="filepath", label="input audio files",
                            elem_id="batch-files")
            with gr.Row():
                voice = voice_picker(svc, elem_id="batch-voice")
                preset = gr.Dropdown([p["name"] for p in svc.presets.list()], value=None, label="preset",
                                     elem_id="batch-preset", allow_custom_value=True)
                fmt = gr.Dropdown(list(WRITE_FORMATS), value="wav", label="output format", elem_id="batch-format")
            use_index = gr.Checkbox(True, label="use the voice's index", elem_id="batch-use-index")
            controls = option_controls("batch-", files=False)
        with gr.Column(scale=2):
            run = gr.Button("Convert all", variant="primary", elem_id="batch-convert")
            summary = gr.Textbox(label="summary", interactive=False, max_lines=1, elem_id="batch-summary")
            archive = gr.File(label="converted files (zip)", interactive=False, elem_id="batch-zip")
    wire_presets(svc, voice, preset, controls)
    inputs = {"files": files, "voice": voice, "preset": preset, "format": fmt, "use_index": use_index, **controls}

    def batch(v: dict, progress) -> tuple:
        paths = v["files"] or []
        if not paths:
            raise gr.Error("add some audio files first")
        if not v["voice"]:
            raise gr.Error("choose a voice")
        with ExitStack() as stack:
            job = api.submit_batch(svc, [Upload(stack, p) for p in paths], v["voice"], v["preset"] or None,
                                    v["format"] or "wav", v["use_index"] is not False, option_values(v))
        job = wait_job(svc, job, progress, "the batch")
        result = job["result"]
        failed = result.get("failed") or []
        line = f"converted {result.get('converted', 0)} of {len(paths)} files"
        if result.get("skipped_silent"):
            line += "; skipped (silent): " + ", ".join(result["skipped_silent"])
        if failed:
            line += "; failed: " + ", ".join(f"{f['input']} ({one_line(f['error'])})" for f in failed)
        return result_path(svc, job, "converted.zip"), line

    run.click(named_handler(batch, list(inputs)), list(inputs.values()), [archive, summary], api_name="batch",
              show_progress_on=summary)
    return {"voice": voice, "preset": preset}


def models_tab(svc) -> dict:
    gr.Markdown("### base models\nHuBERT/ContentVec feature encoders and the RMVPE pitch model, converted once.")
    base = gr.Dataframe(base_model_rows(svc), headers=["name", "kind", "source", "installed"], interactive=False,
                        elem_id="base-models")
    with gr.Row():
        which = gr.Dropdown(list(BASE_MODELS), value=next(iter(BASE_MODELS)), label="base model",
                            elem_id="base-model", scale=3)
        force = gr.Checkbox(label="download again", elem_id="base-model-force", scale=1)
        download = gr.Button("download", elem_id="base-model-download", scale=0, min_width=140)
    gr.Markdown("### voices")
    voices = gr.Dataframe(voice_rows(svc), headers=[label for _, label in VOICE_COLUMNS] + ["default preset"],
                          interactive=False, elem_id="voices")
    with gr.Row():
        voice = voice_picker(svc, elem_id="voice-delete-pick", scale=3)
        delete = gr.Button("delete voice", variant="stop", elem_id="voice-delete", scale=0, min_width=140)
    status = gr.Textbox(label="result", interactive=False, max_lines=1, elem_id="models-status")

    @ui_errors
    def download_model(name, again, progress=gr.Progress()):
        if name not in BASE_MODELS:
            raise gr.Error(f"unknown base model {name!r}")
        job = wait_job(svc, svc.jobs.submit("download", {"name": name, "force": bool(again)}), progress,
                       f"downloading {name}")
        size = job["result"].get("bytes") or 0
        return base_model_rows(svc), f"{name} installed ({size / 1e6:.1f} MB)"

    @ui_errors
    def delete_voice(name):
        if not name:
            raise gr.Error("choose a voice to delete")
        svc.library.remove(name)
        svc.presets.set_voice_default(name, None)
        return f"deleted voice {name}"

    download.click(download_model, [which, force], [base, status], api_name="download_model",
                   show_progress_on=status)
    removed = delete.click(delete_voice, voice, status, api_name="delete_voice")
    return {"base": base, "voices": voices, "voice": voice, "voice_removed": removed}


def mount_ui(app, services) -> None:
    """Mount the UI at ``/ui`` (job folders are Gradio's allowed paths: results are served from there) and send
    ``/`` to it."""
    blocks = build_ui(services)
    blocks.queue(default_concurrency_limit=1, max_size=services.settings.max_queue * 4)

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse(f"{PATH}/")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():  # browsers ask the root for it
        return RedirectResponse(f"{PATH}/favicon.ico")

    gr.mount_gradio_app(app, blocks, path=PATH, allowed_paths=[str(services.jobs.jobs_dir)],
                        max_file_size=services.settings.max_upload_bytes, footer_links=["api", "settings"],
                        run_history=False, show_error=True)
