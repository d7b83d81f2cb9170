"""The README's examples work as written."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

import graphrun
from graphrun.engine.context import RunOptions
from graphrun.engine.executor import Runner
from graphrun.engine.node import make_registry

README = (Path(__file__).parent.parent / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_plugin_example_runs(tmp_path):
    plugin = next(block for block in code_blocks("python") if "@node(" in block)
    path = tmp_path / "my_nodes.py"
    path.write_text(plugin)
    registry = make_registry([path])
    doc = {
        "nodes": {
            "zimage": {"type": "LoadZImage"},
            "empty": {"type": "EmptyLatent", "width": 64, "height": 64},
            "inverted": {"type": "LatentInvert", "latent": "empty", "amount": 1.0},
            "decode": {"type": "VAEDecode", "vae": "zimage.vae", "latent": "inverted"},
            "save": {"type": "SaveImage", "images": "decode", "filename_prefix": "inv"},
        }
    }
    result = graphrun.load(doc, registry=registry, runner=Runner(RunOptions(output_dir=tmp_path))).run()
    with Image.open(result.files[0]) as img:
        assert img.size == (64, 64)
        assert np.asarray(img).std() > 0


def test_readme_graph_example_validates():
    block = next(block for block in code_blocks("yaml") if block.startswith("graph: demo"))
    graph = graphrun.load(block)
    assert [d for d in graph.validate() if d.is_error] == []
    assert graph.bind(prompt="a cat").nodes["positive"].literals["text"] == "a photo of a cat"
