"""ComfyUI's web editor on ``graphrun serve``, in a real headless Chromium: it starts, lists graphrun's nodes,
loads a Z-Image workflow, runs it on the tiny model and cancels a long one.

Two editors: the installed ``comfyui-frontend-package`` (graphrun[ui] pins 1.58.1) and, when
``GRAPHRUN_TEST_FRONTEND_ROOT`` names the ``static/`` folder of another one (ComfyUI 0.33 pins 1.49.6:
``pip download comfyui-frontend-package==1.49.6 --no-deps`` and unzip it), that one too, served with
``--front-end-root``. Neither may log an error to the console but the ones real ComfyUI 0.33 gets as well
(:data:`EXPECTED_CONSOLE_ERRORS`).

Driver: Playwright for Python, on the system's Chromium (Debian's ``chromium``; Playwright cannot download
its own browser builds here). It waits on JavaScript conditions and records every request and uncaught
error, which is what this test checks. Without Playwright, Chromium or ``comfyui-frontend-package`` the
test is skipped, except in CI (``CI=true``), which installs them: there it fails.

The screenshot and the list of requests the editor made go to ``$GRAPHRUN_TEST_ARTIFACTS`` (else the
test's tmp_path).
"""
from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGE_TIMEOUT_MS = 45_000
RUN_TIMEOUT_S = 40.0
#: Routes the editor must get a 200 from while it starts (ComfyUI paths under /api/).
STARTUP_ROUTES = ("/api/users", "/api/settings", "/api/object_info", "/api/extensions", "/api/i18n",
                  "/api/features", "/api/system_stats", "/api/jobs")
OTHER_FRONTEND_ENV = "GRAPHRUN_TEST_FRONTEND_ROOT"
#: Console errors the editor logs on real ComfyUI 0.33 too (checked with both editors, a fresh user folder and
#: no network): the resources a fresh user folder lacks (ComfyUI answers 404 for them), the release check
#: (api.comfy.org, offline), and 1.49.6's own settings store reading the graph before it is made.
EXPECTED_CONSOLE_ERRORS = (
    ("Failed to load resource: the server responded with a status of 404", "/api/userdata"),
    ("Failed to load resource: net::ERR_NAME_NOT_RESOLVED", "https://api.comfy.org/"),
    ("ComfyApp graph accessed before initialization", "/assets/settingStore-"),
)


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI installs it: see .ci/run)")
    pytest.skip(reason)


def _chromium() -> str:
    for candidate in (os.environ.get("GRAPHRUN_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    _missing("no Chromium found (apt-get install chromium, or set GRAPHRUN_CHROMIUM)")
    raise AssertionError("unreachable")


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GRAPHRUN_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _workflow(tmp_path: Path) -> dict[str, Any]:
    """graphrun's Z-Image Turbo graph as the editor saves it (UI format), small enough for the CPU."""
    from graphrun.engine.cli import main

    out = tmp_path / "zimage_turbo.ui.json"
    code = main(["export", str(REPO / "graphs" / "zimage_turbo.yaml"), "--format", "ui", "--models-dir", "tiny",
                 "--set", "width=64", "--set", "height=64", "--set", "steps=2", "--set", "prefix=browser",
                 "-o", str(out)])
    assert code == 0, "graphrun export failed"
    return json.loads(out.read_text())


def _eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _history(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/history", timeout=10) as response:
        return json.loads(response.read())


def _frontend(which: str) -> Path | None:
    """The editor's static folder to serve: None for the installed package's."""
    from graphrun.engine.serve import editor

    if which == "installed":
        if editor.frontend_root() is None:
            _missing("comfyui-frontend-package is not installed (pip install graphrun[ui])")
        return None
    given = os.environ.get(OTHER_FRONTEND_ENV)
    if not given:
        pytest.skip(f"no second editor version: set {OTHER_FRONTEND_ENV} to the static/ folder of another "
                    "comfyui-frontend-package (e.g. 1.49.6, the one ComfyUI 0.33 pins)")
    return editor.check_frontend_root(Path(given))


def _long_prompt(url: str, workflow_prompt: dict[str, Any]) -> str:
    """Queue the history's prompt again with 400 steps (a run to cancel); its prompt_id."""
    prompt = json.loads(json.dumps(workflow_prompt))
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 400
    body = json.dumps({"prompt": prompt}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/prompt", data=body), timeout=30) as response:
        return json.loads(response.read())["prompt_id"]


@pytest.mark.parametrize("frontend", ["installed", "other"])
def test_editor_loads_lists_graphrun_nodes_and_runs_a_workflow(tmp_path: Path, frontend: str) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright)")
    root = _frontend(frontend)
    chromium = _chromium()
    from graphrun.engine.serve import ServerConfig
    from graphrun.engine.serve.run import BackgroundServer

    artifacts = _artifacts(tmp_path)
    workflow = _workflow(tmp_path)
    config = ServerConfig(host="127.0.0.1", port=0, out_dir=tmp_path / "out", input_dir=tmp_path / "input",
                          user_dir=tmp_path / "user", models_dirs=["tiny"], frontend_root=root)
    requests: list[dict[str, Any]] = []
    page_errors: list[str] = []
    console_errors: list[tuple[str, str]] = []

    with BackgroundServer(config) as server, sync_playwright() as playwright:
        url = server.url
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.on("console", lambda msg: console_errors.append((msg.text, msg.location.get("url", "")))
                    if msg.type == "error" else None)
            page.on("response", lambda r: requests.append(
                {"method": r.request.method, "url": r.url.removeprefix(url), "status": r.status})
                if r.url.startswith(url) and "/assets/" not in r.url else None)

            # 1. the editor starts: its app object is up and the node types from /object_info are registered
            page.goto(url + "/")
            page.wait_for_function(
                "() => window.app?.graph && window.LiteGraph?.registered_node_types?.KSampler !== undefined",
                timeout=PAGE_TIMEOUT_MS)
            version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
            if root is None:
                from importlib.metadata import version as installed

                assert version == installed("comfyui-frontend-package")
            registered = set(page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)"))
            assert {"UNETLoader", "CLIPLoader", "VAELoader", "CLIPTextEncode", "EmptySD3LatentImage", "KSampler",
                    "VAEDecode", "SaveImage", "ModelSamplingAuraFlow"} <= registered
            assert "LoadZImage" in registered  # a graphrun node with no ComfyUI counterpart is in the library too
            dialogs = page.evaluate(
                "() => Array.from(document.querySelectorAll('[role=dialog], .p-dialog')).map(d => d.innerText)")
            assert not [d for d in dialogs if "error" in d.lower()], dialogs
            page.keyboard.press("Escape")  # the first-run templates browser (empty: graphrun ships no templates)

            # the editor keeps its settings on the server: in USER_DIR/default/comfy.settings.json
            page.evaluate("async () => { await window.app.extensionManager.setting.set("
                          "'LiteGraph.Canvas.MinFontSizeForLOD', 1) }")  # 1: nodes drawn in full at any zoom
            stored = config.user_dir / "default" / "comfy.settings.json"
            assert _eventually(lambda: stored.is_file() and json.loads(stored.read_text()).get(
                "LiteGraph.Canvas.MinFontSizeForLOD") == 1), "the editor's setting did not reach the server"

            # 2. a UI-format workflow loads with every widget value where the server's node definitions put it
            page.evaluate("async (wf) => { await window.app.loadGraphData(wf) }", workflow)
            widgets = page.evaluate("""() => Object.fromEntries(window.app.graph.nodes.map(n =>
                [n.type, Object.fromEntries((n.widgets || []).map(w => [w.name, w.value]))]))""")
            assert widgets["UNETLoader"]["unet_name"] == "z_image_turbo_bf16.safetensors"
            assert widgets["EmptySD3LatentImage"] == {"width": 64, "height": 64, "batch_size": 1}
            assert {k: widgets["KSampler"][k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler")} == {
                "seed": 0, "steps": 2, "cfg": 1, "sampler_name": "res_multistep", "scheduler": "simple"}
            assert widgets["SaveImage"]["filename_prefix"] == "browser"

            # 3. Run: the editor converts the graph to a prompt and queues it; the server runs it
            page.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.Canvas.FitView') }")
            page.evaluate("async () => { await window.app.queuePrompt(0) }")
            deadline = time.monotonic() + RUN_TIMEOUT_S
            history: dict[str, Any] = {}
            while time.monotonic() < deadline:
                history = _history(url)
                if any(entry["status"].get("completed") or entry["status"].get("status_str") == "error"
                       for entry in history.values()):
                    break
                time.sleep(0.25)
            assert len(history) == 1, f"no finished prompt in /history after {RUN_TIMEOUT_S:.0f}s: {history}"
            (entry,) = history.values()
            assert entry["status"]["status_str"] == "success", entry["status"]
            (output,) = entry["outputs"].values()
            (image,) = output["images"]
            assert image["type"] == "output" and image["filename"].startswith("browser_")
            png = config.out_dir / image["subfolder"] / image["filename"]
            from PIL import Image

            with Image.open(png) as img:
                assert (img.format, img.size) == ("PNG", (64, 64))

            # 4. the editor got the result over the WebSocket and fetched the image for the SaveImage node
            page.wait_for_function(
                "(name) => window.app.nodeOutputs?.['10']?.images?.some(i => i.filename === name)",
                arg=image["filename"], timeout=15_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(artifacts / f"editor_{version}_after_run.png"))

            # 5. the editor's cancel (its queue panel's) stops a running prompt through POST /api/jobs/{id}/cancel
            long_id = _long_prompt(url, entry["prompt"][2])
            assert _eventually(lambda: any(j["id"] == long_id for j in json.loads(urllib.request.urlopen(
                f"{url}/api/jobs?status=in_progress", timeout=10).read())["jobs"]), 30), "the long prompt never ran"
            page.evaluate("async (id) => { await window.app.api.cancelJob(id) }", long_id)
            assert _eventually(lambda: long_id in _history(url), 30), "the cancelled prompt did not stop"
            assert _history(url)[long_id]["status"]["status_str"] == "error"
        finally:
            (artifacts / f"editor_{frontend}_requests.json").write_text(json.dumps(requests, indent=1))
            browser.close()

    assert not page_errors, page_errors
    unexpected = [(text, where) for text, where in console_errors
                  if not any(text.startswith(t) and (where.startswith(w) or where.startswith(url + w))
                             for t, w in EXPECTED_CONSOLE_ERRORS)]
    assert not unexpected, unexpected
    assert any(r["url"].startswith("/api/jobs/") and r["url"].endswith("/cancel") and r["status"] == 200
               for r in requests if r["method"] == "POST")
    answered = {r["url"].split("?")[0]: r["status"] for r in requests if r["method"] == "GET"}
    assert {route: answered.get(route) for route in STARTUP_ROUTES} == {route: 200 for route in STARTUP_ROUTES}
    assert not [r for r in requests if r["status"] >= 500], requests
    assert any(r["url"].startswith(f"/api/view?filename={image['filename']}") and r["status"] == 200
               for r in requests), "the editor did not fetch the image it was told about"
