"""graphrun's PNGs and output files: re-running a PNG with its params, the ComfyUI `workflow` chunk (API -> UI and
back), LoadZImage as ComfyUI loaders, file permissions, stale temporary files, output problems found at
validation, and LoadImage's pixel limit and unreadable files."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

import graphrun
from graphrun.engine.cli import main
from graphrun.engine.comfy.api_to_ui import TITLE_HEIGHT, api_to_ui, node_boxes
from graphrun.engine.comfy.export import graph_to_api
from graphrun.engine.comfy.formats import load_workflow
from graphrun.engine.comfy.png import png_info_for, read_png_chunks
from graphrun.engine.comfy.specs import known_class_types, spec_lookup
from graphrun.engine.comfy.ui_to_api import ui_to_api
from graphrun.engine.comfy_bridge import convert_file, load_any, without_file_checks
from graphrun.engine.graph import document_from_data, load_document
from graphrun.engine.node import builtin_registry
from graphrun.engine.validate import check
from graphrun.nodes import image as image_nodes

ROOT = Path(__file__).parent.parent
GRAPHS = ROOT / "graphs"
COMFY = ROOT / "tests" / "data" / "comfy"
TURBO = GRAPHS / "zimage_turbo.yaml"
IMG2IMG = GRAPHS / "zimage_img2img.yaml"
REG = builtin_registry()
NO_FILE_CHECKS = without_file_checks(REG)
SMALL = ["--set", "width=64", "--set", "height=64", "--set", "steps=1", "--progress", "none"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def record(png: Path) -> dict[str, Any]:
    return json.loads(read_png_chunks(png)["graphrun"])


def pixels(png: Path) -> np.ndarray:
    with Image.open(png) as img:
        return np.asarray(img.convert("RGB"))


def spawn_temp_writers(folder: Path, count: int) -> list[tuple[subprocess.Popen, Path]]:
    """Processes that each open a temporary PNG file the way SaveImage does, write part of it and wait."""
    code = ("import os, sys, time\nfrom pathlib import Path\nfrom graphrun.nodes import image\n"
            "fd, path = image._open_temp(Path(sys.argv[1]))\nos.write(fd, b'\\x89PNG partial')\n"
            "print(path, flush=True)\ntime.sleep(120)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
             for _ in range(count)]
    started = []
    for proc in procs:
        line = proc.stdout.readline().strip()
        assert line, "the writer process did not start"
        started.append((proc, Path(line)))
    return started


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One run of zimage_turbo (64x64, 1 step) under umask 022 into a folder where a killed save left its
    temporary file, next to files that only look similar and one a live process is writing."""
    out = tmp_path_factory.mktemp("saved")
    (killed, stale), (live, in_use) = spawn_temp_writers(out, 2)
    killed.send_signal(signal.SIGKILL)  # killed in the middle of a save
    killed.wait()
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))  # left by an earlier run
    os.utime(in_use, (hour_ago, hour_ago))  # an old file, but its writer is still alive
    decoys = [out / ".graphrun-notes.txt", out / "mine.png.part", out / f"{stale.name}.bak",
              out / ".graphrun-1-abc.png.part.keep", out / ".graphrun-x.png"]
    for decoy in decoys:
        decoy.write_bytes(b"not graphrun's temporary file")
        os.utime(decoy, (hour_ago, hour_ago))
    link = out / ".graphrun-99999999-abcdef.png.part"
    link.symlink_to(decoys[0])
    previous = os.umask(0o022)
    try:
        code = main([str(TURBO), *SMALL, "--set", "prefix=rt", "--out", str(out)])
    finally:
        os.umask(previous)
        live.kill()
        live.wait()
    assert code == 0
    return {"png": out / "rt_00001_.png", "out": out, "stale": stale, "in_use": in_use, "decoys": decoys,
            "link": link}


# --- 1. re-running a graphrun PNG keeps its params ----------------------------------------------------------------


def test_rerun_of_a_png_keeps_its_params_and_takes_set(saved, tmp_path, capsys):
    png = saved["png"]
    assert record(png)["params"]["width"] == 64 and record(png)["params"]["seed"] == 0
    code, out, err = run_cli(capsys, str(png), "--set", "seed=5", "--progress", "none", "--out", str(tmp_path))
    assert code == 0, err
    again = Path(out.strip())
    params = record(again)["params"]
    assert params["seed"] == 5 and (params["width"], params["height"], params["steps"]) == (64, 64, 1)
    assert params["prefix"] == "rt" and again.name == "rt_00001_.png"
    assert record(again)["comfy"] == record(png)["comfy"] == "0.33"
    assert pixels(again).shape == (64, 64, 3) and not np.array_equal(pixels(again), pixels(png))
    # the document is the graph itself, with the params used as defaults: validate, --set, convert, Python
    code, _, err = run_cli(capsys, "validate", str(png), "--set", "steps=2", "--set", "prompt=a cat")
    assert code == 0, err
    code, _, err = run_cli(capsys, "validate", str(png), "--set", "nosuch=1")
    assert code == 2 and "nosuch" in err and "seed" in err
    graph = graphrun.load(png)
    assert graph.params["seed"].default == 0 and graph.params["width"].default == 64
    assert graph.bind(seed=9).nodes["sample"].literals["seed"] == 9
    code, _, err = run_cli(capsys, "convert", str(png), "-o", str(tmp_path / "back.yaml"))
    assert code == 0, err
    back = yaml.safe_load((tmp_path / "back.yaml").read_text())
    assert back["nodes"]["sample"]["seed"] == "$seed" and back["params"]["height"]["default"] == 64


def test_pngs_without_a_usable_graphrun_chunk_fall_back_to_comfyui_chunks(saved, tmp_path, capsys):
    chunks = read_png_chunks(saved["png"])
    prompt, workflow = json.loads(chunks["prompt"]), json.loads(chunks["workflow"])
    comfy_png, broken_png = tmp_path / "comfyui.png", tmp_path / "broken.png"
    Image.new("RGB", (8, 8)).save(comfy_png, pnginfo=png_info_for(prompt, workflow))
    info = png_info_for(prompt, workflow)
    info.add_text("graphrun", "{not json")
    Image.new("RGB", (8, 8)).save(broken_png, pnginfo=info)
    document = load_any(comfy_png, REG)  # a ComfyUI PNG: what ran, from the prompt chunk
    assert not document.params and document.nodes["sample"].inputs["seed"] == 0
    broken = load_any(broken_png, REG)
    assert any("'graphrun' chunk is not valid JSON" in d.message for d in broken.problems)
    code, _, err = run_cli(capsys, "validate", str(broken_png))
    assert code == 0 and "not valid JSON" in err


# --- 2. the ComfyUI `workflow` chunk ------------------------------------------------------------------------------


def comparable(prompt: dict[str, Any]) -> dict[str, Any]:
    """What the UI round trip must keep: each node's type, inputs and title."""
    return {k: (n["class_type"], n["inputs"], n["_meta"]["title"]) for k, n in prompt.items()}


def ui_back(workflow: dict[str, Any]) -> dict[str, Any]:
    prompt, warnings = ui_to_api(json.loads(json.dumps(workflow)), spec_lookup(REG), known=known_class_types(REG))
    assert not warnings, [w.message for w in warnings]
    return prompt


def assert_drawable(workflow: dict[str, Any]) -> None:
    """ComfyUI's format, links consistent at both ends, left-to-right columns, no two nodes overlapping."""
    assert workflow["version"] == 0.4 and workflow["groups"] == [] and isinstance(workflow["extra"], dict)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    assert workflow["last_node_id"] == max(nodes) and workflow["last_link_id"] == len(workflow["links"])
    for link_id, origin, slot, target, target_slot, kind in workflow["links"]:
        assert link_id in nodes[origin]["outputs"][slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[origin]["pos"][0] + nodes[origin]["size"][0] < nodes[target]["pos"][0]
    for node in nodes.values():
        assert {"id", "type", "pos", "size", "widgets_values", "inputs", "outputs", "mode", "order"} <= set(node)
        assert node["pos"][1] >= TITLE_HEIGHT
    for (a, box_a), (b, box_b) in itertools.combinations(node_boxes(workflow).items(), 2):
        apart = box_a[2] <= box_b[0] or box_b[2] <= box_a[0] or box_a[3] <= box_b[1] or box_b[3] <= box_a[1]
        assert apart, f"nodes {a} and {b} overlap"


IMPORTED = [COMFY / "legacy-zimage-3stage.api.json", COMFY / "templates" / "image_z_image_turbo.json",
            COMFY / "templates" / "utility_z_image_turbo_2k_upscaler.app.json", COMFY / "ui" / "subgraph_nested.json",
            *sorted((COMFY / "v0.18.1" / "pipeline_extra").glob("e1[0-3]*/workflow.api.json"))]


@pytest.mark.parametrize("path", sorted(GRAPHS.glob("*.yaml")) + IMPORTED, ids=lambda p: p.parent.name + "/" + p.name)
def test_ui_workflow_imports_back_to_the_same_prompt(path):
    document = load_document(path) if path.suffix == ".yaml" else document_from_data(convert_file(path, REG).document)
    graph, diagnostics = check(document, NO_FILE_CHECKS, {})
    assert graph is not None, [d.format() for d in diagnostics]
    prompt = json.loads(json.dumps(graph_to_api(graph)))
    workflow = api_to_ui(prompt, REG)
    assert comparable(ui_back(workflow)) == comparable(prompt)
    assert_drawable(workflow)


def test_saved_png_opens_as_a_comfyui_workflow(saved):
    chunks = read_png_chunks(saved["png"])
    workflow, prompt = json.loads(chunks["workflow"]), json.loads(chunks["prompt"])
    assert load_workflow(saved["png"]).ui == workflow  # ComfyUI's reader finds it where ComfyUI puts it
    assert comparable(ui_back(workflow)) == comparable(prompt)
    assert_drawable(workflow)
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
    assert sampler["widgets_values"] == [0, "fixed", 1, 1.0, "res_multistep", "simple", 1.0]


@pytest.mark.parametrize("text", ["see https://example.org // not a comment", "{red|blue} fox", "literal \\{ brace",
                                  "two\nlines /* kept */", "a | b {c}"])
def test_frontend_text_transforms_cannot_change_exported_values(text):
    base = yaml.safe_load(TURBO.read_text())
    base["nodes"]["positive"]["text"] = text.replace("$", "$$")
    base["nodes"]["save"]["filename_prefix"] = "%date:yyyy%/" + text.split()[0].strip("{}/\\|")
    graph, diagnostics = check(document_from_data(base), NO_FILE_CHECKS, {})
    assert graph is not None, [d.format() for d in diagnostics]
    prompt = json.loads(json.dumps(graph_to_api(graph)))
    assert comparable(ui_back(api_to_ui(prompt, REG))) == comparable(prompt)


def test_export_format_ui_writes_a_workflow_that_converts_back(tmp_path, capsys):
    ui_file = tmp_path / "turbo.ui.json"
    code, _, err = run_cli(capsys, "export", str(TURBO), "--set", "seed=3", "--format", "ui", "-o", str(ui_file))
    assert code == 0, err
    workflow = json.loads(ui_file.read_text())
    assert_drawable(workflow)
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
    assert sampler["widgets_values"][:2] == [3, "fixed"]
    code, _, err = run_cli(capsys, "convert", str(ui_file), "-o", str(tmp_path / "turbo.yaml"))
    assert code == 0, err


# --- 3. LoadZImage as ComfyUI's loaders ----------------------------------------------------------------------------


def test_load_zimage_exports_as_comfyui_loaders_that_give_the_same_image(saved, tmp_path, capsys):
    api = tmp_path / "turbo.api.json"
    code, _, err = run_cli(capsys, "export", str(TURBO), *SMALL[:-2], "--set", "prefix=rt", "-o", str(api))
    assert code == 0 and "warning" not in err, err  # path: tiny translates exactly, silently
    prompt = json.loads(api.read_text())
    loaders = {n["class_type"]: n["inputs"] for n in prompt.values() if n["class_type"].endswith("Loader")}
    assert "LoadZImage" not in {n["class_type"] for n in prompt.values()}
    assert loaders == {"UNETLoader": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"},
                       "CLIPLoader": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2", "device": "default"},
                       "VAELoader": {"vae_name": "ae.safetensors"}}
    code, out, err = run_cli(capsys, str(api), "--progress", "none", "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert np.array_equal(pixels(Path(out.strip())), pixels(saved["png"]))


def test_export_names_what_comfyui_cannot_load_in_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", str(TURBO), "--set", "model=/models/Z-Image-Turbo")
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(lines) == 1
    assert "'zimage' (LoadZImage" in lines[0] and "z_image_turbo_bf16.safetensors" in lines[0]
    plugin = tmp_path / "invert.py"
    plugin.write_text(
        "from graphrun import node\nfrom graphrun.nodes.types import Latent\n\n"
        "@node('LatentFlip', category='latent')\ndef latent_flip(latent: Latent, amount: float = 1.0) -> Latent:\n"
        "    '''Flip a latent.'''\n    return latent\n"
    )
    graph = yaml.safe_load(TURBO.read_text())
    graph["nodes"]["flip"] = {"type": "LatentFlip", "latent": "empty", "amount": 0.5}
    graph["nodes"]["sample"]["latent"] = "flip"
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(graph))
    code, out, err = run_cli(capsys, "export", str(tmp_path / "g.yaml"), "--plugin", str(plugin))
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(lines) == 1 and "'flip' (LatentFlip)" in lines[0] and "missing node" in lines[0]
    assert any(n["class_type"] == "LatentFlip" for n in json.loads(out).values())


# --- 4. permissions -------------------------------------------------------------------------------------------------


def test_outputs_get_ordinary_permissions(saved, tmp_path, capsys):
    assert (saved["png"].stat().st_mode & 0o777) == 0o644  # umask 022
    previous = os.umask(0o027)
    try:
        path, _ = image_nodes.write_png_exclusive(np.zeros((4, 4, 3), np.uint8), tmp_path, "p", 1, None, 1)
        code, _, _ = run_cli(capsys, "export", str(TURBO), "-o", str(tmp_path / "x.api.json"))
    finally:
        os.umask(previous)
    assert code == 0
    assert (path.stat().st_mode & 0o777) == 0o640 and ((tmp_path / "x.api.json").stat().st_mode & 0o777) == 0o640


# --- 5. stale temporary files -------------------------------------------------------------------------------------


def test_a_killed_saves_temporary_file_is_removed_and_nothing_else(saved):
    assert saved["png"].is_file()
    assert not saved["stale"].exists()  # graphrun's, its writer killed, older than the run: gone
    assert saved["in_use"].exists()  # its writer is alive
    assert all(d.exists() for d in saved["decoys"]) and saved["link"].is_symlink()
    leftovers = {p.name for p in saved["out"].glob(".graphrun-*.part")}
    assert leftovers == {saved["in_use"].name, saved["link"].name}


# --- 6. output problems at validation -----------------------------------------------------------------------------

BAD_PREFIXES = ["../escape", "a/../../escape", "/tmp/abs", "", "   ", "x" * 250, "d/" + "y" * 256 + "/f", "CON/x",
                "sub/", ".", "a/..", "a/b/../../../escape", "~/pictures/x", "n/aux.txt"]


@pytest.mark.parametrize("prefix", BAD_PREFIXES, ids=range(len(BAD_PREFIXES)))
def test_bad_filename_prefix_fails_validation_before_anything_runs(prefix, tmp_path, capsys):
    graph = yaml.safe_load(TURBO.read_text())
    graph["nodes"]["save"]["filename_prefix"] = prefix  # a literal in the file (--set refuses some, like NUL)
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(graph))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", str(path), "--out", str(out))
    errors = [line for line in err.splitlines() if "error[" in line]
    assert code == 2 and len(errors) == 1 and "GR018" in errors[0], err
    assert "node 'save' input 'filename_prefix'" in errors[0]
    assert not out.exists()
    code, _, err = run_cli(capsys, "validate", str(path))
    assert code == 2 and "filename_prefix" in err
    assert any(d.code == "GR018" for d in graphrun.load(TURBO).validate(prefix=prefix))  # from Python too


def test_prefix_with_a_nul_byte_is_refused():
    # Documents and --set refuse NUL characters already; a prefix computed at run time is checked too.
    assert "NUL" in image_nodes.prefix_problem("a\0b")[0]
    with pytest.raises(ValueError, match="NUL"):
        image_nodes.save_path(Path("out"), "a\0b", 64, 64)


def test_prefix_built_from_a_param_is_checked_after_substitution(tmp_path, capsys):
    graph = yaml.safe_load(TURBO.read_text())
    graph["params"]["run"] = {"type": "STRING", "default": "one"}
    graph["nodes"]["save"]["filename_prefix"] = "runs/${run}/img"
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(graph))
    code, _, err = run_cli(capsys, "validate", str(tmp_path / "g.yaml"), "--set", "run=../../..")
    assert code == 2 and "outside the output folder" in err
    code, _, err = run_cli(capsys, "validate", str(tmp_path / "g.yaml"), "--set", "run=two")
    assert code == 0, err


def test_unusable_output_folder_fails_validation(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, words in [(a_file, "is an existing file"), (a_file / "sub", "which is a file")]:
        code, _, err = run_cli(capsys, "run", str(TURBO), "--out", str(out))
        assert code == 2 and "GR018" in err and words in err, err
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "taken").write_text("x")
    code, _, err = run_cli(capsys, "run", str(TURBO), "--set", "prefix=taken/img", "--out", str(tmp_path / "o"))
    assert code == 2 and "taken' is an existing file" in err
    deep = "/".join(["d" * 200] * 21) + "/img"  # every name short enough, the whole path not
    code, _, err = run_cli(capsys, "run", str(TURBO), "--set", f"prefix={deep}", "--out", str(tmp_path / "o"))
    assert code == 2 and "longer than the 4095 a path may have" in err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["taken"]


def test_read_only_output_folder_fails_validation(capsys):
    base = Path(tempfile.mkdtemp(prefix="graphrun-ro-"))
    os.chmod(base, 0o755)
    read_only = base / "ro"
    read_only.mkdir(mode=0o555)
    os.chmod(read_only, 0o555)
    graph = base / TURBO.name  # readable by the child below even when the checkout is private (mode 0700)
    shutil.copy(TURBO, graph)
    os.chmod(graph, 0o644)
    argv = ["run", str(graph), "--out", str(read_only / "out")]
    try:
        if os.geteuid() != 0:
            code, _, err = run_cli(capsys, *argv)
        else:  # root writes anywhere: check as an ordinary user, in a child that drops root
            # Import everything the run's validation needs while still root: the child may not read the checkout.
            assert run_cli(capsys, *argv, "--set", "steps=0")[0] == 2
            code, err = _as_nobody(argv)
    finally:
        os.chmod(read_only, 0o755)
    assert code == 2 and "read-only" in err and str(read_only) in err, err
    assert not (read_only / "out").exists()


def _as_nobody(argv: list[str]) -> tuple[int, str]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: validation only, nothing heavy
        code = 99
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            sys.stderr = stream = __import__("io").StringIO()
            code = main(argv)
            os.write(write, stream.getvalue().encode())
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.time() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the unprivileged check did not finish")
        time.sleep(0.05)
    with os.fdopen(read) as stream:
        err = stream.read()
    return os.waitstatus_to_exitcode(status), err


# --- 7. LoadImage: pixel limit, unreadable files -------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height: a few hundred bytes that would decode to gigabytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * min(width, 64)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b""))
    return path


def test_image_over_the_pixel_limit_fails_validation_from_its_header(tmp_path, capsys, monkeypatch):
    bomb = bomb_png(tmp_path / "bomb.png", 12000, 12000)
    code, _, err = run_cli(capsys, "validate", str(IMG2IMG), "--set", f"image={bomb}")
    assert code == 2 and "node 'picture' input 'image'" in err and "12000x12000" in err, err
    assert "GRAPHRUN_MAX_IMAGE_PIXELS=144000000" in err
    smaller = bomb_png(tmp_path / "smaller.png", 2000, 2000)
    monkeypatch.setenv("GRAPHRUN_MAX_IMAGE_PIXELS", "1000000")
    code, _, err = run_cli(capsys, "validate", str(IMG2IMG), "--set", f"image={smaller}")
    assert code == 2 and "2000x2000" in err
    monkeypatch.setenv("GRAPHRUN_MAX_IMAGE_PIXELS", "5000000")  # allowed now: then its missing data shows
    code, _, err = run_cli(capsys, "validate", str(IMG2IMG), "--set", f"image={smaller}")
    assert code == 2 and "corrupt or truncated" in err and "2000x2000" not in err
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(small)
    monkeypatch.setenv("GRAPHRUN_MAX_IMAGE_PIXELS", "5000")
    code, _, err = run_cli(capsys, "validate", str(IMG2IMG), "--set", f"image={small}")
    assert code == 2 and "100x100" in err
    monkeypatch.setenv("GRAPHRUN_MAX_IMAGE_PIXELS", "0")
    code, _, err = run_cli(capsys, "validate", str(IMG2IMG), "--set", f"image={small}")
    assert code == 0, err
    monkeypatch.setenv("GRAPHRUN_MAX_IMAGE_PIXELS", "lots")
    code, _, err = run_cli(capsys, "validate", str(IMG2IMG), "--set", f"image={small}")
    assert code == 2 and "GRAPHRUN_MAX_IMAGE_PIXELS='lots'" in err


def test_image_over_the_limit_is_refused_at_load_too(tmp_path, monkeypatch):
    from graphrun.engine.context import RunOptions
    from graphrun.engine.executor import NodeFailed, Runner

    small = tmp_path / "small.png"
    Image.new("RGB", (64, 64)).save(small)
    graph = graphrun.load(IMG2IMG, runner=Runner(RunOptions(output_dir=tmp_path / "out")))
    bound = graph.bind(image=str(small), steps=1)
    monkeypatch.setenv("GRAPHRUN_MAX_IMAGE_PIXELS", "1000")  # lowered after validation
    with pytest.raises(NodeFailed, match="GRAPHRUN_MAX_IMAGE_PIXELS"):
        graph.runner.run(bound)
    assert not (tmp_path / "out").exists()


def test_unreadable_images_fail_validation_naming_node_and_file(tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(good)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "good.jpg")
    data = good.read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    jpeg = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "text.png").write_text("not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    for name, words in [("half.png", "corrupt or truncated"), ("half.jpg", "corrupt or truncated"),
                        ("text.png", "not an image file"), ("empty.png", "not an image file")]:
        code, _, err = run_cli(capsys, "validate", str(IMG2IMG), "--set", f"image={tmp_path / name}")
        errors = [line for line in err.splitlines() if "error[" in line]
        assert code == 2 and len(errors) == 1, err
        assert "GR018" in errors[0] and "node 'picture'" in errors[0] and name in errors[0] and words in errors[0]
    code, _, err = run_cli(capsys, "validate", str(IMG2IMG), "--set", f"image={good}")
    assert code == 0, err
