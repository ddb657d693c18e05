"""The HTTP API in process (FastAPI TestClient; the MLX worker is a real spawned process): every route, its
errors in one shape, outputs byte-equal to the CLI's, jobs and events, voices, presets, rvc-python's routes,
and the guards (Host, Origin, token, size caps, queue bound)."""

from __future__ import annotations

import base64
import io
import json
import os
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient

from rvc_mlx.command import main
from rvc_mlx.serve.app import create_app
from rvc_mlx.serve.settings import ServeSettings
from tests.reference import rvc_models
from tests.reference.rvc_pipeline import ReferenceModels
from tests.serve_support import VOICE, make_home, write_clip

BASE = "http://127.0.0.1:7865"
TOKEN = "a-test-token-of-32-characters-xx"


@pytest.fixture(scope="module")
def models(ref_cache):
    return ReferenceModels(ref_cache)


@pytest.fixture(scope="module")
def home(tmp_path_factory, models):
    return make_home(tmp_path_factory.mktemp("home"), models)


@pytest.fixture(scope="module")
def client(home):
    app = create_app(ServeSettings(home=home, ui=False, max_upload_mb=64, max_seconds=20))
    with TestClient(app, base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "speech.wav")


def cli_bytes(home, tmp_path, clip, *flags, suffix="wav") -> bytes:
    out = tmp_path / f"cli-{abs(hash(flags))}.{suffix}"
    old = os.environ.get("RVC_MLX_HOME")
    os.environ["RVC_MLX_HOME"] = str(home)
    try:
        assert main(["infer", "-i", str(clip), "-o", str(out), "-m", VOICE, *flags]) == 0
    finally:
        if old is None:
            del os.environ["RVC_MLX_HOME"]
        else:
            os.environ["RVC_MLX_HOME"] = old
    return out.read_bytes()


def convert(client, clip, **fields):
    files = {"audio": (clip.name, clip.read_bytes())}
    return client.post("/v1/convert", data={"voice": VOICE, **fields}, files=files)


def assert_error(response, status: int, code: str | None = None):
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error", "detail"} and isinstance(body["detail"], str) and "\n" not in body["detail"]
    assert "Traceback" not in body["detail"]
    if code:
        assert body["error"] == code, body
    return body


# -- conversion ---------------------------------------------------------------------------------------------------


def test_convert_equals_cli(client, home, clip, tmp_path):
    r = convert(client, clip, deterministic="true")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav" and r.headers["x-job-id"]
    assert r.content == cli_bytes(home, tmp_path, clip, "--deterministic")
    audio, sr = sf.read(io.BytesIO(r.content))
    assert sr == 40000 and abs(audio.size / sr - 0.6) < 0.05 and np.abs(audio).max() > 0.01
    # other options and format: still the CLI's bytes, and different from the first output
    r2 = convert(client, clip, deterministic="1", pitch="4", f0_method="pm", format="flac", rms_mix_rate="1")
    assert r2.status_code == 200 and r2.headers["content-type"] == "audio/flac"
    assert r2.content == cli_bytes(home, tmp_path, clip, "--deterministic", "--pitch", "4", "--f0-method", "pm",
                                   "--rms-mix-rate", "1", suffix="flac")
    a2, _ = sf.read(io.BytesIO(r2.content))
    assert a2.shape == audio.shape and np.abs(a2 - audio).max() > 1e-3


def test_async_job_events_result_and_delete(client, clip):
    r = client.post("/v1/convert?async=1", data={"voice": VOICE, "deterministic": "true", "pitch_plot": "true"},
                    files={"audio": (clip.name, clip.read_bytes())})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}" and job["state"] in ("queued", "running")
    events = []
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name == "job":
                events.append(json.loads(line[6:]))
            elif line.startswith("data: ") and name == "end":
                break
    states = [e["state"] for e in events]
    assert states[-1] == "done" and "running" in states
    overall = [e["progress"].get("overall", 0) for e in events]
    assert overall == sorted(overall) and overall[-1] == 1.0
    stages = {e["progress"].get("stage") for e in events}
    assert {"f0", "convert"} & stages, stages
    done = client.get(f"/v1/jobs/{job['id']}").json()
    names = [f["name"] for f in done["files"]]
    assert names == ["speech.wav", "pitch.png"] and done["result"]["options"]["deterministic"] is True
    assert "inputs" not in done["request"] and str(client.app.state.services.settings.home) not in json.dumps(done)
    wav = client.get(done["files"][0]["url"])
    png = client.get(done["files"][1]["url"])
    assert wav.status_code == 200 and sf.read(io.BytesIO(wav.content))[1] == 40000
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert any(j["id"] == job["id"] for j in client.get("/v1/jobs").json())
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 200
    assert_error(client.get(f"/v1/jobs/{job['id']}"), 404, "not_found")
    assert not client.app.state.services.jobs.job_dir(job["id"]).exists()


def test_batch_zip_reports_bad_files_and_skips_silent_takes(client, clip, tmp_path):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, np.float32), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really audio" * 20)
    longer = write_clip(tmp_path / "other.wav", seconds=0.8, seed=5)
    files = [("files", (p.name, p.read_bytes())) for p in (clip, silent, bad, longer)]
    r = client.post("/v1/batch", data={"voice": VOICE, "deterministic": "true"}, files=files)
    assert r.status_code == 202, r.text
    job = client.app.state.services.jobs.wait(r.json()["id"], timeout=300)
    assert job["state"] == "done", job["error"]
    result = client.get(f"/v1/jobs/{job['id']}").json()
    assert result["result"]["converted"] == 2
    assert result["result"]["skipped_silent"] == ["silent.wav"]  # a silent take: skipped, not a failure
    assert [f["input"] for f in result["result"]["failed"]] == ["bad.wav"]
    assert "cannot decode audio" in result["result"]["failed"][0]["error"]
    z = zipfile.ZipFile(io.BytesIO(client.get(result["files"][0]["url"]).content))
    assert sorted(z.namelist()) == ["other.wav", "speech.wav"]
    single = convert(client, clip, deterministic="true").content
    assert z.read("speech.wav") == single
    # only silent takes: the job is done, with nothing converted and an empty archive
    r = client.post("/v1/batch", data={"voice": VOICE}, files=[("files", (silent.name, silent.read_bytes()))])
    job = client.app.state.services.jobs.wait(r.json()["id"], timeout=300)
    assert job["state"] == "done", job["error"]
    result = client.get(f"/v1/jobs/{job['id']}").json()
    assert result["result"]["converted"] == 0 and result["result"]["skipped_silent"] == ["silent.wav"]
    assert zipfile.ZipFile(io.BytesIO(client.get(result["files"][0]["url"]).content)).namelist() == []


def test_pitch_csv_and_json_equal_cli(client, clip, tmp_path, capsys):
    csv = client.post("/v1/pitch", data={"method": "pm"}, files={"audio": (clip.name, clip.read_bytes())})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    out = tmp_path / "f0.csv"
    assert main(["pitch", "-i", str(clip), "--method", "pm", "-o", str(out)]) == 0
    assert csv.text == out.read_text()
    js = client.post("/v1/pitch", data={"method": "pm", "format": "json"},
                     files={"audio": (clip.name, clip.read_bytes())}).json()
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert js["frame_seconds"] == 0.01 and len(js["f0"]) == len(rows)
    assert np.allclose(js["f0"], [float(r[1]) for r in rows], atol=1e-3)
    assert js["voiced"] == sum(int(r[2]) for r in rows)


# -- voices and presets -------------------------------------------------------------------------------------------


def test_voice_upload_info_delete(client, ref_cache):
    variant = next(v for v in rvc_models.VARIANTS if v.name == "v1-32k-nof0")
    pth = rvc_models.checkpoint_path(ref_cache, variant)
    up = lambda name: client.post("/v1/voices", data={"name": name},  # noqa: E731
                                  files={"model": ("my voice.pth", pth.read_bytes())})
    r = up("uploaded")
    assert r.status_code == 201, r.text
    v = r.json()
    assert (v["name"], v["version"], v["sample_rate"], v["use_f0"], v["has_index"]) == ("uploaded", "v1", 32000,
                                                                                          False, False)
    assert client.get("/v1/voices/uploaded").json() == v
    assert "uploaded" in [x["name"] for x in client.get("/v1/voices").json()]
    assert_error(up("uploaded"), 409, "conflict")
    assert_error(up("../escape"), 400, "invalid_input")
    assert client.delete("/v1/voices/uploaded").status_code == 200
    assert_error(client.get("/v1/voices/uploaded"), 404, "not_found")
    assert_error(client.delete("/v1/voices/uploaded"), 404)


def test_hostile_pth_upload_never_executes(client, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"weight": {"a": torch.ones(1)}, "config": Evil()}, evil)
    body = assert_error(client.post("/v1/voices", files={"model": ("evil.pth", evil.read_bytes())}), 422,
                        "invalid_model")
    assert "refuses" in body["detail"] and "$RVC_MLX_HOME" not in body["detail"]
    assert not marker.exists()
    assert "evil" not in [v["name"] for v in client.get("/v1/voices").json()]
    voices_dir = client.app.state.services.library.root
    assert sorted(p.name for p in voices_dir.iterdir()) == [VOICE]  # no staging folder left behind


def test_presets_layer_and_match_cli(client, home, clip, tmp_path):
    r = client.put("/v1/presets/octave", json={"options": {"pitch": 12, "f0_method": "pm"}})
    assert r.status_code == 200 and r.json()["options"] == {"pitch": 12.0, "f0_method": "pm"}
    assert "octave" in [p["name"] for p in client.get("/v1/presets").json()]
    with_preset = convert(client, clip, preset="octave", deterministic="true")
    assert with_preset.status_code == 200
    assert with_preset.content == cli_bytes(home, tmp_path, clip, "--preset", "octave", "--deterministic")
    assert with_preset.content == cli_bytes(home, tmp_path, clip, "--pitch", "12", "--f0-method", "pm",
                                            "--deterministic")
    overridden = convert(client, clip, preset="octave", pitch="0", deterministic="true")
    assert overridden.content == cli_bytes(home, tmp_path, clip, "--f0-method", "pm", "--deterministic")
    # the voice's default preset applies without naming it
    assert client.put(f"/v1/voices/{VOICE}/preset", json={"preset": "octave"}).json()["default_preset"] == "octave"
    assert convert(client, clip, deterministic="true").content == with_preset.content
    assert client.put(f"/v1/voices/{VOICE}/preset", json={"preset": None}).json()["default_preset"] is None
    assert_error(client.put("/v1/presets/bad", json={"options": {"pitch": 99}}), 400, "invalid_input")
    assert_error(client.put("/v1/presets/bad", json={"options": {"nope": 1}}), 400, "invalid_input")
    assert_error(client.put("/v1/presets/bad", json={"options": {"f0_file": "/etc/passwd"}}), 400)
    assert_error(convert(client, clip, preset="missing"), 404, "not_found")
    assert client.delete("/v1/presets/octave").status_code == 200
    assert_error(client.get("/v1/presets/octave"), 404)


# -- errors and guards ----------------------------------------------------------------------------------------------


def test_errors_have_one_shape(client, clip, tmp_path):
    audio = {"audio": (clip.name, clip.read_bytes())}
    assert_error(client.get("/v1/jobs/nope"), 404, "not_found")
    assert_error(client.get("/v1/jobs/nope/result"), 404)
    assert_error(client.post("/v1/jobs/nope/retry"), 404)
    assert_error(client.post("/v1/convert", data={"voice": "nobody"}, files=audio), 404, "not_found")
    assert_error(client.post("/v1/convert", data={"voice": VOICE, "index_rate": "2"}, files=audio), 422,
                 "invalid_request")
    assert_error(client.post("/v1/convert", data={"voice": VOICE, "f0_method": "magic"}, files=audio), 422)
    assert_error(client.post("/v1/convert", data={"voice": VOICE, "format": "exe"}, files=audio), 422)
    assert_error(client.post("/v1/convert", data={"voice": VOICE}), 422, "invalid_request")
    assert_error(client.post("/v1/convert", data={"voice": VOICE}, files={"audio": ("x.wav", b"RIFFjunk" * 50)}),
                 422, "invalid_audio")
    assert_error(client.post("/v1/convert", data={"voice": VOICE}, files={"audio": ("x.wav", b"")}), 400)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, np.float32), 16000)
    body = assert_error(client.post("/v1/convert", data={"voice": VOICE},
                                    files={"audio": ("silent.wav", silent.read_bytes())}), 422, "invalid_audio")
    assert "silent" in body["detail"] and "/" not in body["detail"].split(":")[0]
    long_clip = write_clip(tmp_path / "long.wav", seconds=21)
    assert_error(client.post("/v1/convert", data={"voice": VOICE},
                             files={"audio": ("long.wav", long_clip.read_bytes())}), 413, "too_large")
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.put("/v1/health"), 405, "method_not_allowed")
    assert_error(client.post("/v1/models/nothing/download"), 404)
    assert_error(client.get("/v1/jobs?state=weird"), 422)
    assert_error(client.put("/v1/presets/bad name!", json={"options": {}}), 400, "invalid_input")
    done = [j for j in client.get("/v1/jobs?state=done").json()]
    assert done and assert_error(client.post(f"/v1/jobs/{done[0]['id']}/retry"), 409, "conflict")


def test_failed_job_can_be_retried(client, tmp_path):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, np.float32), 16000)
    r = client.post("/v1/convert?async=1", data={"voice": VOICE}, files={"audio": ("s.wav", silent.read_bytes())})
    jobs = client.app.state.services.jobs
    job = jobs.wait(r.json()["id"], timeout=120)
    assert job["state"] == "failed" and "silent" in job["error"]
    retried = client.post(f"/v1/jobs/{job['id']}/retry")
    assert retried.status_code == 202 and retried.json()["state"] in ("queued", "running")
    again = jobs.wait(job["id"], timeout=120)
    assert again["state"] == "failed" and again["attempts"] == 2 and "retry requested" in again["log"]


def test_base_models_listed(client):
    names = {m["name"]: m for m in client.get("/v1/models").json()}
    assert names["hubert_base"]["installed"] and names["rmvpe"]["installed"]
    assert not names["contentvec"]["installed"] and names["rmvpe"]["kind"] == "rmvpe"


def test_queue_is_bounded(home, clip):
    app = create_app(ServeSettings(home=home, ui=False, max_queue=2), start_jobs=False)  # nothing runs
    with TestClient(app, base_url=BASE) as c:
        ids = []
        for _ in range(2):
            r = c.post("/v1/convert?async=1", data={"voice": VOICE}, files={"audio": (clip.name, clip.read_bytes())})
            assert r.status_code == 202
            ids.append(r.json()["id"])
        full = c.post("/v1/convert?async=1", data={"voice": VOICE}, files={"audio": (clip.name, clip.read_bytes())})
        assert_error(full, 429, "queue_full")
        assert int(full.headers["retry-after"]) > 0
        for job_id in ids:  # cancelling frees the queue
            assert c.delete(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
        r = c.post("/v1/convert?async=1", data={"voice": VOICE}, files={"audio": (clip.name, clip.read_bytes())})
        assert r.status_code == 202
        c.delete(f"/v1/jobs/{r.json()['id']}")


def test_host_origin_and_size_guards(client, clip):
    assert_error(client.get("/v1/health", headers={"Host": "evil.example"}), 400, "bad_host")
    assert client.get("/v1/health", headers={"Host": "localhost:7865"}).status_code == 200
    cross = client.put("/v1/presets/x", json={"options": {}}, headers={"Origin": "http://evil.example"})
    assert_error(cross, 403, "bad_origin")
    other_port = client.put("/v1/presets/x", json={"options": {}}, headers={"Origin": "http://127.0.0.1:9999"})
    assert_error(other_port, 403, "bad_origin")
    assert_error(client.put("/v1/presets/x", json={"options": {}}, headers={"Sec-Fetch-Site": "cross-site"}), 403)
    same = client.put("/v1/presets/x", json={"options": {}}, headers={"Origin": BASE, "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200
    client.delete("/v1/presets/x")
    big = b"\0" * (65 << 20)
    assert_error(client.post("/v1/voices", files={"model": ("big.pth", big)}), 413, "too_large")

    def chunks():  # no Content-Length: counted as it streams
        yield (b'--xyz\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n'
               b"Content-Type: application/octet-stream\r\n\r\n")
        for _ in range(70):
            yield b"\0" * (1 << 20)

    assert_error(client.post("/v1/convert", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=xyz"}),
                 413, "too_large")


def test_token_guard(home):
    with pytest.raises(Exception, match="token"):
        ServeSettings(home=home, host="0.0.0.0").check()
    app = create_app(ServeSettings(home=home, ui=False, token=TOKEN), start_jobs=False)
    with TestClient(app, base_url=BASE, follow_redirects=False) as c:
        assert c.get("/v1/health").json()["auth_required"] is True
        assert_error(c.get("/v1/voices"), 401, "unauthorized")
        assert_error(c.get("/v1/voices", headers={"Authorization": "Bearer wrong-token"}), 401)
        assert c.get("/v1/voices", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/v1/voices", headers={"X-API-Key": TOKEN}).status_code == 200
        assert c.get("/models").status_code == 401  # the compat routes too
        page = c.get("/ui/", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert c.post("/login", data={"token": "nope"}).status_code == 401
        login = c.post("/login", data={"token": TOKEN})
        assert login.status_code == 303 and "HttpOnly" in login.headers["set-cookie"]
        assert c.get("/v1/voices").status_code == 200  # the cookie now authorises


# -- rvc-python compatible routes -----------------------------------------------------------------------------------


def test_rvc_python_routes(client, clip, ref_cache):
    assert VOICE in client.get("/models").json()["models"]
    b64 = base64.b64encode(clip.read_bytes()).decode()
    assert_error(client.post("/convert", json={"audio_data": b64}), 400)  # nothing selected yet
    assert client.post(f"/models/{VOICE}").json() == {"message": f"Model {VOICE} loaded successfully"}
    assert_error(client.post("/models/nobody"), 404)
    params = client.get("/params").json()
    assert params == {"f0method": "rmvpe", "f0up_key": 0.0, "index_rate": 0.75, "filter_radius": 3,
                      "resample_sr": 0, "rms_mix_rate": 0.25, "protect": 0.33}
    assert client.post("/params", json={"params": {"f0method": "pm", "f0up_key": 3, "unknown": 1}}).status_code == 200
    assert_error(client.post("/params", json={"params": {"index_rate": 5}}), 400)
    assert client.get("/params").json()["f0up_key"] == 3 and client.get("/params").json()["f0method"] == "pm"
    r = client.post("/convert", json={"audio_data": b64})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    audio, sr = sf.read(io.BytesIO(r.content))
    assert sr == 40000 and abs(audio.size / sr - 0.6) < 0.05
    assert_error(client.post("/convert", json={"audio_data": "!!!not base64"}), 400, "invalid_input")
    # upload a zip laid out as rvc-python's models folder
    variant = next(v for v in rvc_models.VARIANTS if v.name == "v1-32k-nof0")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("Betty/Betty.pth", rvc_models.checkpoint_path(ref_cache, variant).read_bytes())
    up = client.post("/upload_model", files={"file": ("models.zip", buf.getvalue())})
    assert up.status_code == 200, up.text
    assert "Betty" in client.get("/models").json()["models"]
    assert client.delete("/v1/voices/Betty").status_code == 200
    assert_error(client.post("/upload_model", files={"file": ("x.zip", b"not a zip")}), 400)
    assert client.post("/set_device", json={"device": "cuda:0"}).status_code == 200
    assert_error(client.post("/set_models_dir", json={"models_dir": "/etc"}), 403, "forbidden")
    client.post("/params", json={"params": {"f0method": "rmvpe", "f0up_key": 0}})
