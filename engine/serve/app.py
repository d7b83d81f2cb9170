"""``graphrun serve``: ComfyUI's HTTP and WebSocket API on graphrun's engine.

A client written for ComfyUI (``POST /prompt``, progress on ``/ws``, results from ``/history`` and
``/view``) talks to this server unchanged; every route answers both bare and under ``/api/``, in the
request and response shapes of the ComfyUI the server follows (``--comfy``; ``server.py``, ``execution.py`` and
``comfy_execution/jobs.py`` there define them; this is graphrun's own code). ComfyUI 0.33, the default, differs
from v0.18.1 in: a client's ``prompt_id`` must be a canonical UUID (else 400 ``invalid_prompt_id``), a
``Comfy-Usage-Source`` header lands in ``extra_data``, ``/system_stats`` lists every device and adds
``comfy_package_versions`` and ``deploy_environment``, ``/features`` adds ``supports_model_type_tags``, jobs carry
``previewable_outputs_count``, ``/experiment/models`` lists each folder's ``extensions`` and a cycle of links is a
``dependency_cycle`` error on each node in it; under ``--comfy 0.18.1`` the server keeps v0.18.1's shapes there.
``POST /api/jobs/{id}/cancel`` and ``POST /api/jobs/cancel`` (0.33's, which the shipped editor calls) are served
under every setting: a route v0.18.1 lacked breaks no v0.18.1 client. aiohttp, as ComfyUI uses: its WebSocket
support, multipart uploads and body-size limit are what the API needs, in one well-kept package.

Safety: the server binds to 127.0.0.1 unless told otherwise; with ``token`` set, every route and the
WebSocket want ``Authorization: Bearer TOKEN`` (or ``?token=TOKEN``, which also sets a cookie, for
browsers); a request whose ``Origin`` is another site is refused (a web page must not queue prompts on a
local server); request bodies are limited; files are read and written only inside the server's folders
(:mod:`.files`); the queue is bounded; a malformed request is a 400, never a crash.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import mimetypes
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from ..comfy.versions import comfy_at_least, resolve_comfy_version
from ..context import RunOptions
from ..executor import Runner
from ..node import CheckEnv, Registry, make_registry
from .config import ServerConfig
from .events import EventHub
from .files import UnsafePath, list_files, safe_path, split_annotation
from .jobs import Job, PromptQueue, QueueFull
from .prompts import Folders, PromptRejected, prepare
from .worker import Worker

log = logging.getLogger("graphrun.serve")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_SENSITIVE_EXTRA_DATA = ("auth_token_comfy_org", "api_key_comfy_org")  # never stored in queue or history
_TOKEN_COOKIE = "graphrun_token"
#: What a browser may run or render as a page (ComfyUI 0.33's list; any ``+xml``/``/xml`` type too): /view sends
#: these as an attachment of plain bytes, so a file in the folders cannot script the editor.
_ACTIVE_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript",
                 "application/javascript", "application/x-javascript", "application/ecmascript", "text/css",
                 "image/svg+xml", "application/xml", "text/xml", "message/rfc822"}
#: ComfyUI's own version string per setting (its comfyui_version.py at that commit), for /system_stats.
_COMFYUI_VERSION = {"0.33": "0.33.0", "0.18.1": "0.18.1", "2025.10": "0.3.64"}

SERVER_KEY: "web.AppKey[Server]" = web.AppKey("graphrun", object)  # type: ignore[arg-type]
PUBLISHER_KEY: "web.AppKey[asyncio.Task]" = web.AppKey("graphrun_publisher", asyncio.Task)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(status: int, kind: str, message: str, details: str = "") -> web.Response:
    body = {"error": {"type": kind, "message": message, "details": details, "extra_info": {}}, "node_errors": {}}
    return web.json_response(body, status=status)


class Server:
    """The server's state: queue, history, WebSocket clients, the worker and its runner."""

    def __init__(self, config: ServerConfig, registry: Registry | None = None) -> None:
        self.config = config
        self.comfy_version = resolve_comfy_version(config.comfy or None)
        self.v033 = comfy_at_least(self.comfy_version, "0.33")  # ComfyUI 0.33's shapes where they changed
        self.registry = registry or make_registry(list(config.plugins))
        self.hub = EventHub()
        self.queue = PromptQueue(config.max_queue, config.max_history, on_change=self._queue_changed)
        extra = {"models_dirs": list(config.models_dirs), "extra_model_paths": config.extra_model_paths,
                 "input_dirs": [str(config.input_dir)]}
        self.options = RunOptions(device=config.device, dtype=config.dtype, comfy=config.comfy,
                                  output_dir=config.out_dir, extra=extra)
        self.runner = Runner(self.options)
        self.worker = Worker(self.queue, self.hub, self.runner, config.out_dir, config.temp_dir)
        self.folders = Folders(config.input_dir, config.out_dir, config.temp_dir)
        self.number = 0
        self._number_lock = threading.Lock()

    # --- helpers

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}

    def _queue_changed(self) -> None:
        self.hub.publish("status", {"status": self.queue_info()})

    def cancel(self, prompt_id: str) -> bool:
        """ComfyUI 0.33's cancel of one job: a running one is interrupted, a pending one leaves the queue;
        finished and unknown ids are no-ops (False). True when a cancel was carried out."""
        running, pending = self.queue.snapshot()
        if any(item[1] == prompt_id for item in running):
            return self.worker.interrupt(prompt_id)
        if any(item[1] == prompt_id for item in pending):
            # it may have started meanwhile: then the running job is interrupted instead
            return self.queue.delete(prompt_id) or self.worker.interrupt(prompt_id)
        return False

    def check_env(self) -> CheckEnv:
        return CheckEnv(graph_dir=None, options={**self.options.extra, "output_dir": str(self.config.out_dir)},
                        comfy_version=self.config.comfy or "")

    def folder_files(self, folder: str) -> list[str] | None:
        """File names of a ComfyUI folder (``/models/{folder}``, object_info combos); None if unknown."""
        if folder == "input":
            return list_files(self.config.input_dir, IMAGE_SUFFIXES)
        from graphrun.nodes.model_files import LEGACY_FOLDERS, list_model_files, model_folder_names

        if folder not in model_folder_names() and folder not in LEGACY_FOLDERS:
            return None
        return list_model_files(folder, self.config.models_dirs, self.config.extra_model_paths)


# --- middlewares -----------------------------------------------------------------------------------------------------


def _token_middleware(token: str) -> Any:
    expected = token.encode()

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = ""
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        given = given or request.query.get("token", "") or request.cookies.get(_TOKEN_COOKIE, "")
        if not hmac.compare_digest(given.encode(), expected):
            return web.json_response({"error": {"type": "unauthorized", "message": "missing or wrong token",
                                                "details": "send 'Authorization: Bearer TOKEN' (or ?token=TOKEN)",
                                                "extra_info": {}}}, status=401)
        response = await handler(request)
        if request.query.get("token") and request.cookies.get(_TOKEN_COOKIE) != token:
            response.set_cookie(_TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response

    return check_token


@web.middleware
async def _same_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse requests a browser sends from another site (ComfyUI's origin check): a page on the web must
    not queue prompts or read images on this server."""
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        parts = urlsplit(origin)
        host = request.headers.get("Host", "")
        if parts.netloc.lower() != host.lower():
            return web.json_response({"error": {"type": "forbidden", "message": f"origin {origin} is not {host}",
                                                "details": "", "extra_info": {}}}, status=403)
    return await handler(request)


@web.middleware
async def _never_crash(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bad request bodies are 400s and bugs are 500s with a JSON body; the server keeps running."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except json.JSONDecodeError as exc:
        return _json_error(400, "invalid_json", "Request body is not valid JSON", str(exc))
    except BadBody as exc:
        return _json_error(400, "invalid_json", "Request body is not valid JSON", str(exc))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:  # noqa: BLE001
        log.exception("%s %s failed", request.method, request.path)
        return _json_error(500, "internal_error", f"internal error: {type(exc).__name__}: {exc}")


# --- routes ----------------------------------------------------------------------------------------------------------


class BadBody(Exception):
    """A request body that is not the JSON a route takes (HTTP 400)."""


async def _json_body(request: web.Request, empty: Any = {}) -> Any:  # noqa: B006 - never mutated
    """The JSON body within graphrun's document limits (depth, numbers); ``empty`` when there is none."""
    from ..limits import LimitError, parse_json

    raw = await request.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadBody(f"the body is not UTF-8 text: {exc}") from None
    if not text.strip():
        return empty
    try:
        return parse_json(text)[0]
    except LimitError as exc:
        raise BadBody(str(exc)) from None


def _routes(server: Server) -> web.RouteTableDef:
    routes = web.RouteTableDef()
    config = server.config

    @routes.get("/ws")
    async def websocket(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=1024 * 1024)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        server.hub.add(sid, ws)
        try:
            await server.hub.send("status", {"status": server.queue_info(), "sid": sid}, sid)
            running = server.worker.current
            if running is not None and running.extra_data.get("client_id") == sid and server.worker.current_node:
                await server.hub.send("executing", {"node": server.worker.current_node,
                                                    "display_node": server.worker.current_node,
                                                    "prompt_id": running.prompt_id}, sid)
            first = True
            async for msg in ws:
                if msg.type.name != "TEXT":
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    flags = data.get("data")
                    server.hub.features[sid] = flags if isinstance(flags, dict) else {}
                    await server.hub.send("feature_flags", _features(server), sid)
                first = False
        finally:
            server.hub.remove(sid, ws)
        return ws

    @routes.get("/embeddings")
    async def embeddings(request: web.Request) -> web.Response:
        names = server.folder_files("embeddings") or []
        return web.json_response([os.path.splitext(n)[0] for n in names])

    @routes.get("/models")
    async def model_types(request: web.Request) -> web.Response:
        from graphrun.nodes.model_files import model_folder_names

        return web.json_response(model_folder_names())

    @routes.get("/models/{folder}")
    async def models(request: web.Request) -> web.Response:
        files = server.folder_files(request.match_info["folder"])
        if files is None:
            return web.Response(status=404)
        return web.json_response(files)

    @routes.get("/experiment/models")
    async def model_folders(request: web.Request) -> web.Response:
        """The editor's Models panel: each model folder and where on this machine it is read from (0.33: and
        the file suffixes graphrun lists there)."""
        from graphrun.nodes.model_files import LISTED_SUFFIXES, model_folder_names, search_folders

        listed = []
        for folder in model_folder_names():
            entry: dict[str, Any] = {"name": folder, "folders": [
                str(p) for p in search_folders(folder, config.models_dirs, config.extra_model_paths)]}
            if server.v033:
                entry["extensions"] = sorted(LISTED_SUFFIXES.get(folder, ()))
            listed.append(entry)
        return web.json_response(listed)

    @routes.get("/experiment/models/{folder}")
    async def model_folder(request: web.Request) -> web.Response:
        from graphrun.nodes.model_files import LEGACY_FOLDERS, search_folders

        folder = request.match_info["folder"]
        names = server.folder_files(folder)
        if names is None or folder == "input":
            return web.Response(status=404)
        roots = search_folders(LEGACY_FOLDERS.get(folder, folder), config.models_dirs, config.extra_model_paths)
        listed = []
        for name in names:
            for index, root in enumerate(roots):
                path = root / name
                if path.is_file():
                    stat = path.stat()
                    listed.append({"name": name, "pathIndex": index, "modified": stat.st_mtime,
                                   "created": stat.st_ctime, "size": stat.st_size})
                    break
        return web.json_response(listed)

    @routes.post("/upload/image")
    async def upload_image(request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return _json_error(400, "invalid_upload", "no image file in the form field 'image'")
        kind = str(post.get("type") or "input")
        if kind not in ("input", "output", "temp"):
            return _json_error(400, "invalid_upload", f"type {kind!r} is not input, output or temp")
        subfolder = str(post.get("subfolder") or "")
        overwrite = str(post.get("overwrite") or "").lower() in ("true", "1")
        base = server.folders.of(kind)
        data = image.file.read()
        try:
            name = _store_upload(base, subfolder, os.path.basename(image.filename), data, overwrite)
        except UnsafePath as exc:
            return _json_error(exc.status, "invalid_path", str(exc))
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    @routes.get("/view")
    async def view(request: web.Request) -> web.StreamResponse:
        query = request.query
        if "filename" not in query:
            return web.Response(status=404)
        filename, kind = split_annotation(query["filename"])
        kind = kind or query.get("type", "output")
        if kind not in ("input", "output", "temp"):
            return _json_error(400, "invalid_path", f"type {kind!r} is not input, output or temp")
        try:
            path = safe_path(server.folders.of(kind), query.get("subfolder", ""), filename)
        except UnsafePath as exc:
            return _json_error(exc.status, "invalid_path", str(exc))
        if not path.is_file():
            return web.Response(status=404)
        return await asyncio.get_running_loop().run_in_executor(
            None, _view_response, path, query, request.headers.get("Sec-Fetch-Dest"))

    @routes.get("/system_stats")
    async def system_stats(request: web.Request) -> web.Response:
        stats = await asyncio.get_running_loop().run_in_executor(
            None, _system_stats, server.comfy_version, config.device)
        return web.json_response(stats)

    @routes.get("/features")
    async def features(request: web.Request) -> web.Response:
        return web.json_response(_features(server))

    @routes.get("/prompt")
    async def get_prompt(request: web.Request) -> web.Response:
        return web.json_response(server.queue_info())

    @routes.get("/object_info")
    async def object_info(request: web.Request) -> web.Response:
        from .object_info import object_info as build

        info = await asyncio.get_running_loop().run_in_executor(
            None, lambda: build(server.registry, lambda folder: server.folder_files(folder) or [],
                                server.comfy_version))
        return web.json_response(info)

    @routes.get("/object_info/{node_class}")
    async def object_info_node(request: web.Request) -> web.Response:
        from .object_info import node_info

        class_type = request.match_info["node_class"]
        info = node_info(server.registry, class_type, lambda folder: server.folder_files(folder) or [],
                         server.comfy_version)
        return web.json_response({class_type: info} if info is not None else {})

    @routes.get("/api/jobs")
    async def jobs(request: web.Request) -> web.Response:
        from .job_list import STATUSES, all_jobs

        query = request.query
        statuses = [s.strip().lower() for s in query.get("status", "").split(",") if s.strip()] or None
        bad = [s for s in statuses or [] if s not in STATUSES]
        if bad:
            return web.json_response({"error": f"Invalid status value(s): {', '.join(bad)}. Valid values: "
                                               f"{', '.join(STATUSES)}"}, status=400)
        sort_by, sort_order = query.get("sort_by", "created_at").lower(), query.get("sort_order", "desc").lower()
        if sort_by not in ("created_at", "execution_duration"):
            return web.json_response({"error": "sort_by must be 'created_at' or 'execution_duration'"}, status=400)
        if sort_order not in ("asc", "desc"):
            return web.json_response({"error": "sort_order must be 'asc' or 'desc'"}, status=400)
        try:
            limit = int(query["limit"]) if "limit" in query else None
            offset = max(int(query.get("offset", 0)), 0)
        except ValueError:
            return web.json_response({"error": "limit and offset must be integers"}, status=400)
        if limit is not None and limit <= 0:
            return web.json_response({"error": "limit must be a positive integer"}, status=400)
        running, pending = server.queue.snapshot()
        listed = all_jobs(running, pending, server.queue.history(), statuses, query.get("workflow_id"),
                          sort_by, sort_order, previewable=server.v033)
        page = listed[offset:][:limit] if limit is not None else listed[offset:]
        return web.json_response({"jobs": page, "pagination": {"offset": offset, "limit": limit,
                                                               "total": len(listed),
                                                               "has_more": offset + len(page) < len(listed)}})

    @routes.get("/api/jobs/{job_id}")
    async def job(request: web.Request) -> web.Response:
        from .job_list import find_job

        running, pending = server.queue.snapshot()
        found = find_job(request.match_info["job_id"], running, pending,
                         server.queue.history(prompt_id=request.match_info["job_id"]), previewable=server.v033)
        if found is None:
            return web.json_response({"error": "Job not found"}, status=404)
        return web.json_response(found)

    @routes.post("/api/jobs/{job_id}/cancel")
    async def cancel_job(request: web.Request) -> web.Response:
        """ComfyUI 0.33: cancel one job whatever its state; finished or unknown ids answer cancelled: false."""
        return web.json_response({"cancelled": server.cancel(request.match_info["job_id"])})

    @routes.post("/api/jobs/cancel")
    async def cancel_jobs(request: web.Request) -> web.Response:
        """ComfyUI 0.33: ``{"job_ids": [uuid, ...]}``, best effort; any id that is not a canonical UUID makes
        it a 400 naming them, before anything is cancelled."""
        try:
            body = await _json_body(request, empty=None)
        except (json.JSONDecodeError, BadBody):
            body = None
        if body is None:
            return web.json_response({"error": "Request body must be valid JSON"}, status=400)
        job_ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(job_ids, list):
            return web.json_response({"error": "job_ids must be a list"}, status=400)
        invalid = [j if isinstance(j, str) else repr(j) for j in job_ids if not is_job_id(j)]
        if invalid:
            return web.json_response({"error": "job_ids contains invalid id(s)", "invalid_ids": invalid}, status=400)
        cancelled = [server.cancel(job_id) for job_id in job_ids]  # every one, not only up to the first
        return web.json_response({"cancelled": any(cancelled)})

    @routes.get("/history")
    async def history(request: web.Request) -> web.Response:
        try:
            max_items = int(request.query["max_items"]) if "max_items" in request.query else None
            offset = int(request.query.get("offset", -1))
        except ValueError:
            return _json_error(400, "invalid_query", "max_items and offset must be whole numbers")
        return web.json_response(server.queue.history(max_items=max_items, offset=offset))

    @routes.get("/history/{prompt_id}")
    async def history_one(request: web.Request) -> web.Response:
        return web.json_response(server.queue.history(prompt_id=request.match_info["prompt_id"]))

    @routes.get("/queue")
    async def get_queue(request: web.Request) -> web.Response:
        running, pending = server.queue.snapshot()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    @routes.post("/prompt")
    async def post_prompt(request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _json_error(400, "invalid_prompt", "Invalid prompt", "the body must be a JSON object")
        if "prompt" not in body:
            return _json_error(400, "no_prompt", "No prompt provided", "No prompt provided")
        with server._number_lock:
            if "number" in body:
                try:
                    number = float(body["number"])
                except (TypeError, ValueError):
                    return _json_error(400, "invalid_prompt", "Invalid prompt", "'number' must be a number")
            else:
                number = -server.number if body.get("front") else server.number
                server.number += 1
        if not server.v033:
            prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        elif body.get("prompt_id") is None:  # absent or null: the server makes one
            prompt_id = str(uuid.uuid4())
        elif is_job_id(body["prompt_id"]):
            prompt_id = body["prompt_id"]
        else:
            return _json_error(400, "invalid_prompt_id", "prompt_id must be a valid UUID",
                               "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it "
                               "to let the server generate one")
        targets = body.get("partial_execution_targets")
        if targets is not None and not isinstance(targets, list):
            return _json_error(400, "invalid_prompt", "Invalid prompt", "partial_execution_targets must be a list")
        extra_data = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
        extra_data = {k: v for k, v in extra_data.items() if k not in _SENSITIVE_EXTRA_DATA}
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        usage_source = request.headers.get("Comfy-Usage-Source")
        if server.v033 and usage_source and "comfy_usage_source" not in extra_data:
            extra_data["comfy_usage_source"] = usage_source  # ComfyUI 0.33 passes it on to API nodes
        prompt = body["prompt"]
        try:
            prepared = await asyncio.get_running_loop().run_in_executor(
                None, prepare, prompt, server.registry, server.check_env(), server.folders, targets, server.v033)
        except PromptRejected as exc:
            log.warning("invalid prompt: %s", exc.body["error"]["message"])
            return web.json_response(exc.body, status=400)
        extra_data["create_time"] = int(time.time() * 1000)
        job = Job(number, prompt_id, prompt, extra_data, prepared.outputs, prepared.graph, prepared.names)
        try:
            server.queue.put(job)
        except QueueFull as exc:
            return _json_error(503, "queue_full", "The queue is full", f"{exc}; wait for prompts to finish")
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    async def clear_or_delete(request: web.Request, clear: Callable[[], None],
                              delete: Callable[[str], Any]) -> web.Response:
        """ComfyUI's ``{"clear": true}`` / ``{"delete": [ids]}`` bodies of POST /queue and POST /history."""
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _json_error(400, "invalid_request", "the body must be a JSON object")
        if body.get("clear"):
            clear()
        for prompt_id in body.get("delete") or []:
            delete(str(prompt_id))
        return web.Response(status=200)

    @routes.post("/queue")
    async def post_queue(request: web.Request) -> web.Response:
        return await clear_or_delete(request, server.queue.clear, server.queue.delete)

    @routes.post("/interrupt")
    async def interrupt(request: web.Request) -> web.Response:
        try:
            body = await _json_body(request)
        except (json.JSONDecodeError, BadBody):
            body = {}
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        server.worker.interrupt(str(prompt_id) if prompt_id else None)
        return web.Response(status=200)

    @routes.post("/free")
    async def free(request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, dict) and (body.get("unload_models") or body.get("free_memory")):
            server.runner.cache.clear()
        return web.Response(status=200)

    @routes.post("/history")
    async def post_history(request: web.Request) -> web.Response:
        return await clear_or_delete(request, server.queue.clear_history, server.queue.delete_history)

    return routes


def is_job_id(value: Any) -> bool:
    """ComfyUI 0.33's test of a client's job (prompt) id: a UUID in canonical lowercase hyphenated form, since
    the id is matched verbatim in history keys, events and cancels."""
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _features(server: Server) -> dict[str, Any]:
    """ComfyUI's /features (and the feature_flags answer on /ws), saying what graphrun does not do: no binary
    preview frames, no ComfyUI-Manager, no node replacements, no asset database (0.33 adds the model_type tags
    of that database's assets: none here either)."""
    features: dict[str, Any] = {"supports_preview_metadata": False}
    if server.v033:
        features["supports_model_type_tags"] = False
    features.update({"max_upload_size": server.config.max_body_bytes, "extension": {"manager": {"supports_v4": False}},
                     "node_replacements": False, "assets": False})
    return features


def _store_upload(base: Path, subfolder: str, filename: str, data: bytes, overwrite: bool) -> str:
    """Write an upload as ComfyUI names it (``name (1).png`` when taken, unless the bytes are the same file),
    atomically: a temp file in the same folder, then linked or renamed into place."""
    target = safe_path(base, subfolder, filename)
    target.parent.mkdir(parents=True, exist_ok=True)
    safe_path(base, subfolder, filename)  # the folders just made are checked again (a race with a symlink)
    stem, suffix = os.path.splitext(filename)
    fd, temp = tempfile.mkstemp(prefix=".graphrun-upload-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, 0o644 & ~_umask())
        if overwrite:
            os.replace(temp, target)
            return filename
        digest = hashlib.sha256(data).digest()
        counter = 1
        while True:
            try:
                os.link(temp, target)
                return target.name
            except FileExistsError:
                if target.is_file() and hashlib.sha256(target.read_bytes()).digest() == digest:
                    return target.name  # the same image again: no copy
                target = target.with_name(f"{stem} ({counter}){suffix}")
                counter += 1
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _view_response(path: Path, query: Any, fetch_dest: str | None = None) -> web.StreamResponse:
    quoted = path.name.replace("\\", "\\\\").replace('"', '\\"')
    headers = {"Content-Disposition": f'filename="{quoted}"'}
    preview, channel = query.get("preview"), query.get("channel", "rgba")
    if preview or channel in ("rgb", "a"):
        from PIL import Image

        with Image.open(path) as img:
            if preview:
                fmt, *rest = preview.split(";")
                fmt = fmt if fmt in ("webp", "jpeg") and "a" not in channel else "webp"
                quality = int(rest[-1]) if rest and rest[-1].isdigit() else 90
                out = img.convert("RGB") if fmt == "jpeg" or channel == "rgb" else img
                buffer = BytesIO()
                out.save(buffer, format=fmt, quality=quality)
                return web.Response(body=buffer.getvalue(), content_type=f"image/{fmt}", headers=headers)
            if channel == "rgb":
                out = img.convert("RGB")
            else:
                alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
                out = Image.new("RGBA", img.size)
                out.putalpha(alpha)
            buffer = BytesIO()
            out.save(buffer, format="PNG")
            return web.Response(body=buffer.getvalue(), content_type="image/png", headers=headers)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers["X-Content-Type-Options"] = "nosniff"
    if _is_active(content_type):
        # Never render HTML, scripts or SVG from the folders as a page; an SVG shown by an <img> runs no
        # script (Sec-Fetch-Dest, set by the browser itself, says so), as in ComfyUI 0.33. The answer then
        # depends on that header: no cache may replay it to another destination.
        headers.update({"Vary": "Sec-Fetch-Dest", "Cache-Control": "no-store"})
        if not (content_type == "image/svg+xml" and fetch_dest == "image"):
            content_type = "application/octet-stream"
            headers["Content-Disposition"] = "attachment; " + headers["Content-Disposition"]
    return web.FileResponse(path, headers={**headers, "Content-Type": content_type})


def _is_active(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind in _ACTIVE_TYPES or kind.endswith("+xml") or kind.endswith("/xml")


def _package_version(name: str) -> str:
    """An installed package's version, "" when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return ""


def _memory() -> tuple[int, int]:
    try:
        pages, free = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_AVPHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        return pages * size, free * size
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _torch_devices(device: str | None) -> list[Any]:
    """The CUDA devices, the one prompts run on first (``--device``, else cuda:0)."""
    import torch

    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    chosen = torch.device(device) if device and device.startswith("cuda") else None
    primary = torch.device("cuda", chosen.index or 0) if chosen is not None else devices[0]
    primary = primary if primary in devices else devices[0]
    return [primary] + [d for d in devices if d != primary]


def _system_stats(comfy_version: str, device: str | None = None) -> dict[str, Any]:
    """ComfyUI's /system_stats; ``comfyui_version`` is the ComfyUI whose behaviour the server follows.

    ComfyUI 0.33 lists every device (the one prompts run on first) and adds ``comfy_package_versions`` (only
    the editor's package here: graphrun needs no other comfy* package) and ``deploy_environment`` (how it was
    installed: "graphrun"); v0.18.1 lists the one device prompts run on."""
    import torch

    v033 = comfy_at_least(comfy_version, "0.33")
    ram_total, ram_free = _memory()
    devices = []
    if torch.cuda.is_available() and not (device or "").startswith(("cpu", "mps")):
        chosen = _torch_devices(device)
        for dev in chosen if v033 else chosen[:1]:
            index = dev.index
            free, total = torch.cuda.mem_get_info(index)
            devices.append({"name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda",
                            "index": index, "vram_total": total, "vram_free": free,
                            "torch_vram_total": torch.cuda.memory_reserved(index),
                            "torch_vram_free": torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)})
    else:
        devices.append({"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total, "vram_free": ram_free,
                        "torch_vram_total": ram_total, "torch_vram_free": ram_free})
    frontend = _package_version("comfyui-frontend-package")
    system: dict[str, Any] = {
        "os": sys.platform, "ram_total": ram_total, "ram_free": ram_free,
        "comfyui_version": _COMFYUI_VERSION.get(comfy_version, comfy_version),
        "graphrun_version": _package_version("graphrun"),
        "required_frontend_version": frontend, "installed_templates_version": "", "required_templates_version": "",
    }
    if v033:
        system["comfy_package_versions"] = [{"name": "comfyui-frontend-package", "installed": frontend or None,
                                             "required": frontend or None}]
    system.update({"python_version": sys.version, "pytorch_version": torch.__version__, "embedded_python": False})
    if v033:
        system["deploy_environment"] = "graphrun"
    system.update({"argv": sys.argv, "platform": platform.platform()})
    return {"system": system, "devices": devices}


# --- the application -------------------------------------------------------------------------------------------------


def create_app(config: ServerConfig, registry: Registry | None = None) -> web.Application:
    """The aiohttp application of ``graphrun serve``; its worker starts and stops with the app."""
    server = Server(config, registry)
    middlewares = [_never_crash, _same_origin]
    if config.token:
        middlewares.insert(0, _token_middleware(config.token))
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=middlewares)
    app[SERVER_KEY] = server
    routes = _routes(server)
    from . import editor

    root = (config.frontend_root or editor.frontend_root()) if config.editor else None
    editor_routes = editor.editor_routes(config.user_dir, server.v033, root) if config.editor else web.RouteTableDef()
    for table in (routes, editor_routes):
        prefixed = web.RouteTableDef()
        for route in table:
            if isinstance(route, web.RouteDef):
                prefixed.route(route.method, "/api" + route.path)(route.handler, **route.kwargs)
        app.add_routes(prefixed)
        app.add_routes(table)
    if root is not None:
        editor.add_static(app, root)
    else:
        app.router.add_get("/", _no_editor)

    async def startup(app: web.Application) -> None:
        for folder in (config.out_dir, config.input_dir):
            folder.mkdir(parents=True, exist_ok=True)
        server.hub.start(asyncio.get_running_loop())
        app[PUBLISHER_KEY] = asyncio.create_task(server.hub.run())
        server.worker.start()

    async def cleanup(app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, server.worker.stop)
        app[PUBLISHER_KEY].cancel()
        await server.hub.close_all()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    return app


async def _no_editor(request: web.Request) -> web.Response:
    text = ("<!doctype html><title>graphrun serve</title><h1>graphrun serve</h1>"
            "<p>ComfyUI's API is served here (POST /prompt, /ws, /history, /view, /object_info). "
            "For ComfyUI's web editor, install <code>graphrun[ui]</code> and restart.</p>")
    return web.Response(text=text, content_type="text/html")
