"""ComfyUI's web editor on ``graphrun serve``, in a real headless Chromium: it starts, lists graphrun's nodes,
loads a Z-Image workflow and runs it on the tiny model.

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
                  "/api/features", "/api/system_stats")


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


def test_editor_loads_lists_graphrun_nodes_and_runs_a_workflow(tmp_path: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright)")
    from graphrun.engine.serve import editor

    if editor.frontend_root() is None:
        _missing("comfyui-frontend-package is not installed (pip install graphrun[ui])")
    chromium = _chromium()
    from graphrun.engine.serve import ServerConfig
    from graphrun.engine.serve.run import BackgroundServer

    artifacts = _artifacts(tmp_path)
    workflow = _workflow(tmp_path)
    config = ServerConfig(host="127.0.0.1", port=0, out_dir=tmp_path / "out", input_dir=tmp_path / "input",
                          user_dir=tmp_path / "user", models_dirs=["tiny"])
    requests: list[dict[str, Any]] = []
    page_errors: list[str] = []

    with BackgroundServer(config) as server, sync_playwright() as playwright:
        url = server.url
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.on("response", lambda r: requests.append(
                {"method": r.request.method, "url": r.url.removeprefix(url), "status": r.status})
                if r.url.startswith(url) and "/assets/" not in r.url else None)

            # 1. the editor starts: its app object is up and the node types from /object_info are registered
            page.goto(url + "/")
            page.wait_for_function(
                "() => window.app?.graph && window.LiteGraph?.registered_node_types?.KSampler !== undefined",
                timeout=PAGE_TIMEOUT_MS)
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
            page.screenshot(path=str(artifacts / "editor_after_run.png"))
        finally:
            (artifacts / "editor_requests.json").write_text(json.dumps(requests, indent=1))
            browser.close()

    assert not page_errors, page_errors
    answered = {r["url"].split("?")[0]: r["status"] for r in requests if r["method"] == "GET"}
    assert {route: answered.get(route) for route in STARTUP_ROUTES} == {route: 200 for route in STARTUP_ROUTES}
    assert not [r for r in requests if r["status"] >= 500], requests
    assert any(r["url"].startswith(f"/api/view?filename={image['filename']}") and r["status"] == 200
               for r in requests), "the editor did not fetch the image it was told about"
