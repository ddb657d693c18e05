"""The server against its own OpenAPI schema, and the invariants the front ends are built on.

1. schemathesis fuzzes every operation of the in-process app (a real home with the library voice ``test-voice``;
   the job manager and its spawned MLX worker run, so synchronous routes that wait for a job finish): no 5xx,
   and every error body is exactly ``{"error", "detail"}``.
2. Options are defined once: the ``infer`` flags, the API's form fields and ``GET /v1/options`` all match
   ``option_specs()`` (names, types, defaults, ranges, choices); the comparison is shown to catch a changed range
   and a missing flag.
3. Layering: no front end imports another, the service layer and the library import no front end, and the service
   layer and ``rvc_mlx.options`` import no web framework (checked on the source with ``ast``, function-level
   imports included; shown to catch a seeded ``bench -> cli`` import).
4. The server process never loads MLX (building the app and its schema, in a fresh interpreter).
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

from rvc_mlx.options import option_specs
from rvc_mlx.serve.app import create_app
from rvc_mlx.serve.settings import ServeSettings
from tests.reference.rvc_pipeline import ReferenceModels
from tests.serve_support import VOICE, make_home

BASE = "http://127.0.0.1:7865"  # the security middleware serves localhost and IP literals only
HOST = "127.0.0.1:7865"
SRC = Path(__file__).resolve().parents[1] / "src" / "rvc_mlx"
REQUEST_TIMEOUT_S = 120  # a request that hangs (e.g. waiting on a job nobody runs) fails instead of blocking


# -- 1. schemathesis -------------------------------------------------------------------------------------------------


class LifespanHeldElsewhere:
    """The app for schemathesis' ASGI transport, with the lifespan answered here: the real lifespan (job manager,
    MLX worker) is run once by the fixture's TestClient, while schemathesis would start and stop it per test."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def _load_schema():
    """The app's OpenAPI schema, taken from an app without a worker (the routes do not depend on the home).
    Loaded at import: schemathesis 4.32's fixture-based ``from_fixture`` breaks on pytest 9.2 (it sets the
    removed ``Function._nodeid``). Requests go to the fixture's app (``case.call(app=...)``)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        spec = create_app(ServeSettings(home=Path(tmp), ui=False), start_jobs=False).openapi()
    config = schemathesis.Config.from_dict({
        "seed": 1234,
        "generation": {"mode": "all", "deterministic": True},
        # fuzzing: max_examples per operation (below). coverage: schemathesis' deterministic boundary and
        # negative cases (range edges, missing fields, wrong types, unexpected methods), about 700 in all; both
        # together take ~10 s here. (The schema has no examples, so the examples phase sends nothing.)
        "phases": {"coverage": {"enabled": True}, "stateful": {"enabled": False}},
    })
    return schemathesis.openapi.from_dict(spec, config=config)


schema = _load_schema()


@pytest.fixture(scope="module")
def served_app(tmp_path_factory, ref_cache):
    home = make_home(tmp_path_factory.mktemp("schema-home"), ReferenceModels(ref_cache))
    app = create_app(ServeSettings(home=home, ui=False, max_upload_mb=8, max_seconds=20))
    with TestClient(app, base_url=BASE):  # runs the lifespan: jobs execute on the spawned worker
        yield LifespanHeldElsewhere(app)


def error_shape(ctx, response, case):
    """schemathesis check: every non-2xx, non-3xx body is JSON with exactly the keys error and detail."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from None
    if not (isinstance(body, dict) and set(body) == {"error", "detail"}):
        raise AssertionError(f"{response.status_code} body is not {{error, detail}}: {body!r}")
    if not (isinstance(body["error"], str) and isinstance(body["detail"], str)):
        raise AssertionError(f"{response.status_code} error/detail are not strings: {body!r}")
    return True


MULTIPART = ("/v1/convert", "/v1/batch", "/v1/pitch", "/v1/voices", "/upload_model")


# Every operation is kept, conversions included: random bytes as audio or models fail fast with 4xx (a batch of
# them, or a model upload, becomes a job that fails on the worker). Uploads are small (hypothesis-generated).
# Two adjustments let cases reach past the first check: the voice field of convert/batch names the real library
# voice, and a multipart field generated as null is left out (a form cannot send null; schemathesis would send
# the text "null", which the typed fields refuse with 422 before anything else runs).
@schema.parametrize()
@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_api_fuzz_no_5xx_and_one_error_shape(case, served_app):
    if isinstance(case.body, dict) and case.path in MULTIPART and case.method == "POST":
        for name in [k for k, v in case.body.items() if v is None]:
            del case.body[name]
        if "voice" in case.body and case.path in ("/v1/convert", "/v1/batch"):
            case.body["voice"] = VOICE
    case.call_and_validate(base_url=BASE, app=served_app, checks=[not_a_server_error, error_shape],
                           timeout=REQUEST_TIMEOUT_S)


def test_fuzz_checks_catch_a_5xx_and_a_wrong_error_shape():
    """The two checks above fail on a seeded 500 and on an error body of another shape."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from schemathesis.core.failures import FailureGroup

    from rvc_mlx.serve.app import error_response

    app = FastAPI()

    @app.get("/boom")
    def boom():
        return error_response(500, "internal_error", "seeded")

    @app.get("/odd")
    def odd():
        return JSONResponse({"message": "not the error shape"}, status_code=400)

    @app.get("/fine")
    def fine():
        return error_response(404, "not_found", "the one shape")

    seeded = schemathesis.openapi.from_asgi("/openapi.json", app)
    for path, check, expected in (("/boom", not_a_server_error, "Server error"),
                                  ("/odd", error_shape, "error, detail")):
        with pytest.raises(FailureGroup, match=expected):
            seeded[path]["GET"].Case().call_and_validate(checks=[check])
    seeded["/fine"]["GET"].Case().call_and_validate(checks=[not_a_server_error, error_shape])


# -- 2. options defined once ----------------------------------------------------------------------------------------


def _num_equal(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and float(a) == float(b))


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def parser_mismatches(parser: argparse.ArgumentParser, specs) -> list[str]:
    """How ``parser``'s option flags differ from ``specs`` (empty: they match)."""
    by_flag = {flag: action for action in parser._actions for flag in action.option_strings}
    problems = []
    for s in specs:
        action = by_flag.get(s.flag)
        if action is None:
            problems.append(f"{s.name}: no flag {s.flag}")
            continue
        if action.dest != s.name:
            problems.append(f"{s.name}: {s.flag} stores to {action.dest!r}")
        if s.type is bool:
            if not isinstance(action, argparse._StoreTrueAction):
                problems.append(f"{s.name}: {s.flag} is not store_true")
            continue
        if action.type is not s.type:
            problems.append(f"{s.name}: {s.flag} type {action.type!r}, spec {s.type!r}")
        if tuple(action.choices or ()) != tuple(s.param.choices or ()):
            problems.append(f"{s.name}: {s.flag} choices {action.choices!r}, spec {s.param.choices!r}")
    return problems


def _resolve(openapi: dict, node: dict) -> dict:
    while "$ref" in node:
        node = openapi["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _non_null(prop: dict) -> dict:
    """An ``Optional[X]`` property's X branch (FastAPI writes ``anyOf: [X, {type: null}]``)."""
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
    return branches[0] if len(branches) == 1 else prop


JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def openapi_mismatches(openapi: dict, specs, path: str = "/v1/convert") -> list[str]:
    """How the multipart body of ``POST path`` differs from ``specs`` (empty: they match)."""
    body = openapi["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    props = _resolve(openapi, body)["properties"]
    problems = []
    for s in specs:
        prop = props.get(s.name)
        if prop is None:
            problems.append(f"{path} {s.name}: no form field")
            continue
        field = _non_null(prop)
        if s.param.file:
            if field.get("type") != "string" or not (field.get("format") == "binary"
                                                      or field.get("contentMediaType") == "application/octet-stream"):
                problems.append(f"{path} {s.name}: a file option but not a file upload: {prop}")
            continue
        want = list(s.param.choices) if s.param.choices else None
        if field.get("enum") != want:
            problems.append(f"{path} {s.name}: enum {field.get('enum')!r}, spec {want!r}")
        if not want and field.get("type") != JSON_TYPES[s.type]:
            problems.append(f"{path} {s.name}: type {field.get('type')!r}, spec {s.type.__name__}")
        for key, bound in (("minimum", s.param.lo), ("maximum", s.param.hi)):
            if not _num_equal(field.get(key), bound):
                problems.append(f"{path} {s.name}: {key} {field.get(key)!r}, spec {bound!r}")
    return problems


def options_endpoint_mismatches(payload: list[dict], specs) -> list[str]:
    """How ``GET /v1/options``'s answer differs from ``specs`` (empty: they match)."""
    problems = []
    names = [o["name"] for o in payload]
    if names != [s.name for s in specs]:
        problems.append(f"names {names}, spec {[s.name for s in specs]}")
    by_name = {o["name"]: o for o in payload}
    for s in specs:
        o = by_name.get(s.name)
        if o is None:
            continue
        want = {"type": s.type.__name__, "default": s.default, "min": s.param.lo, "max": s.param.hi,
                "step": s.param.step, "choices": list(s.param.choices) if s.param.choices else None,
                "file": s.param.file, "advanced": s.param.advanced, "label": s.param.label, "help": s.param.help}
        for key, value in want.items():
            got = o.get(key)
            same = _num_equal(got, value) if key in ("min", "max", "step") else got == value
            if not same or isinstance(got, bool) != isinstance(value, bool):
                problems.append(f"{s.name}: {key} {got!r}, spec {value!r}")
    return problems


@pytest.fixture(scope="module")
def schema_app(tmp_path_factory):
    """The app without its worker: for the schema and the options endpoint."""
    return create_app(ServeSettings(home=tmp_path_factory.mktemp("schema-only"), ui=False), start_jobs=False)


def with_range(specs, name: str, **changes):
    return tuple(dataclasses.replace(s, param=dataclasses.replace(s.param, **changes)) if s.name == name else s
                 for s in specs)


def test_infer_flags_match_option_specs():
    from rvc_mlx.command import build_parser

    infer = subparser(build_parser(), "infer")
    specs = option_specs()
    assert parser_mismatches(infer, specs) == []
    # the comparison catches a changed choice list and a changed type
    bad = with_range(specs, "f0_method", choices=("rmvpe", "pm"))
    assert any(p.startswith("f0_method: --f0-method choices") for p in parser_mismatches(infer, bad))
    bad = tuple(dataclasses.replace(s, type=float) if s.name == "sid" else s for s in specs)
    assert any(p.startswith("sid: --sid type") for p in parser_mismatches(infer, bad))


def test_parser_comparison_catches_a_missing_flag(monkeypatch):
    from rvc_mlx.service import args

    full = option_specs()
    monkeypatch.setattr(args, "option_specs", lambda: tuple(s for s in full if s.name != "protect"))
    parser = argparse.ArgumentParser()
    args.add_option_flags(parser)
    assert parser_mismatches(parser, full) == ["protect: no flag --protect"]


def test_api_form_fields_match_option_specs(schema_app):
    openapi = schema_app.openapi()
    specs = option_specs()
    assert openapi_mismatches(openapi, specs, "/v1/convert") == []
    # a batch takes no per-file upload options (one f0 file cannot fit many inputs)
    assert openapi_mismatches(openapi, [s for s in specs if not s.param.file], "/v1/batch") == []
    f0_file = _non_null(_resolve(openapi, openapi["paths"]["/v1/convert"]["post"]["requestBody"]["content"]
                                 ["multipart/form-data"]["schema"])["properties"]["f0_file"])
    assert f0_file["type"] == "string" and (f0_file.get("format") == "binary"
                                            or f0_file.get("contentMediaType") == "application/octet-stream")
    # seeded faults: a spec whose range moved, and a schema whose bound was edited, are both reported
    assert openapi_mismatches(openapi, with_range(specs, "pitch", hi=24)) == [
        "/v1/convert pitch: maximum 48.0, spec 24"]
    edited = copy.deepcopy(openapi)
    body = _resolve(edited, edited["paths"]["/v1/convert"]["post"]["requestBody"]["content"]
                    ["multipart/form-data"]["schema"])
    _non_null(body["properties"]["protect"])["minimum"] = 0.1
    del body["properties"]["sid"]
    assert openapi_mismatches(edited, specs) == ["/v1/convert protect: minimum 0.1, spec 0",
                                                 "/v1/convert sid: no form field"]


def test_options_endpoint_matches_option_specs(schema_app):
    with TestClient(schema_app, base_url=BASE) as client:
        r = client.get("/v1/options")
    assert r.status_code == 200, r.text
    specs = option_specs()
    assert options_endpoint_mismatches(r.json(), specs) == []
    bad = with_range(specs, "index_rate", lo=0.5)
    assert options_endpoint_mismatches(r.json(), bad) == ["index_rate: min 0.0, spec 0.5"]
    assert options_endpoint_mismatches(r.json()[:-1], specs)[0].startswith("names ")


# -- 3. layering ---------------------------------------------------------------------------------------------------


# parity: the library of dump/compare
FRONT_END_MODULES = ("rvc_mlx.cli", "rvc_mlx.export", "rvc_mlx.bench", "rvc_mlx.live", "rvc_mlx.train.command")
FRONT_END_PACKAGES = ("rvc_mlx.serve",)
GATHERERS = ("rvc_mlx.command", "rvc_mlx.__main__")  # know every front end by design
WEB_LIBRARIES = ("fastapi", "gradio", "starlette", "pydantic", "uvicorn")
FRAMEWORK_FREE = ("rvc_mlx.service", "rvc_mlx.options")


def front_end(module: str) -> str | None:
    """The front end ``module`` belongs to (the package name for serve.*), or None."""
    if module in FRONT_END_MODULES:
        return module
    for package in FRONT_END_PACKAGES:
        if module == package or module.startswith(package + "."):
            return package
    return None


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def source_modules(root: Path = SRC) -> dict[str, tuple[str, bool]]:
    """module name -> (source, is_package) for every module under ``root`` (the rvc_mlx package)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = (path.read_text(encoding="utf-8"), is_package)
    return modules


def imports_of(name: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """Absolute names of everything ``source`` imports, anywhere in it (function-level imports too); for
    ``from P import x`` also ``P.x`` when that is a module."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    found.add(f"{base}.{alias.name}")
    return found


def layering_violations(modules: dict[str, tuple[str, bool]]) -> list[str]:
    known = set(modules)
    problems = []
    for name, (source, is_package) in sorted(modules.items()):
        imported = imports_of(name, source, is_package, known)
        own = front_end(name)
        for target in sorted(imported):
            other = front_end(target)
            if other is None or other == own:
                continue
            if own is not None:
                problems.append(f"front end {name} imports front end {target}")
            elif name not in GATHERERS:
                layer = "service" if _under(name, ("rvc_mlx.service",)) else "library"
                problems.append(f"{layer} module {name} imports front end {target}")
        if _under(name, FRAMEWORK_FREE):
            for target in sorted(imported):
                if target.split(".")[0] in WEB_LIBRARIES:
                    problems.append(f"{name} imports {target}")
    return problems


def test_layering_front_ends_service_library():
    modules = source_modules()
    assert {"rvc_mlx.cli", "rvc_mlx.serve.api", "rvc_mlx.service.args", "rvc_mlx.options"} <= set(modules)
    assert layering_violations(modules) == []


def test_layering_checker_catches_seeded_imports():
    modules = source_modules()
    before = set(layering_violations(modules))
    seeded = dict(modules)
    bench, _ = modules["rvc_mlx.bench"]
    seeded["rvc_mlx.bench"] = (bench + "\nfrom .cli import x\n", False)
    parity, _ = modules["rvc_mlx.parity"]
    seeded["rvc_mlx.parity"] = (parity + "\nfrom .export import x\n", False)
    seeded["rvc_mlx.service.fake"] = (textwrap.dedent("""
        import pydantic

        def late():
            from ..serve import app
            from .. import bench
        """), False)
    seeded["rvc_mlx.f0.fake"] = ("from rvc_mlx.serve.api import router\n", False)
    seeded["rvc_mlx.serve.fake"] = ("from ..export import main\nfrom . import api\n", False)
    assert set(layering_violations(seeded)) - before == {
        "library module rvc_mlx.f0.fake imports front end rvc_mlx.serve.api",
        "front end rvc_mlx.bench imports front end rvc_mlx.cli",
        "library module rvc_mlx.parity imports front end rvc_mlx.export",
        "front end rvc_mlx.serve.fake imports front end rvc_mlx.export",
        "service module rvc_mlx.service.fake imports front end rvc_mlx.bench",
        "service module rvc_mlx.service.fake imports front end rvc_mlx.serve",
        "service module rvc_mlx.service.fake imports front end rvc_mlx.serve.app",
        "rvc_mlx.service.fake imports pydantic",
    }


# -- 4. the server process never loads MLX ----------------------------------------------------------------------------


MLX_PROBE = """
import json, sys
from pathlib import Path
from rvc_mlx.serve.app import create_app
from rvc_mlx.serve.settings import ServeSettings
app = create_app(ServeSettings(home=Path(sys.argv[1]), ui=False), start_jobs=False)
app.openapi()
mlx = lambda: sorted(m for m in sys.modules if m == "mlx" or m.startswith("mlx."))
print(json.dumps(mlx()))
import rvc_mlx.pipeline  # control: the probe does see MLX once something loads it
print(json.dumps(mlx()))
"""


def test_server_process_never_imports_mlx(tmp_path):
    env = {**os.environ, "RVC_MLX_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", MLX_PROBE, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    server, control = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert server == [], f"the server process imported {server}"
    assert "mlx.core" in control
