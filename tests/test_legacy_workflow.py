"""graphs/zimage_3stage.yaml is the user's ComfyUI workflow (legacy-zimage-3stage.api.json) node for
node: the same pixels as running the JSON, ComfyUI's own PNG within the parity criterion, and an
export with the JSON's class_types, values and wiring."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

import graphrun
from graphrun.engine.context import RunOptions
from graphrun.engine.executor import Runner

ROOT = Path(__file__).parent.parent
LEGACY = Path(__file__).parent / "data" / "comfy" / "legacy-zimage-3stage.api.json"
PIPELINE = Path(__file__).parent / "data" / "comfy" / "v0.18.1" / "pipeline"
USER_SETTINGS = {"lora": "hollyjai.safetensors", "trigger": "sunway, "}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_yaml_and_json_give_the_same_image_as_each_other_and_as_comfyui(tmp_path: Path) -> None:
    options = RunOptions(output_dir=tmp_path, extra={"models_dirs": [str(PIPELINE / "models")]})
    runner = Runner(options)
    (from_yaml,) = graphrun.load(ROOT / "graphs" / "zimage_3stage.yaml", runner=runner).run(**USER_SETTINGS).files
    (from_json,) = graphrun.load(LEGACY, runner=runner).run().files
    assert from_yaml != from_json  # two files, never overwritten
    assert np.array_equal(_pixels(from_yaml), _pixels(from_json))
    comfy = _pixels(PIPELINE / "p1_legacy_3stage" / "zimage" / "tweet_00001_.png")
    diff = np.abs(_pixels(from_yaml) - comfy)
    assert comfy.shape == (864, 672, 3)
    assert (diff == 0).mean() >= 0.999 and diff.max() <= 2


def _shape(api: dict) -> list[tuple]:
    """Each node as (class_type, literal inputs, linked inputs by (input, source class_type, slot))."""
    out = []
    for node in api.values():
        literals = {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
        links = sorted((k, api[v[0]]["class_type"], v[1]) for k, v in node["inputs"].items() if isinstance(v, list))
        out.append((node["class_type"], json.dumps(literals, sort_keys=True), links))
    return sorted(out)


def test_export_gives_the_workflow(tmp_path: Path) -> None:
    from graphrun.engine.comfy.export import graph_to_api

    runner = Runner(RunOptions(output_dir=tmp_path, extra={"models_dirs": [str(PIPELINE / "models")]}))
    graph = graphrun.load(ROOT / "graphs" / "zimage_3stage.yaml", runner=runner).bind(**USER_SETTINGS)
    assert _shape(graph_to_api(graph)) == _shape(json.loads(LEGACY.read_text()))


def test_no_lora_by_default() -> None:
    """The LoRA is optional: the shipped default '' (and 'none') passes model and clip through, without
    reading any file."""
    from graphrun.nodes.models import load_lora

    graph = graphrun.load(ROOT / "graphs" / "zimage_3stage.yaml")
    assert graph.params["lora"].default == "" and graph.params["lora_strength"].default == 0.8
    assert [d for d in graph.validate() if d.is_error] == []
    model, clip = object(), object()
    for name in ("", "none", " None "):
        out = load_lora(None, model, name, 0.8, clip, 1.0)
        assert out[0] is model and out[1] is clip
