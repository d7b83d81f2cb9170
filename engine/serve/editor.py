"""ComfyUI's web editor on ``graphrun serve``: its static files and the routes it calls besides the API.

The editor is the ``comfyui-frontend-package`` wheel (``graphrun[ui]``): a single-page app in its
``static/`` folder. Besides the prompt API (``app.py``) it calls, at start-up and while a person works:

* ``/users`` — single-user mode: ``{"storage": "server", "migrated": ...}`` (no login screen);
* ``/settings``, ``/settings/{id}`` — the person's settings, one JSON object in
  ``USER_DIR/default/comfy.settings.json``;
* ``/userdata...`` and ``/v2/userdata`` — saved workflows, keybindings, ``user.css``: files under
  ``USER_DIR/default/``, nowhere else;
* ``/i18n``, ``/extensions``, ``/workflow_templates``, ``/global_subgraphs``, ``/node_replacements`` and the
  template index under ``/templates/`` — what custom nodes would add in ComfyUI; graphrun has none, so these
  answer empty, in the shapes the editor parses.

The folder layout is ComfyUI's (``user/default/...``), so a ComfyUI user folder can be given as
``--user-dir`` and its workflows and settings appear. The request and answer shapes follow the ComfyUI the
server follows (``app/user_manager.py``, ``app/app_settings.py`` and ``app/custom_node_manager.py``; 0.33 gives
a file's ``modified`` and ``created`` in whole milliseconds, v0.18.1 in seconds); the code is graphrun's own,
and stricter: a name that leaves the folder (``..``, an absolute path, a backslash, a NUL byte)
is a 400 and one through a symbolic link a 403 (ComfyUI compares path prefixes only, so a symlink in its
user folder reads anywhere); every write goes to a temp file that is then renamed into place, so a crash
never leaves half a workflow; hidden files and symlinks are never listed. Errors are JSON
``{"error": {"type", "message", "details", "extra_info"}}`` with ComfyUI's status codes.

Use (``create_app`` does)::

    routes = editor_routes(config.user_dir)   # RouteDefs only: add them bare and under /api/
    root = frontend_root()                    # None without graphrun[ui]
    if root is not None:
        add_static(app, root)                 # after every other route: "/" and the editor's files

Request bodies are limited by the application's ``client_max_size`` (a bigger body is a 413).
"""
from __future__ import annotations

import json
import logging
import mimetypes
import os
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from .files import UnsafePath, safe_path

log = logging.getLogger("graphrun.serve")

USER = "default"  # ComfyUI's single user; its files live in USER_DIR/default
SETTINGS_FILE = "comfy.settings.json"
#: Types a browser would run or render as a page: served as plain bytes, so a saved file cannot script the editor.
_ACTIVE_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript",
                 "application/javascript", "application/x-javascript", "application/ecmascript", "text/css",
                 "image/svg+xml", "text/xml", "application/xml", "message/rfc822"}


def check_frontend_root(root: Path) -> Path:
    """A static folder given with ``--front-end-root``: it must hold the editor's ``index.html``."""
    root = Path(root)
    if not (root / "index.html").is_file():
        raise ValueError(f"{root} holds no index.html: give the static/ folder of a comfyui-frontend-package "
                         "(site-packages/comfyui_frontend_package/static)")
    return root


def frontend_root() -> Path | None:
    """The installed editor's static folder (holding ``index.html``), or None without ``graphrun[ui]``."""
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    root = Path(comfyui_frontend_package.__file__).resolve().parent / "static"
    return root if (root / "index.html").is_file() else None


# --- helpers ---------------------------------------------------------------------------------------------------------


def _error(status: int, kind: str, message: str, details: str = "") -> web.Response:
    body = {"error": {"type": kind, "message": message, "details": details, "extra_info": {}}}
    return web.json_response(body, status=status)


def _unsafe(exc: UnsafePath) -> web.Response:
    return _error(exc.status, "invalid_path", str(exc))


def _flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    return default if value is None else value.lower() == "true"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a hidden temp file in the same folder and a rename."""
    temp = path.parent / f".graphrun-{uuid.uuid4().hex}.tmp"
    # O_EXCL: never through a file or link someone else made; 0o644 less the umask, like any saved file
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        if os.path.lexists(temp):
            os.unlink(temp)
        raise


def _file_info(path: Path, relative_to: Path, milliseconds: bool) -> dict[str, Any]:
    """ComfyUI's ``full_info`` of a file: times in seconds (v0.18.1) or whole milliseconds (0.33)."""
    stat = path.stat()
    modified, created = stat.st_mtime, stat.st_ctime
    if milliseconds:
        modified, created = int(modified * 1000), int(created * 1000)
    return {"path": path.relative_to(relative_to).as_posix(), "size": stat.st_size,
            "modified": modified, "created": created}


def _visible(folder: Path, name: str) -> bool:
    """Listed entries: no hidden files (our temp files among them) and no symbolic links."""
    return not name.startswith(".") and not (folder / name).is_symlink()


class UserFiles:
    """The single user's folder, ``USER_DIR/default``: every path a client names is checked here."""

    def __init__(self, user_dir: Path) -> None:
        self.root = Path(os.path.abspath(user_dir)) / USER

    def path(self, name: str, *, create_parents: bool = False) -> Path:
        """``root/name``; UnsafePath unless it stays inside ``root`` without symlinks."""
        path = safe_path(self.root, "", name)
        if create_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
            path = safe_path(self.root, "", name)  # checked again: a symlink may have been planted meanwhile
        return path

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # settings: one JSON object; a damaged file reads as {} and is kept aside when next written

    def read_settings(self) -> dict[str, Any]:
        path = self.root / SETTINGS_FILE
        if path.is_symlink():
            log.warning("settings file %s is a symbolic link; not read", path)
            return {}
        if not path.is_file():
            return {}
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            log.warning("settings file %s is damaged (%s); the editor starts from defaults", path, exc)
            return {}
        if not isinstance(value, dict):
            log.warning("settings file %s holds no JSON object; the editor starts from defaults", path)
            return {}
        return value

    def write_settings(self, settings: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / SETTINGS_FILE
        if path.is_symlink():
            raise UnsafePath(f"{SETTINGS_FILE} is a symbolic link; refused", status=403)
        if path.is_file() and not self._is_settings_object(path):
            os.replace(path, path.with_name(SETTINGS_FILE + ".damaged"))  # never overwrite what we could not read
        _write_atomic(path, json.dumps(settings, indent=4, ensure_ascii=False).encode("utf-8"))

    @staticmethod
    def _is_settings_object(path: Path) -> bool:
        try:
            return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
        except (ValueError, OSError):
            return False


# --- routes ----------------------------------------------------------------------------------------------------------


def editor_routes(user_dir: Path, v033: bool = True, root: Path | None = None) -> web.RouteTableDef:
    """The routes the editor calls besides the prompt API, each a ``RouteDef`` (the app adds them bare and
    under ``/api/``). Files live in ``user_dir/default``, made on first write. ``v033``: ComfyUI 0.33's shapes
    where they differ from v0.18.1's; ``root``: the editor's static folder (default: the installed one)."""
    files = UserFiles(Path(user_dir))
    scripts = _extension_scripts(root)  # the editor's files do not change while the server runs
    routes = web.RouteTableDef()

    # -- user and settings

    @routes.get("/users")
    async def get_users(request: web.Request) -> web.Response:
        # single-user mode: no "users" key, so the editor shows no login screen
        return web.json_response({"storage": "server", "migrated": files.root.is_dir()})

    @routes.post("/users")
    async def post_users(request: web.Request) -> web.Response:
        return web.json_response({"error": "graphrun serve has a single user; it creates no others"}, status=400)

    @routes.get("/settings")
    async def get_settings(request: web.Request) -> web.Response:
        return web.json_response(files.read_settings())

    @routes.get("/settings/{id}")
    async def get_setting(request: web.Request) -> web.Response:
        return web.json_response(files.read_settings().get(request.match_info["id"]))

    @routes.post("/settings")
    async def post_settings(request: web.Request) -> web.Response:
        new = await _json(request)
        if not isinstance(new, dict):
            return _error(400, "invalid_settings", "settings must be a JSON object of setting id -> value")
        # read, merge and write with no await in between: concurrent posts cannot lose each other's keys
        try:
            files.write_settings({**files.read_settings(), **new})
        except UnsafePath as exc:
            return _unsafe(exc)
        return web.Response(status=200)

    @routes.post("/settings/{id}")
    async def post_setting(request: web.Request) -> web.Response:
        value = await _json(request)
        settings = files.read_settings()
        settings[request.match_info["id"]] = value
        try:
            files.write_settings(settings)
        except UnsafePath as exc:
            return _unsafe(exc)
        return web.Response(status=200)

    # -- user data files

    @routes.get("/userdata")
    async def list_userdata(request: web.Request) -> web.Response:
        directory = request.query.get("dir", "")
        if not directory:
            return _error(400, "invalid_path", "no directory given", "add ?dir=NAME (e.g. dir=workflows)")
        try:
            folder = files.path(directory)
        except UnsafePath as exc:
            return _unsafe(exc)
        if not folder.is_dir():
            return _error(404, "not_found", f"directory {directory!r} not found")
        recurse, full_info, split = _flag(request, "recurse", False), _flag(request, "full_info", False), \
            _flag(request, "split", False)
        found: list[Path] = []
        for here, dirs, names in os.walk(folder):
            base = Path(here)
            dirs[:] = sorted(d for d in dirs if _visible(base, d)) if recurse else []
            found += [base / n for n in sorted(names) if _visible(base, n) and (base / n).is_file()]
        result: list[Any] = []
        for path in found:
            rel = path.relative_to(folder).as_posix()
            if full_info:
                result.append(_file_info(path, folder, v033))
            elif split:
                result.append([rel, *rel.split("/")])
            else:
                result.append(rel)
        return web.json_response(result)

    @routes.get("/v2/userdata")
    async def list_userdata_v2(request: web.Request) -> web.Response:
        requested = request.query.get("path", "").rstrip("/")
        requested = "" if requested in ("", ".") else requested
        try:
            folder = files.path(requested) if requested else files.root
        except UnsafePath as exc:
            return _unsafe(exc)
        if not folder.exists():
            if folder == files.root:
                return web.json_response([])  # nothing saved yet
            return _error(404, "not_found", f"path {requested!r} not found")
        if not folder.is_dir():
            return _error(400, "invalid_path", f"path {requested!r} is not a directory")
        entries: list[dict[str, Any]] = []
        for here, dirs, names in os.walk(folder):
            base = Path(here)
            dirs[:] = sorted(d for d in dirs if _visible(base, d))
            for name in dirs:
                entries.append({"name": name, "path": files.relative(base / name), "type": "directory"})
            for name in names:
                path = base / name
                if _visible(base, name) and path.is_file():
                    stat = path.stat()
                    entries.append({"name": name, "path": files.relative(path), "type": "file",
                                    "size": stat.st_size, "modified": stat.st_mtime})
        entries.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
        return web.json_response(entries)

    @routes.get("/userdata/{file}")
    async def get_userdata(request: web.Request) -> web.StreamResponse:
        try:
            path = files.path(request.match_info["file"])
        except UnsafePath as exc:
            return _unsafe(exc)
        if not path.is_file():
            return _error(404, "not_found", f"file {request.match_info['file']!r} not found")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        # Saved files are never shown as a page (ComfyUI 0.33 sends them as attachments); the user's
        # stylesheet stays one, since the editor links it.
        disposition = "attachment"
        if path == files.root / "user.css":
            content_type, disposition = "text/css", "inline"
        elif content_type in _ACTIVE_TYPES or content_type.endswith(("+xml", "/xml")):
            content_type = "application/octet-stream"
        return web.FileResponse(path, headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff",
                                               "Content-Disposition": disposition})

    @routes.post("/userdata/{file}")
    async def post_userdata(request: web.Request) -> web.Response:
        name = request.match_info["file"]
        try:
            path = files.path(name)
        except UnsafePath as exc:
            return _unsafe(exc)
        if path.is_dir():
            return _error(400, "invalid_path", f"{name!r} is a directory")
        if not _flag(request, "overwrite", True) and path.exists():
            return _error(409, "file_exists", f"file {name!r} already exists", "send overwrite=true to replace it")
        data = await request.read()  # over the app's client_max_size: 413
        try:
            path = files.path(name, create_parents=True)
            _write_atomic(path, data)
        except UnsafePath as exc:
            return _unsafe(exc)
        except OSError as exc:
            return _error(400, "invalid_path", f"cannot save {name!r}: {exc.strerror or exc}",
                          "avoid special characters like :\\/*?\"<>| in file names")
        return web.json_response(_file_info(path, files.root, v033) if _flag(request, "full_info", False)
                                 else files.relative(path))

    @routes.delete("/userdata/{file}")
    async def delete_userdata(request: web.Request) -> web.Response:
        try:
            path = files.path(request.match_info["file"])
        except UnsafePath as exc:
            return _unsafe(exc)
        if not path.is_file():
            return _error(404, "not_found", f"file {request.match_info['file']!r} not found")
        path.unlink()
        return web.Response(status=204)

    @routes.post("/userdata/{file}/move/{dest}")
    async def move_userdata(request: web.Request) -> web.Response:
        try:
            source = files.path(request.match_info["file"])
            dest = files.path(request.match_info["dest"])
        except UnsafePath as exc:
            return _unsafe(exc)
        if not source.is_file():
            return _error(404, "not_found", f"file {request.match_info['file']!r} not found")
        if dest.is_dir():
            return _error(400, "invalid_path", f"{request.match_info['dest']!r} is a directory")
        if not _flag(request, "overwrite", True) and dest.exists():
            return _error(409, "file_exists", f"file {request.match_info['dest']!r} already exists",
                          "send overwrite=true to replace it")
        try:
            dest = files.path(request.match_info["dest"], create_parents=True)
            os.replace(source, dest)
        except UnsafePath as exc:
            return _unsafe(exc)
        except OSError as exc:
            return _error(400, "invalid_path", f"cannot move to {request.match_info['dest']!r}: {exc.strerror or exc}")
        return web.json_response(_file_info(dest, files.root, v033) if _flag(request, "full_info", False)
                                 else files.relative(dest))

    # -- what custom nodes add in ComfyUI: graphrun has none

    @routes.get("/i18n")
    async def i18n(request: web.Request) -> web.Response:
        return web.json_response({})  # language code -> extra translations of custom nodes

    @routes.get("/extensions")
    async def extensions(request: web.Request) -> web.Response:
        return web.json_response(scripts)

    @routes.get("/workflow_templates")
    async def workflow_templates(request: web.Request) -> web.Response:
        return web.json_response({})  # custom node name -> its example workflow names

    @routes.get("/global_subgraphs")
    async def global_subgraphs(request: web.Request) -> web.Response:
        return web.json_response({})  # subgraph id -> blueprint that custom nodes ship

    @routes.get("/global_subgraphs/{id}")
    async def global_subgraph(request: web.Request) -> web.Response:
        return _error(404, "not_found", f"no subgraph blueprint {request.match_info['id']!r}")

    @routes.get("/node_replacements")
    async def node_replacements(request: web.Request) -> web.Response:
        return web.json_response({})  # old class_type -> replacements

    # The editor's own template index (ComfyUI serves it from the comfyui-workflow-templates package,
    # which graphrun does not use): an empty index, so the templates dialog opens empty, without errors.
    @routes.get("/templates/{name:index(\\.[A-Za-z-]+)?\\.json}")
    async def template_index(request: web.Request) -> web.Response:
        return web.json_response([])

    @routes.get("/templates/index_logo.json")
    async def template_logos(request: web.Request) -> web.Response:
        return web.json_response({})

    return routes


async def _json(request: web.Request) -> Any:
    """The request's JSON body (ValueError, a 400 from the app's middleware, when it is not JSON)."""
    text = await request.text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": {"type": "invalid_json", "message": "request body is not valid JSON",
                                       "details": str(exc), "extra_info": {}}}),
            content_type="application/json") from exc


def _extension_scripts(root: Path | None = None) -> list[str]:
    """ComfyUI lists the editor's own ``extensions/**/*.js`` (the editor skips ``extensions/core``, which it
    bundles); graphrun adds no custom node scripts."""
    root = root or frontend_root()
    if root is None or not (root / "extensions").is_dir():
        return []
    return sorted("/" + path.relative_to(root).as_posix() for path in (root / "extensions").rglob("*.js"))


# --- static files ----------------------------------------------------------------------------------------------------


def add_static(app: web.Application, root: Path) -> None:
    """Serve the editor from ``root``: ``/`` is its ``index.html`` (never cached, so an upgrade shows at
    once) and every other path a file below ``root`` (no symlinks followed, no directory listings).
    Add it after every other route: the static files answer whatever the routes did not."""
    root = Path(root)
    index = root / "index.html"

    async def get_index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(index, headers={"Cache-Control": "no-store, must-revalidate",
                                                "Pragma": "no-cache", "Expires": "0"})

    async def user_css(request: web.Request) -> web.Response:
        # index.html links /user.css, which ComfyUI's frontend no longer ships: an empty sheet, not a 404
        return web.Response(text="", content_type="text/css")

    app.router.add_get("/", get_index)
    if not (root / "user.css").exists():
        app.router.add_get("/user.css", user_css)
    app.router.add_static("/", root, follow_symlinks=False, show_index=False)
