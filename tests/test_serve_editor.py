"""The routes ComfyUI's web editor calls on ``graphrun serve`` besides the prompt API (engine/serve/editor.py).

Each test runs a small aiohttp app holding only the editor's routes (bare and under ``/api/``, as
``create_app`` mounts them) through aiohttp's test client; ``asyncio.run`` drives it, no pytest plugin.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

web = pytest.importorskip("aiohttp.web")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from graphrun.engine.serve import editor  # noqa: E402

Check = Callable[[TestClient], Awaitable[Any]]


def _app(user_dir: Path, *, max_body: int = 1024 * 1024, static: Path | None = None,
         v033: bool = True) -> web.Application:
    app = web.Application(client_max_size=max_body)
    table = editor.editor_routes(user_dir, v033)
    prefixed = web.RouteTableDef()
    for route in table:
        prefixed.route(route.method, "/api" + route.path)(route.handler, **route.kwargs)
    app.add_routes(prefixed)
    app.add_routes(table)
    if static is not None:
        editor.add_static(app, static)
    return app


def run(user_dir: Path, check: Check, **kwargs: Any) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(_app(user_dir, **kwargs))) as client:
            return await check(client)

    return asyncio.run(main())


async def _json(response: Any) -> Any:
    return json.loads(await response.text())


# --- settings --------------------------------------------------------------------------------------------------------


def test_settings_are_merged_saved_as_comfyui_does_and_survive_a_new_server(tmp_path: Path) -> None:
    async def save(client: TestClient) -> None:
        assert await _json(await client.get("/api/settings")) == {}
        assert (await client.post("/api/settings", json={"Comfy.ColorPalette": "dark", "Comfy.Locale": "en"})).status == 200
        assert (await client.post("/api/settings/Comfy.Locale", json="fr")).status == 200
        assert (await client.post("/settings/Comfy.Sidebar.Size", json={"w": 300})).status == 200

    run(tmp_path, save)
    stored = tmp_path / "default" / "comfy.settings.json"  # ComfyUI's layout: user/default/comfy.settings.json
    assert json.loads(stored.read_text()) == {"Comfy.ColorPalette": "dark", "Comfy.Locale": "fr",
                                              "Comfy.Sidebar.Size": {"w": 300}}

    async def reload(client: TestClient) -> None:  # a new app, as after a restart
        assert await _json(await client.get("/api/settings")) == {
            "Comfy.ColorPalette": "dark", "Comfy.Locale": "fr", "Comfy.Sidebar.Size": {"w": 300}}
        assert await _json(await client.get("/api/settings/Comfy.Locale")) == "fr"
        assert await _json(await client.get("/api/settings/Comfy.Unknown")) is None

    run(tmp_path, reload)
    assert [p.name for p in stored.parent.iterdir()] == ["comfy.settings.json"]  # no temp file left behind


def test_settings_refuse_bodies_that_are_not_a_json_object(tmp_path: Path) -> None:
    async def check(client: TestClient) -> None:
        response = await client.post("/api/settings", json=[1, 2])
        assert response.status == 400
        assert (await _json(response))["error"]["type"] == "invalid_settings"
        response = await client.post("/api/settings/Comfy.Locale", data="{not json", headers={"Content-Type": "application/json"})
        assert response.status == 400
        assert (await _json(response))["error"]["message"] == "request body is not valid JSON"

    run(tmp_path, check)
    assert not (tmp_path / "default" / "comfy.settings.json").exists()


def test_a_damaged_settings_file_reads_as_defaults_and_is_kept_aside_when_written(tmp_path: Path) -> None:
    folder = tmp_path / "default"
    folder.mkdir()
    (folder / "comfy.settings.json").write_text('{"Comfy.Locale": "en",')  # cut off mid-write by another program

    async def check(client: TestClient) -> None:
        assert await _json(await client.get("/api/settings")) == {}
        assert (await client.post("/api/settings/Comfy.Locale", json="de")).status == 200

    run(tmp_path, check)
    assert json.loads((folder / "comfy.settings.json").read_text()) == {"Comfy.Locale": "de"}
    assert (folder / "comfy.settings.json.damaged").read_text() == '{"Comfy.Locale": "en",'


# --- users -----------------------------------------------------------------------------------------------------------


def test_users_answer_single_user_mode_so_the_editor_shows_no_login(tmp_path: Path) -> None:
    async def check(client: TestClient) -> None:
        before = await _json(await client.get("/api/users"))
        await client.post("/api/settings/Comfy.Locale", json="en")
        after = await _json(await client.get("/users"))
        refused = await client.post("/api/users", json={"username": "eve"})
        return before, after, refused.status, await _json(refused)

    before, after, status, body = run(tmp_path, check)
    assert before == {"storage": "server", "migrated": False}  # no "users" key: the editor's single-user mode
    assert after == {"storage": "server", "migrated": True}
    assert status == 400 and "single user" in body["error"]
    assert not (tmp_path / "users.json").exists()


# --- user data files -------------------------------------------------------------------------------------------------


def test_userdata_saves_lists_reads_moves_and_deletes_workflows(tmp_path: Path) -> None:
    workflow = json.dumps({"nodes": [], "links": []}).encode()

    async def check(client: TestClient) -> None:
        missing = await client.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true")
        assert missing.status == 404  # as ComfyUI: no workflows folder yet; the editor treats it as empty

        saved = await client.post("/api/userdata/workflows%2Fmy%20flow.json", data=workflow)
        assert saved.status == 200 and await _json(saved) == "workflows/my flow.json"
        info = await _json(await client.post("/api/userdata/workflows%2Fsub%2Fb.json?full_info=true", data=b"{}"))
        assert info["path"] == "workflows/sub/b.json"  # relative to the user folder, as ComfyUI answers
        assert info["size"] == 2 and {"modified", "created"} <= set(info)
        assert all(isinstance(info[k], int) and info[k] > 1e12 for k in ("modified", "created"))  # 0.33: ms

        conflict = await client.post("/api/userdata/workflows%2Fmy%20flow.json?overwrite=false", data=b"other")
        assert conflict.status == 409

        listed = await _json(await client.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true"))
        assert [(e["path"], e["size"]) for e in listed] == [("my flow.json", len(workflow)), ("sub/b.json", 2)]
        assert await _json(await client.get("/api/userdata?dir=workflows")) == ["my flow.json"]  # no recursion
        assert await _json(await client.get("/api/userdata?dir=workflows&recurse=true&split=true")) == [
            ["my flow.json", "my flow.json"], ["sub/b.json", "sub", "b.json"]]

        read = await client.get("/api/userdata/workflows%2Fmy%20flow.json")
        assert read.status == 200 and await read.read() == workflow

        moved = await client.post("/api/userdata/workflows%2Fmy%20flow.json/move/workflows%2Fdone%2Fflow.json")
        assert await _json(moved) == "workflows/done/flow.json"
        assert (await client.get("/api/userdata/workflows%2Fmy%20flow.json")).status == 404
        blocked = await client.post("/api/userdata/workflows%2Fsub%2Fb.json/move/workflows%2Fdone%2Fflow.json"
                                    "?overwrite=false")
        assert blocked.status == 409

        tree = await _json(await client.get("/api/v2/userdata"))
        # ComfyUI's order: folders first, then files, each by name (not by path)
        assert [(e["type"], e["path"]) for e in tree] == [
            ("directory", "workflows/done"), ("directory", "workflows/sub"), ("directory", "workflows"),
            ("file", "workflows/sub/b.json"), ("file", "workflows/done/flow.json")]
        assert [e["path"] for e in await _json(await client.get("/api/v2/userdata?path=workflows%2Fsub"))] == [
            "workflows/sub/b.json"]

        assert (await client.delete("/api/userdata/workflows%2Fdone%2Fflow.json")).status == 204
        assert (await client.delete("/api/userdata/workflows%2Fdone%2Fflow.json")).status == 404

    run(tmp_path, check)
    root = tmp_path / "default" / "workflows"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["done", "sub", "sub/b.json"]


def test_userdata_writes_replace_the_file_whole_and_leave_no_temp_file(tmp_path: Path) -> None:
    async def check(client: TestClient) -> None:
        await client.post("/api/userdata/keybindings.json", data=b"a" * 5000)
        await client.post("/api/userdata/keybindings.json", data=b"[]")

    run(tmp_path, check)
    folder = tmp_path / "default"
    assert os.listdir(folder) == ["keybindings.json"]
    assert (folder / "keybindings.json").read_bytes() == b"[]"
    assert (folder / "keybindings.json").stat().st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_listings_hide_hidden_files_temp_files_and_symlinks(tmp_path: Path) -> None:
    folder = tmp_path / "default" / "workflows"
    folder.mkdir(parents=True)
    (folder / "a.json").write_text("{}")
    (folder / ".graphrun-123.tmp").write_text("half")
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    (folder / "link.json").symlink_to(outside)
    (folder / "linkdir").symlink_to(tmp_path)

    async def check(client: TestClient) -> Any:
        return (await _json(await client.get("/api/userdata?dir=workflows&recurse=true")),
                await _json(await client.get("/api/v2/userdata")))

    flat, tree = run(tmp_path, check)
    assert flat == ["a.json"]
    assert [e["path"] for e in tree] == ["workflows", "workflows/a.json"]


def test_a_body_over_the_apps_size_limit_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    async def check(client: TestClient) -> int:
        return (await client.post("/api/userdata/workflows%2Fbig.json", data=b"x" * 4096)).status

    assert run(tmp_path, check, max_body=1024) == 413
    assert not list(tmp_path.rglob("*.json"))


def test_saved_files_are_never_served_as_pages_or_scripts(tmp_path: Path) -> None:
    async def check(client: TestClient) -> Any:
        await client.post("/api/userdata/evil.html", data=b"<script>alert(1)</script>")
        await client.post("/api/userdata/user.css", data=b"body{color:red}")
        page = await client.get("/api/userdata/evil.html")
        css = await client.get("/api/userdata/user.css")
        return page.headers, css.headers

    page, css = run(tmp_path, check)
    assert page["Content-Type"] == "application/octet-stream" and page["X-Content-Type-Options"] == "nosniff"
    assert page["Content-Disposition"] == "attachment"  # as ComfyUI 0.33: saved files are downloads
    assert css["Content-Type"].startswith("text/css")  # index.html links api/userdata/user.css as a stylesheet
    assert css["Content-Disposition"] == "inline"


def test_file_times_are_seconds_under_comfy_0_18_1(tmp_path: Path) -> None:
    async def check(client: TestClient) -> Any:
        return await _json(await client.post("/api/userdata/workflows%2Fa.json?full_info=true", data=b"{}"))

    info = run(tmp_path, check, v033=False)
    assert isinstance(info["modified"], float) and info["modified"] < 1e11


# --- what leaves the user folder -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, status", [
    ("..%2F..%2Fetc%2Fpasswd", 400),
    ("workflows%2F..%2F..%2Fsecret.json", 400),
    ("%2Fetc%2Fpasswd", 400),
    ("workflows%5C..%5C..%5Csecret.json", 400),  # backslashes
    ("a%00.json", 400),
    ("escape%2Fsecret.json", 403),  # through a symlinked folder
    ("linked.json", 403),  # a symlinked file
])
def test_names_that_leave_the_user_folder_are_refused_for_every_method(tmp_path: Path, name: str, status: int) -> None:
    user = tmp_path / "user"
    (user / "default").mkdir(parents=True)
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": true}')
    (user / "default" / "escape").symlink_to(tmp_path)
    (user / "default" / "linked.json").symlink_to(secret)
    (user / "default" / "ok.json").write_text("{}")

    async def check(client: TestClient) -> list[tuple[str, int, Any]]:
        answers = []
        for method, url, body in [
            ("GET", f"/api/userdata/{name}", None),
            ("POST", f"/api/userdata/{name}", b'{"overwritten": true}'),
            ("DELETE", f"/api/userdata/{name}", None),
            ("POST", f"/api/userdata/{name}/move/moved.json", None),
            ("POST", f"/api/userdata/ok.json/move/{name}", None),
        ]:
            response = await client.request(method, url, data=body)
            answers.append((f"{method} {url}", response.status, await _json(response)))
        return answers

    for what, got, body in run(user, check):
        assert got == status, what
        assert body["error"]["type"] == "invalid_path", what
    assert secret.read_text() == '{"secret": true}'
    assert (user / "default" / "ok.json").read_text() == "{}"  # the move's source stays
    assert not (user / "default" / "moved.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.json", "user"]


def test_a_symlinked_settings_file_is_neither_read_nor_written(tmp_path: Path) -> None:
    user = tmp_path / "user"
    (user / "default").mkdir(parents=True)
    outside = tmp_path / "other.json"
    outside.write_text('{"theirs": 1}')
    (user / "default" / "comfy.settings.json").symlink_to(outside)

    async def check(client: TestClient) -> Any:
        read = await _json(await client.get("/api/settings"))
        written = await client.post("/api/settings", json={"Comfy.Locale": "en"})
        return read, written.status

    assert run(user, check) == ({}, 403)
    assert outside.read_text() == '{"theirs": 1}'


def test_a_move_onto_an_impossible_destination_is_a_400_and_keeps_the_source(tmp_path: Path) -> None:
    folder = tmp_path / "default"
    folder.mkdir()
    (folder / "a.json").write_text("{}")
    (folder / "file").write_text("not a folder")

    async def check(client: TestClient) -> Any:
        response = await client.post("/api/userdata/a.json/move/file%2Fb.json")
        return response.status, (await _json(response))["error"]["type"]

    assert run(tmp_path, check) == (400, "invalid_path")
    assert (folder / "a.json").read_text() == "{}"


def test_listing_outside_the_user_folder_is_refused(tmp_path: Path) -> None:
    user = tmp_path / "user"
    (user / "default").mkdir(parents=True)
    (user / "default" / "escape").symlink_to(tmp_path)

    async def check(client: TestClient) -> list[int]:
        urls = ["/api/userdata?dir=..", "/api/userdata?dir=%2Fetc", "/api/userdata?dir=escape",
                "/api/v2/userdata?path=..%2F..", "/api/v2/userdata?path=%2Fetc", "/api/v2/userdata?path=escape",
                "/api/userdata"]
        return [(await client.get(url)).status for url in urls]

    assert run(user, check) == [400, 400, 403, 400, 400, 403, 400]


# --- what custom nodes add in ComfyUI --------------------------------------------------------------------------------


def test_custom_node_routes_answer_empty_in_the_shapes_the_editor_parses(tmp_path: Path) -> None:
    async def check(client: TestClient) -> dict[str, Any]:
        urls = ["/api/i18n", "/api/workflow_templates", "/api/global_subgraphs", "/api/node_replacements",
                "/templates/index.json", "/templates/index.fr.json", "/templates/index_logo.json"]
        return {url: await _json(await client.get(url)) for url in urls}

    assert run(tmp_path, check) == {
        "/api/i18n": {}, "/api/workflow_templates": {}, "/api/global_subgraphs": {}, "/api/node_replacements": {},
        "/templates/index.json": [], "/templates/index.fr.json": [], "/templates/index_logo.json": {}}


def test_extensions_lists_the_editors_own_scripts_as_comfyui_does(tmp_path: Path) -> None:
    root = editor.frontend_root()
    if root is None:
        pytest.skip("comfyui-frontend-package (graphrun[ui]) is not installed")

    async def check(client: TestClient) -> Any:
        return await _json(await client.get("/api/extensions"))

    scripts = run(tmp_path, check)
    assert scripts and all(s.startswith("/extensions/") and s.endswith(".js") for s in scripts)
    assert all((root / s.lstrip("/")).is_file() for s in scripts)
    assert "/extensions/core/groupNode.js" in scripts  # the editor skips extensions/core: it bundles them


# --- the editor's files ----------------------------------------------------------------------------------------------


def test_frontend_root_is_the_packages_static_folder_or_none_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    root = editor.frontend_root()
    if root is not None:
        import comfyui_frontend_package

        assert root == Path(comfyui_frontend_package.__file__).resolve().parent / "static"
        assert (root / "index.html").is_file()
    monkeypatch.setitem(sys.modules, "comfyui_frontend_package", None)  # as if graphrun[ui] were not installed
    assert editor.frontend_root() is None


def test_static_files_serve_index_assets_and_nothing_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "static"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>editor</title>")
    (root / "assets" / "app.js").write_text("export {}")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "assets" / "leak.txt").symlink_to(tmp_path / "secret.txt")

    async def check(client: TestClient) -> dict[str, Any]:
        index = await client.get("/")
        script = await client.get("/assets/app.js")
        css = await client.get("/user.css")
        return {
            "index": (index.status, await index.text(), index.headers.get("Cache-Control")),
            "script": (script.status, script.headers["Content-Type"]),
            "css": (css.status, css.headers["Content-Type"]),
            "settings": await _json(await client.get("/api/settings")),  # routes are not shadowed by the files
            "leak": (await client.get("/assets/leak.txt")).status,
            "up": (await client.get("/..%2Fsecret.txt")).status,
            "listing": (await client.get("/assets/")).status,
        }

    got = run(tmp_path / "user", check, static=root)
    assert got["index"] == (200, "<!doctype html><title>editor</title>", "no-store, must-revalidate")
    assert got["script"][0] == 200 and "javascript" in got["script"][1]
    assert got["css"] == (200, "text/css; charset=utf-8")
    assert got["settings"] == {}
    assert got["leak"] in (403, 404) and got["up"] in (403, 404) and got["listing"] in (403, 404)
