"""The web UI (Gradio, mounted at /ui): driven through gradio_client and through headless Chromium.

A real server runs on loopback in a thread of this process (uvicorn on a socket bound to 127.0.0.1:0); its jobs
run on the spawned MLX worker, as in ``rvc-mlx serve``. The browser test converts a clip (f0 method pm,
deterministic on, the rest at their defaults) and checks the downloaded file is byte-identical to
``rvc-mlx infer``'s output.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf

from tests.reference import hubert_models
from tests.reference.rvc_pipeline import ReferenceModels

VOICE = "test-voice"
SR16 = 16000
CLIP_SECONDS = 0.6
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS_ENV = "RVC_MLX_SCREENSHOTS"


@pytest.fixture(scope="module")
def models(ref_cache):
    return ReferenceModels(ref_cache)


@pytest.fixture(scope="module")
def home(tmp_path_factory, models):
    """$RVC_MLX_HOME with the base models (links to the reference cache) and the library voice."""
    from rvc_mlx.service.voices import VoiceLibrary

    home = tmp_path_factory.mktemp("home")
    for src, name in ((models.hubert_path, "hubert_base"), (models.rmvpe_path, "rmvpe")):
        try:
            os.symlink(src, home / f"{name}.safetensors")
        except OSError:
            shutil.copyfile(src, home / f"{name}.safetensors")
    VoiceLibrary(home / "voices").add(models.voice("v2-40k-f0")[0], name=VOICE)
    return home


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    sf.write(path, hubert_models.speech_like(int(SR16 * CLIP_SECONDS), seed=2), SR16)
    return path


@pytest.fixture(scope="module")
def server(home):
    """The whole app (API + UI) served on 127.0.0.1 by uvicorn in a thread; always stopped."""
    import uvicorn

    from rvc_mlx.serve.app import create_app
    from rvc_mlx.serve.run import bind
    from rvc_mlx.serve.settings import ServeSettings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RVC_MLX_HOME", str(home))
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        app = create_app(ServeSettings(home=home, port=port))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ui-test-server", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()
            assert not thread.is_alive(), "the server did not stop"


def test_root_redirects_to_the_ui(server):
    import httpx

    r = httpx.get(server + "/", follow_redirects=False)
    assert r.status_code in (302, 303, 307) and r.headers["location"] == "/ui/"
    page = httpx.get(server + "/ui/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_client_convert_and_errors(server, clip):
    from gradio_client import Client, handle_file

    client = Client(server + "/ui/", verbose=False)
    params = {p["parameter_name"] for p in client.view_api(print_info=False, return_format="dict")
              ["named_endpoints"]["/convert"]["parameters"]}
    assert {"audio", "voice", "preset", "format", "pitch", "f0_method", "deterministic", "f0_file"} <= params

    audio, download, plot, status = client.predict(audio=handle_file(str(clip)), voice=VOICE, f0_method="pm",
                                                   deterministic=True, api_name="/convert")
    info = sf.info(audio)
    assert (info.format, info.samplerate) == ("WAV", 40000)
    assert abs(info.frames - CLIP_SECONDS * 40000) <= 40000 * 0.02
    assert Path(download).read_bytes() == Path(audio).read_bytes()
    assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"voice {VOICE}" in status and "\n" not in status

    with pytest.raises(Exception, match=r"voice 'nope' not found") as bad_voice:
        client.predict(audio=handle_file(str(clip)), voice="nope", api_name="/convert")
    with pytest.raises(Exception, match=r"Value 99 is greater than maximum value 48") as bad_value:  # Gradio checks
        client.predict(audio=handle_file(str(clip)), voice=VOICE, pitch=99, api_name="/convert")
    for e in (bad_voice, bad_value):
        assert "Traceback" not in str(e.value)


def test_client_batch(server, clip, tmp_path):
    import zipfile

    from gradio_client import Client, handle_file

    second = tmp_path / "second.wav"
    shutil.copyfile(clip, second)
    client = Client(server + "/ui/", verbose=False)
    archive, summary = client.predict(files=[handle_file(str(clip)), handle_file(str(second))], voice=VOICE,
                                      f0_method="pm", deterministic=True, format="flac", api_name="/batch")
    assert summary == "converted 2 of 2 files"
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["second.flac", "speech.flac"]
        assert z.read("second.flac") == z.read("speech.flac")


def test_client_models_tab(server, models):
    from gradio_client import Client, handle_file

    client = Client(server + "/ui/", verbose=False)
    rows, status = client.predict(name="hubert_base", again=False, api_name="/download_model")  # installed: no network
    assert status.startswith("hubert_base installed")
    assert ["hubert_base", "yes"] == [rows["data"][0][0], rows["data"][0][-1]]
    added, status = client.predict(model=handle_file(str(models.voice("v2-40k-f0")[0])), index=None, name="extra",
                                   replace=False, api_name="/add_voice")
    assert (added, status) == ("extra", "added voice extra")
    assert client.predict(name="extra", api_name="/delete_voice") == "deleted voice extra"
    with pytest.raises(Exception, match="voice 'extra' not found"):
        client.predict(name="extra", api_name="/delete_voice")


def test_browser_convert_matches_cli(server, clip, home, tmp_path, monkeypatch):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium) - the browser test needs it")
    from playwright.sync_api import expect, sync_playwright

    downloaded = tmp_path / "ui.wav"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # Gradio keeps connections open, so "networkidle" can time out on a busy machine: wait for the app
            page.goto(server + "/ui/", wait_until="load", timeout=90_000)
            page.locator("#voice input").wait_for(timeout=90_000)
            page.locator("#voice input").click()
            page.get_by_role("option", name=VOICE, exact=True).click()
            expect(page.locator("#voice input")).to_have_value(VOICE)
            page.locator("#input-audio input[type=file]").set_input_files(str(clip))
            expect(page.locator("#input-audio a[data-testid=download-link]")).to_have_attribute(
                "href", re.compile(r"speech\.wav$"), timeout=30_000)  # uploaded
            page.locator("#opt-f0_method input").click()
            page.get_by_role("option", name="pm", exact=True).click()
            expect(page.locator("#opt-f0_method input")).to_have_value("pm")
            page.locator("#advanced").get_by_text("advanced options").click()
            page.locator("#opt-deterministic input[type=checkbox]").check()
            page.locator("#convert").click()
            expect(page.locator("#status").get_by_role("textbox")).to_have_value(re.compile(f"voice {VOICE}"),
                                                                                 timeout=90_000)
            link = page.locator("#output-file a[download]").first
            expect(link).to_have_attribute("href", re.compile(r"/gradio_api/file="))
            downloaded.write_bytes(page.request.get(link.get_attribute("href")).body())
            expect(page.locator("#pitch-plot img")).to_be_visible()
            shots = [tmp_path / "ui-convert.png"]
            if os.environ.get(SCREENSHOTS_ENV):
                shots.append(Path(os.environ[SCREENSHOTS_ENV]) / "ui-convert.png")
            for shot in shots:
                shot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shot), full_page=True)
            assert not errors, errors
        finally:
            browser.close()

    from rvc_mlx.command import main

    monkeypatch.setenv("RVC_MLX_HOME", str(home))
    expected = tmp_path / "cli.wav"
    assert main(["infer", "-i", str(clip), "-o", str(expected), "-m", VOICE, "--deterministic",
                 "--f0-method", "pm"]) == 0
    assert downloaded.read_bytes() == expected.read_bytes()
