"""ComfyUI client libraries that nobody here wrote, installed from PyPI and used as their READMEs show, work
unchanged against ``graphrun serve``.

* ``comfy-api-simplified`` (the maintained "queue an API workflow, get the images" client: POST /prompt,
  /ws, /history, /view) queues the user's legacy 3-stage workflow and, through the README's own
  ``queue_and_wait_images``, a Z-Image template workflow (the p2 API export) and, as its send_input_image
  example does, an img2img workflow on an image it uploaded (p5).
* ``comfy-toolkit`` (opens /ws before queueing, follows progress, re-reads /history until outputs appear)
  runs a second Z-Image template workflow through its README's ``submit_and_track``.

Every PNG a library receives is pixel-identical to graphrun running the same JSON in a fresh Runner (not
the server's). The legacy run's WebSocket messages, recorded by a parallel client connected with the client
id the prompt was queued with (ComfyUI sends a prompt's events to that client only), are checked field by
field against what ComfyUI v0.18.1 sends (execution.py, main.py, comfy_execution/progress.py there).

The libraries are in the ``test`` extra; where one is missing the test skips, except under ``CI=true``.
"""
from __future__ import annotations

import asyncio
import importlib
import io
import json
import os
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

import graphrun
from graphrun.engine.context import RunOptions
from graphrun.engine.executor import Runner

DATA = Path(__file__).parent / "data" / "comfy"
LEGACY = DATA / "legacy-zimage-3stage.api.json"
PIPELINE = DATA / "v0.18.1" / "pipeline"
MODELS = PIPELINE / "models"
P2 = PIPELINE / "p2_turbo_res_multistep" / "workflow.api.json"
P3 = PIPELINE / "p3_turbo_euler_ancestral" / "workflow.api.json"
P5 = PIPELINE / "p5_img2img_denoise055" / "workflow.api.json"  # img2img of inputs/vectors2_input_384x320.png
INPUT_IMAGE = PIPELINE / "inputs" / "vectors2_input_384x320.png"
LEGACY_TIMEOUT_S = 240.0  # 15-35 s on 2 CPUs; generous so a slow CI machine fails on content, not time

# The fields of each WebSocket message as ComfyUI v0.18.1 sends it (``timestamp`` where execution.py's
# add_message adds one). graphrun sends no binary frames: it has no live previews.
COMFY_FIELDS: dict[str, set[str]] = {
    "execution_start": {"prompt_id", "timestamp"},
    "execution_cached": {"nodes", "prompt_id", "timestamp"},
    "executing": {"node", "display_node", "prompt_id"},
    "progress": {"value", "max", "prompt_id", "node"},
    "progress_state": {"prompt_id", "nodes"},
    "executed": {"node", "display_node", "output", "prompt_id"},
    "execution_success": {"prompt_id", "timestamp"},
}
FINAL_EXECUTING_FIELDS = {"node", "prompt_id"}  # main.py: {"node": None, "prompt_id": ...}
PROGRESS_STATE_NODE_FIELDS = {"value", "max", "state", "node_id", "prompt_id", "display_node_id",
                              "parent_node_id", "real_node_id"}


def _library(module: str, package: str) -> ModuleType:
    """Import a client library; skip where it is not installed, but fail in CI, which must have it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{package} is not installed ({exc}); it is in graphrun's test extra: pip install {package}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _pixels(png: bytes | Path) -> np.ndarray:
    source = io.BytesIO(png) if isinstance(png, bytes) else png
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One server for the file (its runner keeps the tiny models warm between the tests)."""
    _library("aiohttp", "aiohttp")
    from graphrun.engine.serve import ServerConfig
    from graphrun.engine.serve.run import BackgroundServer

    tmp = tmp_path_factory.mktemp("serve-clients")
    config = ServerConfig(port=0, out_dir=tmp / "out", input_dir=tmp / "in", user_dir=tmp / "user",
                          models_dirs=[str(MODELS)])
    with BackgroundServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """A Runner of its own, never the server's: the reference each PNG from a client is compared with."""
    out = tmp_path_factory.mktemp("direct")
    return Runner(RunOptions(output_dir=out, extra={"models_dirs": [str(MODELS)],
                                                    "input_dirs": [str(INPUT_IMAGE.parent)]}))


def _run_directly(runner: Runner, workflow: Path) -> np.ndarray:
    (png,) = graphrun.load(workflow, runner=runner).run().files
    return _pixels(png)


# --- the legacy 3-stage workflow -------------------------------------------------------------------------------------


async def _queue_and_record(url: str, api: Any, workflow: Any, client_id: str) -> tuple[dict, list[dict]]:
    """Queue ``workflow`` with the library's ``queue_prompt(prompt, client_id)`` while a parallel aiohttp
    client, connected first with that client id, records every message up to ``executing`` with node null."""
    import aiohttp

    loop = asyncio.get_running_loop()
    messages: list[dict] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            messages.append(await ws.receive_json(timeout=10))
            answer = await loop.run_in_executor(None, api.queue_prompt, workflow, client_id)
            deadline = time.monotonic() + LEGACY_TIMEOUT_S
            while True:
                try:
                    msg = await ws.receive(timeout=max(deadline - time.monotonic(), 0.1))
                except asyncio.TimeoutError:
                    raise AssertionError(f"no 'executing' with node null within {LEGACY_TIMEOUT_S:.0f} s; "
                                         f"last messages: {messages[-3:]}") from None
                assert msg.type == aiohttp.WSMsgType.TEXT, f"unexpected WebSocket frame {msg.type}: {msg.data!r:.200}"
                message = json.loads(msg.data)
                messages.append(message)
                data = message["data"]
                if message["type"] == "executing" and data["node"] is None and data["prompt_id"] == answer["prompt_id"]:
                    return answer, messages


def _check_comfyui_event_sequence(messages: list[dict], prompt: dict, prompt_id: str, client_id: str,
                                  comfy_executed: list[str]) -> dict:
    """Every message has ComfyUI's fields and the run's messages come in ComfyUI's order; returns the
    ``executed`` message's data."""
    first = messages[0]
    assert first["type"] == "status" and first["data"]["sid"] == client_id, first
    assert isinstance(first["data"]["status"]["exec_info"]["queue_remaining"], int), first
    for message in messages:
        assert set(message) == {"type", "data"}, message
        if message["type"] == "status":
            assert set(message["data"]) <= {"status", "sid"} and set(message["data"]["status"]) == {"exec_info"}
    # Queue changes go to every client: queued/running (1), then done (0) just before the final executing,
    # which is when comfy-api-simplified's queue_and_wait_images stops listening.
    remaining = [m["data"]["status"]["exec_info"]["queue_remaining"] for m in messages[1:] if m["type"] == "status"]
    assert remaining and remaining[0] >= 1 and remaining[-1] == 0, remaining
    assert [m["type"] for m in messages[-2:]] == ["status", "executing"], messages[-2:]
    mine = [m for m in messages if m["type"] != "status"]
    assert all(m["data"]["prompt_id"] == prompt_id for m in mine), "a message for another prompt reached us"
    for m in mine[:-1]:
        assert m["type"] in COMFY_FIELDS, f"{m['type']} is not a message ComfyUI v0.18.1 sends"
        assert set(m["data"]) == COMFY_FIELDS[m["type"]], (m["type"], sorted(m["data"]))
        if "timestamp" in m["data"]:
            assert isinstance(m["data"]["timestamp"], int), m
    assert mine[-1]["type"] == "executing" and set(mine[-1]["data"]) == FINAL_EXECUTING_FIELDS, mine[-1]

    kinds = [m["type"] for m in mine if m["type"] != "progress_state"]
    assert kinds[:2] == ["execution_start", "execution_cached"], kinds[:4]
    assert kinds[-2:] == ["execution_success", "executing"], kinds[-4:]
    assert "execution_error" not in kinds and "execution_interrupted" not in kinds

    # Each node runs once, after what it reads; with the cached nodes it covers the prompt, and the nodes
    # are those ComfyUI itself executed for this workflow.
    (cached,) = [m["data"]["nodes"] for m in mine if m["type"] == "execution_cached"]
    executing = [m["data"] for m in mine[:-1] if m["type"] == "executing"]
    order = [e["node"] for e in executing]
    assert all(e["display_node"] == e["node"] for e in executing)
    assert len(order) == len(set(order)) and not set(order) & set(cached), (order, cached)
    assert set(order) | set(cached) == set(prompt) == set(comfy_executed), sorted(set(prompt) ^ set(order))
    done = set(cached)
    for node in order:
        sources = {v[0] for v in prompt[node]["inputs"].values() if isinstance(v, list)}
        assert sources <= done, f"node {node} ran before its inputs {sorted(sources - done)}"
        done.add(node)

    # progress: 1..max for the node running now, as ComfyUI's progress hook sends (step + 1, total).
    steps: dict[str, list[tuple[int, int]]] = {}
    running = None
    for m in mine:
        if m["type"] == "executing":
            running = m["data"]["node"]
        elif m["type"] == "progress":
            data = m["data"]
            assert data["node"] == running, f"progress for {data['node']} while {running} runs"
            assert isinstance(data["value"], int) and isinstance(data["max"], int), data
            steps.setdefault(data["node"], []).append((data["value"], data["max"]))
    samplers = {n for n, v in prompt.items() if v["class_type"] in ("KSampler", "SamplerCustom")}
    assert samplers <= set(steps), f"no progress from samplers {sorted(samplers - set(steps))}"
    for node, seen in steps.items():
        total = seen[0][1]
        assert total > 0 and seen == [(i, total) for i in range(1, total + 1)], (node, seen)

    for m in mine:
        if m["type"] == "progress_state":
            for node, state in m["data"]["nodes"].items():
                assert set(state) == PROGRESS_STATE_NODE_FIELDS and state["node_id"] == node, state
                assert state["state"] in ("running", "finished"), state

    (executed,) = [m["data"] for m in mine if m["type"] == "executed"]
    save = next(n for n, v in prompt.items() if v["class_type"] == "SaveImage")
    assert executed["node"] == executed["display_node"] == save
    assert kinds.index("executed") < kinds.index("execution_success")
    return executed


@pytest.fixture(scope="module")
def legacy(srv: Any) -> dict[str, Any]:
    """The legacy workflow queued once through comfy-api-simplified, its messages recorded alongside, and
    the result read back with the library's own calls (/history/{id}, the output node by its title, /view)."""
    simplified = _library("comfy_api_simplified", "comfy-api-simplified")
    api = simplified.ComfyApiWrapper(srv.url)
    workflow = simplified.ComfyWorkflowWrapper(str(LEGACY))
    client_id = str(uuid.uuid4())
    answer, messages = asyncio.run(_queue_and_record(srv.url, api, workflow, client_id))
    prompt_id = answer["prompt_id"]
    history = api.get_history(prompt_id)
    save = workflow.get_node_id("Save Image")
    images = history[prompt_id]["outputs"][save]["images"]
    png = api.get_image(images[0]["filename"], images[0]["subfolder"], images[0]["type"])
    return {"answer": answer, "messages": messages, "client_id": client_id, "record": history[prompt_id],
            "save": save, "png": png}


def test_comfy_api_simplified_gets_the_legacy_png_pixel_identical_to_a_direct_run(legacy: dict, direct: Runner) -> None:
    (image,) = legacy["record"]["outputs"][legacy["save"]]["images"]
    assert image["type"] == "output" and image["subfolder"] == "zimage" and image["filename"].startswith("tweet_")
    received = _pixels(legacy["png"])
    assert received.shape == (864, 672, 3), f"the PNG is {received.shape[1]}x{received.shape[0]}, not 672x864"
    expected = _run_directly(direct, LEGACY)
    assert np.array_equal(received, expected), \
        f"{int((received != expected).sum())} values differ from graphrun running the JSON directly"


def test_the_legacy_run_sends_comfyuis_websocket_messages_and_history(legacy: dict) -> None:
    prompt = json.loads(LEGACY.read_text())
    answer = legacy["answer"]
    prompt_id = answer["prompt_id"]
    assert answer == {"prompt_id": prompt_id, "number": answer["number"], "node_errors": {}}
    comfy_executed = json.loads((PIPELINE / "p1_legacy_3stage" / "record.json").read_text())["execution_order"]
    executed = _check_comfyui_event_sequence(legacy["messages"], prompt, prompt_id, legacy["client_id"],
                                             comfy_executed)
    sampler_steps = {m["data"]["node"]: m["data"]["max"] for m in legacy["messages"] if m["type"] == "progress"}
    # ComfyUI's steps: 9 FlowMatch sigmas; KSampler 16 steps at denoise 0.7; BasicScheduler 16 at 0.6.
    assert {n: sampler_steps.get(n) for n in ("316", "276", "325")} == {"316": 9, "276": 16, "325": 16}

    record = legacy["record"]
    assert set(record) == {"prompt", "outputs", "status", "meta"}, sorted(record)
    assert set(record["status"]) == {"status_str", "completed", "messages"}, record["status"]
    assert record["outputs"] == {legacy["save"]: executed["output"]}
    assert record["status"]["status_str"] == "success" and record["status"]["completed"] is True
    assert [m[0] for m in record["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    number, pid, queued, extra, outputs = record["prompt"]
    assert pid == prompt_id and queued == prompt and outputs == [legacy["save"]]
    assert extra["client_id"] == legacy["client_id"]


def test_only_the_samplers_report_progress_as_in_comfyui(legacy: dict) -> None:
    """ComfyUI v0.18.1 sends ``progress`` only from nodes with a progress bar: here the three samplers
    (latent_preview's callback). Its SaveImage has none (nodes.py), so a client's bar never jumps to 1/1."""
    prompt = json.loads(LEGACY.read_text())
    reporting = {m["data"]["node"] for m in legacy["messages"] if m["type"] == "progress"}
    extra = {node: prompt[node]["class_type"] for node in sorted(reporting - {"316", "276", "325"})}
    assert not extra, (f"graphrun serve sends 'progress' messages for {extra} (value 1, max 1 per saved image, "
                       "from SaveImage's ctx.progress); ComfyUI v0.18.1 sends none for these nodes")


# --- Z-Image template workflows through the READMEs' one-call flows --------------------------------------------------


def test_comfy_api_simplified_readme_flow_gets_the_zimage_template_png(srv: Any, direct: Runner,
                                                                       tmp_path: Path) -> None:
    simplified = _library("comfy_api_simplified", "comfy-api-simplified")
    api = simplified.ComfyApiWrapper(srv.url + "/")  # as the README writes the address
    workflow = simplified.ComfyWorkflowWrapper(str(P2))
    workflow.set_node_param("Sampler", "seed", 1234)  # by node title, as the README does
    workflow.set_node_param("Save", "filename_prefix", "clients/p2")

    results = api.queue_and_wait_images(workflow, "Save")

    assert len(results) == 1, f"expected one image from the 'Save' node, got {sorted(results)}"
    ((filename, png),) = results.items()
    assert filename.startswith("p2_") and filename.endswith(".png"), filename
    assert (srv.config.out_dir / "clients" / filename).is_file()
    received = _pixels(png)
    assert received.shape == (512, 512, 3)
    workflow.save_to_file(tmp_path / "p2_changed.api.json")
    expected = _run_directly(direct, tmp_path / "p2_changed.api.json")
    assert np.array_equal(received, expected), \
        f"{int((received != expected).sum())} values differ from graphrun running the JSON directly"


def test_comfy_api_simplified_uploads_an_input_image_and_runs_img2img_on_it(srv: Any, direct: Runner) -> None:
    """The library's send_input_image example: upload_image, then LoadImage names "subfolder/name"."""
    simplified = _library("comfy_api_simplified", "comfy-api-simplified")
    api = simplified.ComfyApiWrapper(srv.url)
    uploaded = api.upload_image(INPUT_IMAGE)
    assert uploaded == {"name": INPUT_IMAGE.name, "subfolder": "default_upload_folder", "type": "input"}
    stored = srv.config.input_dir / "default_upload_folder" / INPUT_IMAGE.name
    assert stored.read_bytes() == INPUT_IMAGE.read_bytes()
    workflow = simplified.ComfyWorkflowWrapper(str(P5))
    workflow.set_node_param("Input image", "image", f"{uploaded['subfolder']}/{uploaded['name']}")

    results = api.queue_and_wait_images(workflow, output_node_title="Save")

    ((filename, png),) = results.items()
    received = _pixels(png)
    assert filename.startswith("p5_img2img_") and received.shape == (320, 384, 3)
    expected = _run_directly(direct, P5)  # the same image, read from the folder it was uploaded from
    assert np.array_equal(received, expected), \
        f"{int((received != expected).sum())} values differ from graphrun running the JSON directly"


def test_comfy_toolkit_readme_flow_tracks_progress_and_gets_the_zimage_template_png(srv: Any, direct: Runner) -> None:
    toolkit = _library("comfy_toolkit", "comfy-toolkit[ws]")
    _library("websocket", "websocket-client")  # the toolkit's [ws] extra, which submit_and_track needs
    client = toolkit.ComfyClient(srv.url)
    workflow = client.load_workflow(P3)
    progress: list[tuple[int, int]] = []
    nodes: list[str | None] = []

    def on_progress(value: int, maximum: int) -> None:
        progress.append((value, maximum))

    result = client.submit_and_track(workflow, on_progress=on_progress, on_node=nodes.append)

    assert result["status"] == "completed" and len(result["images"]) == 1, result
    (descriptor,) = result["images"]
    assert descriptor["node_id"] == "10" and descriptor["filename"].startswith("p3_euler_a_"), descriptor
    # The sampler's 8 steps as ComfyUI reports them (SaveImage's extra 1/1 after them is
    # test_only_the_samplers_report_progress_as_in_comfyui's business).
    assert progress[:8] == [(i, 8) for i in range(1, 9)], progress
    # The nodes that ran, sampler, decode, save last (what an earlier prompt left cached is skipped); the
    # library stops reading at execution_success, before ComfyUI's final executing with node null.
    assert nodes[-3:] == ["8", "9", "10"] and set(nodes) <= set(workflow), nodes
    received = _pixels(client.download(descriptor))
    assert received.shape == (512, 512, 3)
    expected = _run_directly(direct, P3)
    assert np.array_equal(received, expected), \
        f"{int((received != expected).sum())} values differ from graphrun running the JSON directly"
