"""graphrun serve speaks ComfyUI's API: the routes, the WebSocket events and the error answers a ComfyUI
client relies on, checked with plain aiohttp clients against a server on a thread (tiny model). The server
follows ComfyUI 0.33 by default (UUID prompt ids, job cancels, cycle errors, /system_stats fields); under
``--comfy 0.18.1`` it keeps v0.18.1's shapes where they differ. Exact answers below were read from real
ComfyUI 0.33 (de6b062f, ``main.py --cpu``) with curl."""
from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp")
from PIL import Image  # noqa: E402

from graphrun.engine.serve import ServerConfig  # noqa: E402
from graphrun.engine.serve.run import BackgroundServer  # noqa: E402

P2 = Path(__file__).parent / "data" / "comfy" / "v0.18.1" / "pipeline" / "p2_turbo_res_multistep" / "workflow.api.json"


def small_prompt(seed: int = 1, steps: int = 2, prefix: str = "api") -> dict[str, Any]:
    """A Z-Image template workflow (the p2 API export), 64x64 and few steps so it runs in a blink."""
    prompt = json.loads(P2.read_text())
    prompt["7"]["inputs"].update(width=64, height=64)
    prompt["8"]["inputs"].update(steps=steps, seed=seed)
    prompt["10"]["inputs"]["filename_prefix"] = prefix
    return prompt


def config(tmp: Path, **changes: Any) -> ServerConfig:
    return ServerConfig(port=0, out_dir=tmp / "out", input_dir=tmp / "in", user_dir=tmp / "user",
                        models_dirs=["tiny"], **changes)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    with BackgroundServer(config(tmp_path_factory.mktemp("serve"))) as server:
        yield server


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def request(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, **kwargs) as response:
            body = await response.read()
            try:
                return response.status, json.loads(body)
            except ValueError:
                return response.status, body


async def queue_and_listen(url: str, prompt: dict, client_id: str, **extra: Any) -> tuple[dict, list[dict]]:
    """Queue a prompt as the ComfyUI docs' websocket example does and collect every message for it."""
    messages: list[dict] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            messages.append(json.loads((await ws.receive()).data))  # the greeting: status with our sid
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id, **extra}) as r:
                answer = await r.json()
                assert r.status == 200, answer
            async for msg in ws:
                data = json.loads(msg.data)
                messages.append(data)
                if data["type"] == "executing" and data["data"]["node"] is None:
                    break
    return answer, messages


def wait_history(url: str, prompt_id: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, body = run(request(f"{url}/history/{prompt_id}"))
        if body:
            return body[prompt_id]
        time.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")


# --- a prompt from queue to image ------------------------------------------------------------------------------


def test_event_sequence_history_and_view_have_comfyuis_shapes(srv: BackgroundServer) -> None:
    answer, messages = run(queue_and_listen(srv.url, small_prompt(seed=11), "client-a"))
    prompt_id = answer["prompt_id"]
    assert answer == {"prompt_id": prompt_id, "number": answer["number"], "node_errors": {}}
    kinds = [m["type"] for m in messages if m["type"] != "progress_state"]
    assert messages[0] == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                      "sid": "client-a"}}
    mine = [m for m in messages if isinstance(m["data"], dict) and m["data"].get("prompt_id") == prompt_id]
    order = [m["type"] for m in mine if m["type"] != "progress_state"]
    assert order[:2] == ["execution_start", "execution_cached"]
    assert order[-2:] == ["execution_success", "executing"]
    executing = [m["data"]["node"] for m in mine if m["type"] == "executing"]
    assert executing[:-1] and set(executing[:-1]) <= set(small_prompt()) and executing[-1] is None
    assert executing.index("8") < executing.index("9") < executing.index("10")  # sampler, decode, save
    progress = [m["data"] for m in mine if m["type"] == "progress" and m["data"]["node"] == "8"]
    assert [(p["value"], p["max"]) for p in progress] == [(1, 2), (2, 2)]
    (executed,) = [m["data"] for m in mine if m["type"] == "executed"]
    assert executed["node"] == executed["display_node"] == "10"
    (image,) = executed["output"]["images"]
    assert image["type"] == "output" and image["subfolder"] == "" and re.fullmatch(r"api_\d{5}_\.png", image["filename"])
    for m in mine:
        if m["type"] in ("execution_start", "execution_cached", "execution_success"):
            assert isinstance(m["data"]["timestamp"], int)
    assert "status" in kinds  # queue changes are announced to every client

    record = wait_history(srv.url, prompt_id)
    number, pid, prompt, extra, outputs = record["prompt"]
    assert pid == prompt_id and prompt == small_prompt(seed=11) and outputs == ["10"]
    assert extra["client_id"] == "client-a" and isinstance(extra["create_time"], int)
    assert record["outputs"] == {"10": executed["output"]}
    assert record["status"]["status_str"] == "success" and record["status"]["completed"] is True
    assert [m[0] for m in record["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert record["meta"]["10"] == {"node_id": "10", "display_node": "10", "parent_node": None, "real_node_id": "10"}

    status, png = run(request(f"{srv.url}/view", params={"filename": image["filename"], "type": "output",
                                                         "subfolder": ""}))
    assert status == 200 and Image.open(io.BytesIO(png)).size == (64, 64)
    status, webp = run(request(f"{srv.url}/api/view", params={"filename": image["filename"], "preview": "webp;50"}))
    assert status == 200 and Image.open(io.BytesIO(webp)).format == "WEBP"


def test_preview_images_are_comfyuis_temp_type_and_viewable(srv: BackgroundServer) -> None:
    prompt = small_prompt(seed=41)
    prompt["10"] = {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}}
    answer, messages = run(queue_and_listen(srv.url, prompt, "preview"))
    (executed,) = [m["data"] for m in messages if m["type"] == "executed"]
    (image,) = executed["output"]["images"]
    assert image["type"] == "temp" and image["subfolder"] == "" and image["filename"].endswith(".png")
    status, png = run(request(f"{srv.url}/view", params={**image}))
    assert status == 200 and Image.open(io.BytesIO(png)).size == (64, 64)
    assert run(request(f"{srv.url}/view", params={**image, "type": "output"}))[0] == 404  # not an output


def test_a_second_prompt_reuses_the_warm_models_and_says_what_was_cached(srv: BackgroundServer) -> None:
    run(queue_and_listen(srv.url, small_prompt(seed=1), "client-b"))
    _, messages = run(queue_and_listen(srv.url, small_prompt(seed=2), "client-b"))
    (cached,) = [m["data"]["nodes"] for m in messages if m["type"] == "execution_cached"]
    assert {"1", "2", "3", "5", "6", "7"} <= set(cached) and "8" not in cached  # only the new seed's work re-runs
    executing = [m["data"]["node"] for m in messages if m["type"] == "executing"]
    assert "1" not in executing and "8" in executing


def test_two_clients_queueing_at_once_each_get_their_own_events(srv: BackgroundServer) -> None:
    async def both() -> list:
        return await asyncio.gather(queue_and_listen(srv.url, small_prompt(seed=21, prefix="one"), "one"),
                                    queue_and_listen(srv.url, small_prompt(seed=22, prefix="two"), "two"))

    (a, events_a), (b, events_b) = run(both())
    assert a["prompt_id"] != b["prompt_id"]
    for answer, events, prefix in ((a, events_a, "one"), (b, events_b, "two")):
        ids = {m["data"].get("prompt_id") for m in events if m["type"] in ("executing", "executed", "progress")}
        assert ids == {answer["prompt_id"]}  # another client's progress is not sent to this one
        (executed,) = [m["data"] for m in events if m["type"] == "executed"]
        assert executed["output"]["images"][0]["filename"].startswith(prefix)
    _, history = run(request(f"{srv.url}/history"))
    assert {a["prompt_id"], b["prompt_id"]} <= set(history)


def test_interrupt_stops_the_running_prompt_and_the_next_one_runs(srv: BackgroundServer) -> None:
    async def interrupted() -> tuple[str, list[dict]]:
        messages = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{srv.url}/ws?clientId=stopper") as ws:
                async with session.post(f"{srv.url}/prompt", json={"prompt": small_prompt(seed=5, steps=500),
                                                                   "client_id": "stopper"}) as r:
                    prompt_id = (await r.json())["prompt_id"]
                async for msg in ws:
                    data = json.loads(msg.data)
                    messages.append(data)
                    if data["type"] == "progress" and data["data"]["value"] == 2:
                        async with session.post(f"{srv.url}/interrupt", json={"prompt_id": prompt_id}) as r:
                            assert r.status == 200
                    if data["type"] == "executing" and data["data"]["node"] is None:
                        break
        return prompt_id, messages

    prompt_id, messages = run(interrupted())
    (stop,) = [m["data"] for m in messages if m["type"] == "execution_interrupted"]
    assert stop["prompt_id"] == prompt_id and stop["node_id"] == "8" and stop["node_type"] == "KSampler"
    assert "8" not in stop["executed"]
    assert max(m["data"]["value"] for m in messages if m["type"] == "progress") < 500
    record = wait_history(srv.url, prompt_id)
    assert record["status"]["status_str"] == "error" and record["outputs"] == {}
    # an interrupt for a prompt that is not running, or when nothing runs, does not stop the next one
    assert run(request(f"{srv.url}/interrupt", "POST", json={"prompt_id": "not-running"}))[0] == 200
    assert run(request(f"{srv.url}/interrupt", "POST"))[0] == 200
    answer, after = run(queue_and_listen(srv.url, small_prompt(seed=6), "stopper"))
    assert [m["type"] for m in after if m["type"].startswith("execution_")][-1] == "execution_success"


def test_queue_lists_deletes_and_clears_pending_prompts(srv: BackgroundServer) -> None:
    long_id = run(request(f"{srv.url}/prompt", "POST", json={"prompt": small_prompt(seed=7, steps=400)}))[1]["prompt_id"]
    ids = [run(request(f"{srv.url}/prompt", "POST", json={"prompt": small_prompt(seed=s)}))[1]["prompt_id"]
           for s in (8, 9, 10)]
    front = run(request(f"{srv.url}/prompt", "POST", json={"prompt": small_prompt(seed=11), "front": True}))[1]
    assert front["number"] < 0
    deadline = time.time() + 60
    while run(request(f"{srv.url}/queue"))[1]["queue_running"] == [] and time.time() < deadline:
        time.sleep(0.05)
    _, queue = run(request(f"{srv.url}/api/queue"))
    assert [item[1] for item in queue["queue_running"]] == [long_id]
    assert [item[1] for item in queue["queue_pending"]] == [front["prompt_id"], *ids]  # front of the line first
    assert all(len(item) == 5 for item in queue["queue_pending"])
    assert run(request(f"{srv.url}/prompt"))[1] == {"exec_info": {"queue_remaining": 5}}
    run(request(f"{srv.url}/queue", "POST", json={"delete": [ids[0]]}))
    assert [i[1] for i in run(request(f"{srv.url}/queue"))[1]["queue_pending"]] == [front["prompt_id"], *ids[1:]]
    run(request(f"{srv.url}/queue", "POST", json={"clear": True}))
    assert run(request(f"{srv.url}/queue"))[1]["queue_pending"] == []
    run(request(f"{srv.url}/interrupt", "POST"))
    wait_history(srv.url, long_id)
    run(request(f"{srv.url}/history", "POST", json={"delete": [long_id]}))
    assert run(request(f"{srv.url}/history/{long_id}"))[1] == {}
    assert all(pid not in run(request(f"{srv.url}/history"))[1] for pid in ids)  # deleted ones never ran
    run(request(f"{srv.url}/history", "POST", json={"clear": True}))
    assert run(request(f"{srv.url}/history"))[1] == {}


def test_jobs_api_lists_finished_and_pending_prompts(srv: BackgroundServer) -> None:
    answer, _ = run(queue_and_listen(srv.url, small_prompt(seed=31, prefix="jobs"), "jobs"))
    _, listing = run(request(f"{srv.url}/api/jobs", params={"status": "completed", "limit": "50"}))
    job = next(j for j in listing["jobs"] if j["id"] == answer["prompt_id"])
    assert job["status"] == "completed" and job["outputs_count"] == 1 and job["previewable_outputs_count"] == 1
    assert list(job) == ["id", "status", "priority", "create_time", "execution_start_time", "execution_end_time",
                         "outputs_count", "previewable_outputs_count", "preview_output"]  # ComfyUI 0.33's order
    assert job["preview_output"]["filename"].startswith("jobs") and job["preview_output"]["nodeId"] == "10"
    assert job["execution_end_time"] >= job["execution_start_time"] >= job["create_time"]
    assert listing["pagination"]["limit"] == 50 and listing["pagination"]["total"] >= 1
    _, one = run(request(f"{srv.url}/api/jobs/{answer['prompt_id']}"))
    assert one["outputs"]["10"]["images"][0]["filename"] == job["preview_output"]["filename"]
    assert one["workflow"]["prompt"] == small_prompt(seed=31, prefix="jobs")
    assert run(request(f"{srv.url}/api/jobs/no-such-job"))[0] == 404
    assert run(request(f"{srv.url}/api/jobs", params={"status": "sleeping"}))[0] == 400
    assert run(request(f"{srv.url}/api/jobs", params={"limit": "0"}))[0] == 400


# --- ComfyUI 0.33: client prompt ids, job cancels ----------------------------------------------------------------

INVALID_PROMPT_ID = {  # real ComfyUI 0.33's answer, byte for byte the same JSON
    "error": {"type": "invalid_prompt_id", "message": "prompt_id must be a valid UUID",
              "details": "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let the "
                         "server generate one", "extra_info": {}},
    "node_errors": {}}


@pytest.mark.parametrize("prompt_id", ["ABC", "0E984725-C51C-4BF4-9960-E1C80E27ABA0",
                                       "0e984725c51c4bf49960e1c80e27aba0", "{0e984725-c51c-4bf4-9960-e1c80e27aba0}",
                                       "", 123, ["x"]])
def test_a_client_prompt_id_must_be_a_canonical_uuid(srv: BackgroundServer, prompt_id: Any) -> None:
    status, body = run(request(f"{srv.url}/prompt", "POST", json={"prompt": small_prompt(), "prompt_id": prompt_id}))
    assert (status, body) == (400, INVALID_PROMPT_ID)


def test_a_canonical_client_prompt_id_is_kept_and_null_gets_a_new_one(srv: BackgroundServer) -> None:
    mine = str(uuid.uuid4())
    answer, messages = run(queue_and_listen(srv.url, small_prompt(seed=51), "ids", prompt_id=mine))
    assert answer["prompt_id"] == mine and all(m["data"]["prompt_id"] == mine for m in messages
                                               if m["type"] in ("execution_start", "executed", "execution_success"))
    status, made = run(request(f"{srv.url}/prompt", "POST", json={"prompt": small_prompt(seed=52), "prompt_id": None},
                               headers={"Comfy-Usage-Source": "my-app"}))
    assert status == 200 and str(uuid.UUID(made["prompt_id"])) == made["prompt_id"]
    extra = wait_history(srv.url, made["prompt_id"])["prompt"][3]
    assert extra["comfy_usage_source"] == "my-app"  # 0.33 hands the header on in extra_data


def _wait_running(url: str, prompt_id: str) -> None:
    deadline = time.time() + 60
    while [i[1] for i in run(request(f"{url}/queue"))[1]["queue_running"]] != [prompt_id]:
        assert time.time() < deadline, f"{prompt_id} never ran"
        time.sleep(0.05)


def test_cancelling_jobs_dequeues_pending_interrupts_running_and_ignores_the_rest(srv: BackgroundServer) -> None:
    post = lambda body: run(request(f"{srv.url}/prompt", "POST", json=body))[1]["prompt_id"]  # noqa: E731
    long_id = post({"prompt": small_prompt(seed=61, steps=400)})
    pending = [post({"prompt": small_prompt(seed=s)}) for s in (62, 63)]
    _wait_running(srv.url, long_id)

    cancel = lambda job: run(request(f"{srv.url}/api/jobs/{job}/cancel", "POST"))  # noqa: E731
    assert cancel(pending[0]) == (200, {"cancelled": True})
    assert cancel(pending[0]) == (200, {"cancelled": False})  # gone: a no-op, not an error
    assert [i[1] for i in run(request(f"{srv.url}/queue"))[1]["queue_pending"]] == [pending[1]]
    assert run(request(f"{srv.url}/api/jobs/{pending[0]}"))[0] == 404  # a dequeued job never ran
    assert cancel(long_id) == (200, {"cancelled": True})
    record = wait_history(srv.url, long_id)
    assert record["status"]["status_str"] == "error" and record["outputs"] == {}
    assert [m[0] for m in record["status"]["messages"]][-1] == "execution_interrupted"
    assert wait_history(srv.url, pending[1])["status"]["status_str"] == "success"  # the next one still runs
    _, job = run(request(f"{srv.url}/api/jobs/{long_id}"))
    assert job["status"] == "cancelled" and job["previewable_outputs_count"] == 0
    assert cancel(long_id) == (200, {"cancelled": False})  # finished
    assert cancel(str(uuid.uuid4())) == (200, {"cancelled": False})  # unknown
    assert cancel("not-a-uuid") == (200, {"cancelled": False})  # ComfyUI checks ids in the batch route only


def test_cancelling_a_batch_of_jobs(srv: BackgroundServer) -> None:
    post = lambda body: run(request(f"{srv.url}/prompt", "POST", json=body))[1]["prompt_id"]  # noqa: E731
    long_id, queued = post({"prompt": small_prompt(seed=71, steps=400)}), post({"prompt": small_prompt(seed=72)})
    _wait_running(srv.url, long_id)
    batch = lambda **kw: run(request(f"{srv.url}/api/jobs/cancel", "POST", **kw))  # noqa: E731
    for data, error in ((b"", "Request body must be valid JSON"), (b"{nope", "Request body must be valid JSON"),
                        (b"[]", "job_ids must be a list"), (b"{}", "job_ids must be a list"),
                        (b'{"job_ids": "a"}', "job_ids must be a list")):
        assert batch(data=data) == (400, {"error": error}), data
    bad = ["abc", 3, {"a": 1}, "0E984725-C51C-4BF4-9960-E1C80E27ABA0", str(uuid.uuid4())]
    assert batch(json={"job_ids": bad}) == (400, {"error": "job_ids contains invalid id(s)",
                                                 "invalid_ids": ["abc", "3", "{'a': 1}", bad[3]]})
    assert run(request(f"{srv.url}/prompt"))[1] == {"exec_info": {"queue_remaining": 2}}  # nothing was cancelled
    assert batch(json={"job_ids": []}) == (200, {"cancelled": False})
    assert batch(json={"job_ids": [str(uuid.uuid4()), queued, long_id]}) == (200, {"cancelled": True})
    assert wait_history(srv.url, long_id)["status"]["status_str"] == "error"
    assert run(request(f"{srv.url}/queue"))[1]["queue_pending"] == []
    assert batch(json={"job_ids": [long_id]}) == (200, {"cancelled": False})


# --- ComfyUI's error answers -----------------------------------------------------------------------------------


def _cyclic(prompt: dict[str, Any]) -> dict[str, Any]:
    """The sampler's latent from a VAEEncode of its own decoded image: 9 -> 8 -> 21 -> 9."""
    prompt["21"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["9", 0], "vae": ["3", 0]}}
    prompt["8"]["inputs"]["latent_image"] = ["21", 0]
    return prompt


def test_a_cycle_of_links_is_comfyuis_dependency_cycle_on_each_node_of_it(srv: BackgroundServer) -> None:
    status, body = run(request(f"{srv.url}/prompt", "POST", json={"prompt": _cyclic(small_prompt())}))
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"
    path = "9 (VAEDecode) -> 8 (KSampler) -> 21 (VAEEncode) -> 9 (VAEDecode)"
    assert body["node_errors"] == {  # real ComfyUI 0.33's node_errors for this prompt
        node: {"errors": [{"type": "dependency_cycle", "message": "Dependency cycle detected", "details": path,
                           "extra_info": {"node_id": node, "cycle_nodes": ["9", "8", "21"]}}],
               "dependent_outputs": ["10"], "class_type": kind}
        for node, kind in (("9", "VAEDecode"), ("8", "KSampler"), ("21", "VAEEncode"))}
    assert list(body["node_errors"]) == ["9", "8", "21"]
    prompt = small_prompt()
    prompt["4"]["inputs"]["model"] = ["4", 0]  # a node fed by itself
    _, body = run(request(f"{srv.url}/prompt", "POST", json={"prompt": prompt}))
    (error,) = body["node_errors"]["4"]["errors"]
    assert list(body["node_errors"]) == ["4"]
    assert error["details"] == "4 (ModelSamplingAuraFlow) -> 4 (ModelSamplingAuraFlow)"
    assert error["extra_info"] == {"node_id": "4", "cycle_nodes": ["4"]}


def test_a_long_chain_of_nodes_is_walked_without_overflowing_the_stack() -> None:
    from graphrun.engine.serve.prompts import find_cycles

    chain = {str(i): {"class_type": "X", "inputs": {"a": [str(i + 1), 0]}} for i in range(5000)}
    chain["5000"] = {"class_type": "X", "inputs": {"a": ["2500", 0]}}
    (cycle,) = {tuple(e[0]["extra_info"]["cycle_nodes"]) for e in find_cycles(chain, ["0"]).values()}
    assert cycle == tuple(str(i) for i in range(2500, 5001))
    assert find_cycles({"1": {"class_type": "X", "inputs": {}}}, ["1"]) == {}



def test_unknown_node_type_gets_comfyuis_missing_node_type_answer(srv: BackgroundServer) -> None:
    prompt = small_prompt()
    prompt["12"] = {"class_type": "FancyUpscaler", "inputs": {"image": ["9", 0]}, "_meta": {"title": "My upscaler"}}
    status, body = run(request(f"{srv.url}/prompt", "POST", json={"prompt": prompt}))
    assert status == 400
    assert body["node_errors"] == {}
    error = body["error"]
    assert error["type"] == "missing_node_type"
    assert error["message"] == "Node 'My upscaler' not found. The custom node may not be installed."
    assert error["details"].startswith("Node ID '#12'")
    assert error["extra_info"] == {"node_id": "12", "class_type": "FancyUpscaler", "node_title": "My upscaler"}


@pytest.mark.parametrize(
    "change, node, kind, input_name",
    [
        (lambda p: p["8"]["inputs"].update(steps=0), "8", "value_smaller_than_min", "steps"),
        (lambda p: p["8"]["inputs"].update(cfg=1000.0), "8", "value_bigger_than_max", "cfg"),
        (lambda p: p["8"]["inputs"].update(sampler_name="euler_fancy"), "8", "value_not_in_list", "sampler_name"),
        (lambda p: p["8"]["inputs"].pop("positive"), "8", "required_input_missing", "positive"),
        (lambda p: p["1"]["inputs"].update(unet_name="nope.safetensors"), "1", "custom_validation_failed", "unet_name"),
        (lambda p: p["9"]["inputs"].update(vae=["2", 0]), "9", "return_type_mismatch", "vae"),
    ],
)
def test_bad_inputs_get_node_errors_naming_the_comfyui_node_and_input(srv, change, node, kind, input_name) -> None:
    prompt = small_prompt()
    change(prompt)
    status, body = run(request(f"{srv.url}/prompt", "POST", json={"prompt": prompt}))
    assert status == 400, body
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["error"]["message"] == "Prompt outputs failed validation"
    assert set(body["node_errors"]) == {node}
    entry = body["node_errors"][node]
    assert entry["class_type"] == prompt[node]["class_type"] and entry["dependent_outputs"] == ["10"]
    (error,) = entry["errors"]
    assert error["type"] == kind and error["extra_info"]["input_name"] == input_name
    assert error["message"] and input_name in error["details"] or kind == "return_type_mismatch"
    assert run(request(f"{srv.url}/queue"))[1]["queue_pending"] == []  # nothing was queued


@pytest.mark.parametrize(
    "body, kind",
    [
        ({}, "no_prompt"),
        ({"prompt": []}, "invalid_prompt"),
        ({"prompt": "text"}, "invalid_prompt"),
        ({"prompt": {"1": {"inputs": {}}}}, "missing_node_type"),
        ({"prompt": {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}}}}, "prompt_no_outputs"),
        ({"prompt": {"1": {"class_type": 5}}}, "missing_node_type"),
        ([1, 2], "invalid_prompt"),
        ({"prompt": {"1": "x"}}, "missing_node_type"),
        ({"prompt": small_prompt(), "number": "soon"}, "invalid_prompt"),
        ({"prompt": small_prompt(), "partial_execution_targets": "10"}, "invalid_prompt"),
    ],
)
def test_malformed_prompts_are_400s_in_comfyuis_shape(srv: BackgroundServer, body: Any, kind: str) -> None:
    status, answer = run(request(f"{srv.url}/prompt", "POST", json=body))
    assert status == 400 and answer["error"]["type"] == kind and answer["node_errors"] == {}
    assert set(answer["error"]) == {"type", "message", "details", "extra_info"}


def test_garbage_requests_never_crash_the_server(srv: BackgroundServer) -> None:
    for path, data in (("/prompt", b"{nope"), ("/prompt", b"\xff\xfe"), ("/queue", b"[1]"), ("/history", b"7"),
                       ("/upload/image", b"plain"), ("/prompt", b"[" * 5000 + b"]" * 5000)):
        status, _ = run(request(f"{srv.url}{path}", "POST", data=data))
        assert 400 <= status < 500, (path, status)
    assert run(request(f"{srv.url}/history", params={"max_items": "x"}))[0] == 400
    assert run(request(f"{srv.url}/queue"))[0] == 200  # still serving


# --- files: uploads and /view stay inside the server's folders -------------------------------------------------


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(url: str, name: str, data: bytes, **fields: str) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("image", data, filename=name, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return run(request(f"{url}/upload/image", "POST", data=form))


def test_uploads_are_named_like_comfyui_and_used_by_loadimage(srv: BackgroundServer) -> None:
    status, answer = upload(srv.url, "photo.png", _png((200, 10, 10)))
    assert status == 200 and answer == {"name": "photo.png", "subfolder": "", "type": "input"}
    assert upload(srv.url, "photo.png", _png((200, 10, 10)))[1]["name"] == "photo.png"  # same bytes: same file
    assert upload(srv.url, "photo.png", _png((0, 0, 200)))[1]["name"] == "photo (1).png"
    assert upload(srv.url, "photo.png", _png((0, 200, 0)), overwrite="true")[1]["name"] == "photo.png"
    assert upload(srv.url, "p.png", _png((1, 2, 3)), subfolder="sets/a")[1] == {"name": "p.png", "subfolder": "sets/a",
                                                                                 "type": "input"}
    inputs = srv.config.input_dir
    assert sorted(p.relative_to(inputs).as_posix() for p in inputs.rglob("*.png")) == [
        "photo (1).png", "photo.png", "sets/a/p.png"]
    assert not [p for p in inputs.rglob("*") if p.name.startswith(".graphrun-upload")]  # no temp files left
    _, models = run(request(f"{srv.url}/models/diffusion_models"))
    assert "z_image_turbo_bf16.safetensors" in models  # the tiny model's files
    assert run(request(f"{srv.url}/models/no_such_folder"))[0] == 404
    _, folders = run(request(f"{srv.url}/api/experiment/models"))
    assert {f["name"] for f in folders} >= {"diffusion_models", "text_encoders", "vae", "loras"}
    by_name = {f["name"]: f for f in folders}
    assert by_name["diffusion_models"]["extensions"] == [".safetensors", ".sft"]  # what graphrun loads there
    assert ".pth" in by_name["upscale_models"]["extensions"]
    _, listed = run(request(f"{srv.url}/api/experiment/models/diffusion_models"))
    assert [m["name"] for m in listed] == models and all(m["size"] > 0 for m in listed)
    assert run(request(f"{srv.url}/api/experiment/models/nowhere"))[0] == 404

    prompt = small_prompt()  # img2img from the uploaded picture
    prompt["20"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    prompt["21"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["3", 0]}}
    prompt["8"]["inputs"].update(latent_image=["21", 0], denoise=0.5)
    answer, events = run(queue_and_listen(srv.url, prompt, "img2img"))
    assert "20" in [m["data"]["node"] for m in events if m["type"] == "executing"]
    assert wait_history(srv.url, answer["prompt_id"])["status"]["status_str"] == "success"


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "sub/../../x.png", "..\\x.png", "~/x.png"])
def test_loadimage_names_outside_the_input_folder_are_refused(srv: BackgroundServer, name: str) -> None:
    prompt = small_prompt()
    prompt["20"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    prompt["21"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["3", 0]}}
    prompt["8"]["inputs"]["latent_image"] = ["21", 0]
    status, body = run(request(f"{srv.url}/prompt", "POST", json={"prompt": prompt}))
    assert status == 400 and body["node_errors"]["20"]["errors"][0]["type"] == "custom_validation_failed"
    assert body["node_errors"]["20"]["errors"][0]["extra_info"]["input_name"] == "image"


def test_view_and_upload_refuse_traversal_absolute_paths_and_symlinks(srv: BackgroundServer, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png((9, 9, 9)))
    (srv.config.out_dir / "link.png").symlink_to(secret)
    (srv.config.out_dir / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    for params, expected in (
        ({"filename": "../secret.png"}, 400),
        ({"filename": str(secret)}, 400),
        ({"filename": "secret.png", "subfolder": "../.."}, 400),
        ({"filename": "secret.png", "subfolder": str(tmp_path)}, 400),
        ({"filename": "link.png"}, 403),
        ({"filename": "secret.png", "subfolder": "linkdir"}, 403),
        ({"filename": "x.png", "type": "models"}, 400),
        ({"filename": "missing.png"}, 404),
    ):
        status, _ = run(request(f"{srv.url}/view", params=params))
        assert status == expected, params
    assert upload(srv.url, "a.png", _png((1, 1, 1)), subfolder="../../escape")[0] == 400
    assert upload(srv.url, "a.png", _png((1, 1, 1)), subfolder="/tmp")[0] == 400
    assert upload(srv.url, "a.png", _png((1, 1, 1)), type="elsewhere")[0] == 400
    (srv.config.input_dir / "evil").symlink_to(tmp_path, target_is_directory=True)
    assert upload(srv.url, "a.png", _png((1, 1, 1)), subfolder="evil")[0] == 403
    assert not (tmp_path / "a.png").exists()


# --- other routes ----------------------------------------------------------------------------------------------


#: The keys of ComfyUI 0.33's /system_stats "system", in its order (graphrun adds graphrun_version and platform).
SYSTEM_KEYS_033 = ["os", "ram_total", "ram_free", "comfyui_version", "required_frontend_version",
                   "installed_templates_version", "required_templates_version", "comfy_package_versions",
                   "python_version", "pytorch_version", "embedded_python", "deploy_environment", "argv"]
SYSTEM_KEYS_018 = [k for k in SYSTEM_KEYS_033 if k not in ("comfy_package_versions", "deploy_environment")]
DEVICE_KEYS = ["name", "type", "index", "vram_total", "vram_free", "torch_vram_total", "torch_vram_free"]


def test_system_stats_features_and_embeddings(srv: BackgroundServer) -> None:
    _, stats = run(request(f"{srv.url}/system_stats"))
    system = stats["system"]
    assert system["comfyui_version"] == "0.33.0" and system["ram_total"] > 0
    assert [k for k in system if k not in ("graphrun_version", "platform")] == SYSTEM_KEYS_033
    assert system["deploy_environment"] == "graphrun"
    (package,) = system["comfy_package_versions"]  # the editor's: graphrun needs no other comfy* package
    assert package["name"] == "comfyui-frontend-package" and set(package) == {"name", "installed", "required"}
    assert stats["devices"] and all(list(d) == DEVICE_KEYS for d in stats["devices"])
    _, features = run(request(f"{srv.url}/api/features"))
    assert features == {"supports_preview_metadata": False, "supports_model_type_tags": False,
                        "max_upload_size": srv.config.max_body_bytes, "extension": {"manager": {"supports_v4": False}},
                        "node_replacements": False, "assets": False}
    assert list(features)[:2] == ["supports_preview_metadata", "supports_model_type_tags"]  # 0.33's order
    assert run(request(f"{srv.url}/embeddings"))[1] == []
    status, info = run(request(f"{srv.url}/object_info/KSampler"))
    assert status == 200 and info["KSampler"]["output"] == ["LATENT"]
    assert run(request(f"{srv.url}/object_info/NoSuchNode"))[1] == {}


def test_view_never_serves_pages_or_scripts_but_shows_svg_in_an_img(srv: BackgroundServer) -> None:
    (srv.config.out_dir / "page.html").write_text("<script>alert(1)</script>")
    (srv.config.out_dir / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')

    async def headers(name: str, **extra: str) -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{srv.url}/view", params={"filename": name}, headers=extra) as response:
                return response.headers

    page = run(headers("page.html"))
    assert page["Content-Type"] == "application/octet-stream" and page["X-Content-Type-Options"] == "nosniff"
    assert page["Content-Disposition"] == 'attachment; filename="page.html"' and page["Cache-Control"] == "no-store"
    as_page, as_image = run(headers("logo.svg")), run(headers("logo.svg", **{"Sec-Fetch-Dest": "image"}))
    assert as_page["Content-Type"] == "application/octet-stream"
    assert as_page["Content-Disposition"].startswith("attachment")
    assert as_image["Content-Type"].startswith("image/svg+xml")
    assert as_image["Content-Disposition"] == 'filename="logo.svg"'
    assert as_image["Vary"] == "Sec-Fetch-Dest"


def test_comfy_0_18_1_keeps_v0_18_1s_shapes(tmp_path: Path) -> None:
    """--comfy 0.18.1: any prompt_id string, graphrun's own cycle error, v0.18.1's /system_stats, /features,
    /experiment/models and jobs (the cancel routes, which the shipped editor calls, are served all the same)."""
    from graphrun.engine.serve.job_list import finished_job

    with BackgroundServer(config(tmp_path, comfy="0.18.1")) as server:
        status, body = run(request(f"{server.url}/prompt", "POST",
                                   json={"prompt": _cyclic(small_prompt()), "prompt_id": "my-own-id"}))
        assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"  # the id passed
        (error,) = body["node_errors"]["8"]["errors"]
        assert error["type"] == "dependency_cycle" and "cycle_nodes" not in error["extra_info"]
        _, stats = run(request(f"{server.url}/system_stats"))
        assert stats["system"]["comfyui_version"] == "0.18.1" and len(stats["devices"]) == 1
        assert [k for k in stats["system"] if k not in ("graphrun_version", "platform")] == SYSTEM_KEYS_018
        _, features = run(request(f"{server.url}/features"))
        assert "supports_model_type_tags" not in features
        _, folders = run(request(f"{server.url}/experiment/models"))
        assert folders and all(set(f) == {"name", "folders"} for f in folders)
        assert run(request(f"{server.url}/api/jobs/{uuid.uuid4()}/cancel", "POST")) == (200, {"cancelled": False})
    record = {"prompt": [0, "p", {}, {}, []], "outputs": {"9": {"images": [{"filename": "a.png", "type": "output"}]}},
              "status": {"status_str": "success", "messages": []}}
    assert "previewable_outputs_count" not in finished_job("p", record)
    assert finished_job("p", record, previewable=True)["previewable_outputs_count"] == 1


def test_cross_site_requests_are_refused(srv: BackgroundServer) -> None:
    host = srv.url.removeprefix("http://")
    status, _ = run(request(f"{srv.url}/prompt", "POST", json={"prompt": small_prompt()},
                            headers={"Origin": "https://evil.example"}))
    assert status == 403
    assert run(request(f"{srv.url}/queue", headers={"Origin": f"http://{host}"}))[0] == 200


# --- limits and the token --------------------------------------------------------------------------------------


def test_token_is_required_on_every_route_and_the_websocket(tmp_path: Path) -> None:
    with BackgroundServer(config(tmp_path, token="s3cret")) as server:
        assert run(request(f"{server.url}/queue"))[0] == 401
        assert run(request(f"{server.url}/api/object_info/KSampler"))[0] == 401
        assert run(request(f"{server.url}/queue", headers={"Authorization": "Bearer wrong"}))[0] == 401
        assert run(request(f"{server.url}/queue", headers={"Authorization": "Bearer s3cret"}))[0] == 200
        assert run(request(f"{server.url}/queue", params={"token": "s3cret"}))[0] == 200

        async def ws(url: str) -> int:
            async with aiohttp.ClientSession() as session:
                try:
                    async with session.ws_connect(url) as socket:
                        return 101 if json.loads((await socket.receive()).data)["type"] == "status" else 0
                except aiohttp.WSServerHandshakeError as exc:
                    return exc.status

        assert run(ws(f"{server.url}/ws?clientId=x")) == 401
        assert run(ws(f"{server.url}/ws?clientId=x&token=s3cret")) == 101


def test_body_size_and_queue_length_are_bounded(tmp_path: Path) -> None:
    with BackgroundServer(config(tmp_path, max_body_bytes=64 * 1024, max_queue=1)) as server:
        assert upload(server.url, "big.png", os.urandom(200 * 1024))[0] == 413
        assert not list(server.config.input_dir.rglob("big*"))
        first = run(request(f"{server.url}/prompt", "POST", json={"prompt": small_prompt(steps=400)}))
        deadline = time.time() + 60
        while not run(request(f"{server.url}/queue"))[1]["queue_running"] and time.time() < deadline:
            time.sleep(0.05)
        assert run(request(f"{server.url}/prompt", "POST", json={"prompt": small_prompt(seed=2)}))[0] == 200
        status, body = run(request(f"{server.url}/prompt", "POST", json={"prompt": small_prompt(seed=3)}))
        assert status == 503 and body["error"]["type"] == "queue_full"
        run(request(f"{server.url}/queue", "POST", json={"clear": True}))
        run(request(f"{server.url}/interrupt", "POST"))
        wait_history(server.url, first[1]["prompt_id"])


# --- the command -----------------------------------------------------------------------------------------------


def test_graphrun_serve_starts_says_where_and_answers(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "graphrun.engine.cli", "serve", "--port", "0", "--models-dir", "tiny",
               "--out", str(tmp_path / "out"), "--input-dir", str(tmp_path / "in"), "--user-dir", str(tmp_path / "u")]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = process.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        status, queue = run(request(f"http://127.0.0.1:{match[1]}/queue"))
        assert status == 200 and queue == {"queue_running": [], "queue_pending": []}
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # nothing written elsewhere


@pytest.mark.parametrize(
    "args, message",
    [
        (["--host", "0.0.0.0"], "say so with --listen 0.0.0.0"),
        (["--host", "127.0.0.1", "--listen"], "not both"),
        (["--port", "70000"], "--port 70000"),
        (["--models-dir", "/no/such/models"], "/no/such/models"),
        (["--max-queue", "0"], "--max-queue 0"),
        (["--front-end-root", "."], "holds no index.html"),
    ],
)
def test_graphrun_serve_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "graphrun.engine.cli", "serve", *args], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr
