"""Samplers and schedulers a plugin registers are valid everywhere: validation, `graphrun nodes`, the JSON
Schema, ComfyUI import and export, and real runs; the engine's live choice lists stay generic and torch-free."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import yaml
from PIL import Image

from graphrun.engine.cli import main
from graphrun.engine.node import Choices, make_registry, node
from graphrun.nodes.sampling import registry as sampling_registry
from graphrun.nodes.sampling.registry import register_sampler, register_scheduler, sampler_names, scheduler_names

ROOT = Path(__file__).parent.parent

PLUGIN = textwrap.dedent('''
    """A plugin adding one sampler and one scheduler through graphrun's public registration API."""
    from graphrun.nodes.sampling.registry import register_sampler, register_scheduler


    @register_sampler("plugin_euler")
    def sample_plugin_euler(model, x, sigmas, *, seed, callback=None, model_sampling=None, **options):
        """Euler, reached through a plugin (delegates to the built-in)."""
        from graphrun.nodes.sampling.samplers import get_sampler

        return get_sampler("euler")(model, x, sigmas, seed=seed, callback=callback, model_sampling=model_sampling,
                                    **options)


    @register_scheduler("plugin_linear")
    def plugin_linear(model_sampling, steps):
        """steps+1 sigmas evenly spaced from sigma_max down to 0."""
        import torch

        return torch.linspace(float(model_sampling.sigma_max), 0.0, steps + 1)
''')


@pytest.fixture(autouse=True)
def restore_sampling_registries():
    """Registration is process-wide: put the tables back as they were so other tests see the built-ins only."""
    import graphrun.nodes.sampling.samplers  # noqa: F401  (load the built-ins first: they must survive the restore)
    tables = (sampling_registry.SAMPLERS, sampling_registry.SCHEDULERS, sampling_registry.DISCARD_PENULTIMATE_SIGMA_SAMPLERS)
    saved = [copy.copy(t) for t in tables]
    yield
    for table, before in zip(tables, saved):
        table.clear()
        table.update(before)


@pytest.fixture
def plugin(tmp_path) -> Path:
    path = tmp_path / "my_samplers.py"
    path.write_text(PLUGIN)
    return path


def graph(tmp_path: Path, sampler: str = "plugin_euler", scheduler: str = "plugin_linear", **sample) -> Path:
    doc = {
        "graph": "plugin",
        "nodes": {
            "zimage": {"type": "LoadZImage", "path": "tiny"},
            "positive": {"type": "TextEncode", "clip": "zimage.clip", "text": "a fox"},
            "negative": {"type": "ConditioningZeroOut", "conditioning": "positive"},
            "empty": {"type": "EmptyLatent", "width": 64, "height": 64},
            "sample": {"type": "Sampler", "model": "zimage.model", "positive": "positive", "negative": "negative",
                       "latent": "empty", "seed": 3, "steps": 2, "cfg": 1.0, "sampler": sampler,
                       "scheduler": scheduler, **sample},
            "decode": {"type": "VAEDecode", "vae": "zimage.vae", "latent": "sample"},
            "save": {"type": "SaveImage", "images": "decode", "filename_prefix": f"{sampler}-{scheduler}"},
        },
    }
    path = tmp_path / f"{sampler}-{scheduler}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --- the registries ---------------------------------------------------------------------------------------------


def test_every_builtin_name_has_a_function_in_comfyui_order():
    """The torch-free name lists (what validation offers) agree with the functions the sampler modules register."""
    from graphrun.nodes.sampling.samplers import SAMPLERS
    from graphrun.nodes.sampling.schedules import SCHEDULERS

    assert list(SAMPLERS)[: len(sampling_registry.BUILTIN_SAMPLERS)] == list(sampling_registry.BUILTIN_SAMPLERS)
    assert list(SCHEDULERS) == list(sampling_registry.BUILTIN_SCHEDULERS) == scheduler_names()
    assert sampler_names() == list(SAMPLERS)


def test_a_plugin_sampler_and_scheduler_are_appended_to_the_names(plugin):
    make_registry([plugin])
    assert sampler_names()[-1] == "plugin_euler" and sampler_names()[0] == "euler"
    assert scheduler_names()[-1] == "plugin_linear"
    make_registry([plugin])  # loading the same plugin file again re-registers the same definitions: fine
    assert sampler_names().count("plugin_euler") == 1


def test_duplicate_names_are_errors_naming_both_definitions(tmp_path, plugin):
    make_registry([plugin])
    again = tmp_path / "other_plugin.py"
    again.write_text(PLUGIN.replace("plugin_linear\")", "plugin_linear_2\")"))
    with pytest.raises(Exception, match=r"sampler 'plugin_euler' is already registered by sample_plugin_euler \("
                                        + str(plugin).replace("\\", "\\\\") + r":\d+\); sample_plugin_euler \("
                                        + str(again).replace("\\", "\\\\") + r":\d+\) cannot register it again"):
        make_registry([again])

    def sample_euler(model, x, sigmas, *, seed, callback=None, model_sampling=None):
        """A second euler."""

    with pytest.raises(ValueError, match=r"sampler 'euler' is already registered by sample_euler \(.*classic\.py:\d+\);"
                                         r" .*sample_euler \(.*test_plugin_samplers\.py:\d+\) cannot register"):
        register_sampler("euler")(sample_euler)

    def simple(model_sampling, steps):
        """A second simple."""

    with pytest.raises(ValueError, match=r"scheduler 'simple' is already registered by simple_scheduler \(.*schedules\.py"):
        register_scheduler("simple")(simple)


def test_a_docstring_is_required():
    with pytest.raises(ValueError, match=r"sampler 'undocumented' \(.*\) needs a docstring"):
        register_sampler("undocumented")(lambda model, x, sigmas, *, seed, callback=None, model_sampling=None: x)
    with pytest.raises(ValueError, match=r"scheduler 'undocumented' \(.*\) needs a docstring"):
        register_scheduler("undocumented")(lambda model_sampling, steps: None)


def test_a_builtin_name_is_reserved_before_its_function_is_imported():
    """Validation runs without the torch sampler modules; a plugin still cannot take a built-in name."""
    code = textwrap.dedent('''
        import sys
        from graphrun.nodes.sampling.registry import register_sampler, sampler_names
        def sample_mine(model, x, sigmas, *, seed, callback=None, model_sampling=None):
            """Mine."""
        try:
            register_sampler("heun")(sample_mine)
        except ValueError as exc:
            print(exc)
        print("torch" in sys.modules, len(sampler_names()))
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("sampler 'heun' is a built-in sampler (graphrun.nodes.sampling.samplers); sample_mine ("), out
    assert lines[1] == f"False {len(sampling_registry.BUILTIN_SAMPLERS)}"


# --- validation, listing, schema --------------------------------------------------------------------------------


def test_validate_accepts_the_plugin_names_and_rejects_a_misspelling_with_did_you_mean(tmp_path, plugin, capsys):
    good = graph(tmp_path)
    assert main(["validate", str(good)]) == 2  # without the plugin the names are unknown
    err = capsys.readouterr().err
    assert "error[GR009] node 'sample' input 'sampler': value 'plugin_euler' is not one of the" in err
    assert main(["validate", str(good), "--plugin", str(plugin)]) == 0

    bad = graph(tmp_path, sampler="plugin_eulr", scheduler="plugin_lineer")
    assert main(["validate", str(bad), "--plugin", str(plugin)]) == 2
    err = capsys.readouterr().err
    n = len(sampling_registry.BUILTIN_SAMPLERS) + 1
    assert (f"error[GR009] node 'sample' input 'sampler': value 'plugin_eulr' is not one of the {n} choices of "
            "Sampler.sampler (hint: did you mean 'plugin_euler'? (`graphrun nodes Sampler` lists the choices))") in err
    assert ("error[GR009] node 'sample' input 'scheduler': value 'plugin_lineer' is not one of the 10 choices of "
            "Sampler.scheduler (hint: did you mean 'plugin_linear'? (`graphrun nodes Sampler` lists the choices))") in err


def test_graphrun_nodes_lists_the_plugin_names(plugin, capsys):
    assert main(["nodes", "Sampler"]) == 0
    assert "plugin_euler" not in capsys.readouterr().out
    for name in ("Sampler", "SamplerAdvanced", "KSamplerSelect", "BasicScheduler"):
        assert main(["nodes", name, "--plugin", str(plugin)]) == 0
        out = capsys.readouterr().out
        assert ("'plugin_euler'" in out) == (name != "BasicScheduler"), name
        assert ("'plugin_linear'" in out) == (name != "KSamplerSelect"), name


def test_schema_enum_includes_the_plugin_names(plugin, capsys):
    assert main(["schema", "--plugin", str(plugin)]) == 0
    schema = json.loads(capsys.readouterr().out)
    nodes = {s["title"]: s for s in schema["properties"]["nodes"]["additionalProperties"]["oneOf"]}
    enum = nodes["Sampler"]["properties"]["sampler"]["anyOf"][0]["enum"]
    assert enum == sampler_names() and enum[-1] == "plugin_euler"
    assert nodes["BasicScheduler"]["properties"]["scheduler"]["anyOf"][0]["enum"][-1] == "plugin_linear"


def test_validate_with_a_sampler_node_does_not_import_torch():
    code = (
        "import sys\nfrom graphrun.engine.cli import main\n"
        f"rc = main(['validate', {str(ROOT / 'graphs' / 'zimage_turbo.yaml')!r}])\n"
        "print('torch' in sys.modules, rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False 0", out.stderr


# --- the generic engine mechanism ------------------------------------------------------------------------------


COLOURS: list[str] = []


@node("Paint", category="test", output=True)
def paint(colour: Annotated[str, Choices(lambda: COLOURS)] = "red") -> None:
    """Paint in a registered colour."""


def test_choices_follow_their_provider_at_every_use():
    """`Annotated[str, Choices(provider)]` knows nothing about samplers: any registry works."""
    from graphrun.engine.graph import load_document
    from graphrun.engine.node import Registry
    from graphrun.engine.schema import node_schema
    from graphrun.engine.validate import check

    colours = COLOURS
    colours[:] = ["red"]

    reg = Registry()
    reg.add(paint.__graphrun_node__)
    doc = load_document("nodes:\n  p: {type: Paint, colour: blue}\n")
    _, diags = check(doc, reg)
    assert [d.code for d in diags if d.is_error] == ["GR009"]
    colours.append("blue")  # registered after the node was declared
    graph_, diags = check(doc, reg)
    assert not [d for d in diags if d.is_error] and graph_.nodes["p"].literals["colour"] == "blue"
    assert node_schema(paint.__graphrun_node__)["properties"]["colour"]["anyOf"][0]["enum"] == ["red", "blue"]
    colours.clear()
    _, diags = check(doc, reg)
    assert "no values are available" in next(d.message for d in diags if d.is_error)


# --- running, ComfyUI import and export -------------------------------------------------------------------------


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_the_plugin_sampler_runs_and_matches_euler(tmp_path, plugin):
    import torch

    import graphrun

    reg = make_registry([plugin])
    runner = graphrun.Runner(graphrun.RunOptions(output_dir=tmp_path / "out"))
    ours = graphrun.load(graph(tmp_path, "plugin_euler", "simple"), registry=reg, runner=runner).run()
    euler = graphrun.load(graph(tmp_path, "euler", "simple"), registry=reg, runner=runner).run()
    assert np.array_equal(pixels(ours.files[0]), pixels(euler.files[0]))
    linear = graphrun.load(graph(tmp_path, "plugin_euler", "plugin_linear"), registry=reg, runner=runner).run()
    assert not np.array_equal(pixels(linear.files[0]), pixels(euler.files[0]))  # the schedule matters: not vacuous

    from graphrun.nodes.sampling.schedules import FlowModelSampling, basic_scheduler_sigmas

    sigmas = basic_scheduler_sigmas(FlowModelSampling(3.0), "plugin_linear", 4)
    assert torch.equal(sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_comfy_api_and_ui_workflows_naming_plugin_names_import(tmp_path, plugin):
    from graphrun.engine.comfy_bridge import convert_file
    from graphrun.engine.graph import document_from_data
    from graphrun.engine.validate import check

    reg = make_registry([plugin])
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors",
                                                     "weight_dtype": "default"}},
        "4": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "plugin_euler"}},
        "8": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": "plugin_linear",
                                                         "steps": 4, "denoise": 1.0}},
    }
    api = tmp_path / "api.json"
    api.write_text(json.dumps(prompt))
    nodes = convert_file(api, reg).document["nodes"]
    assert {body["type"]: body.get("sampler", body.get("scheduler")) for body in nodes.values()
            if body["type"] in ("KSamplerSelect", "BasicScheduler")} == {"KSamplerSelect": "plugin_euler",
                                                                         "BasicScheduler": "plugin_linear"}

    ui = json.loads((ROOT / "tests" / "data" / "comfy" / "templates" / "image_z_image_turbo.json").read_text())
    ksamplers = [n for n in ui["nodes"] if n.get("type") == "KSampler"]
    for sub in ui.get("definitions", {}).get("subgraphs", []):
        ksamplers += [n for n in sub["nodes"] if n.get("type") == "KSampler"]
    assert ksamplers
    for n in ksamplers:
        n["widgets_values"][4:6] = ["plugin_euler", "plugin_linear"]
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(ui))
    doc = convert_file(path, reg).document
    sample = next(body for body in doc["nodes"].values() if body["type"] == "Sampler")
    assert (sample["sampler"], sample["scheduler"]) == ("plugin_euler", "plugin_linear")
    _, diags = check(document_from_data(doc), reg)
    assert not [d.format() for d in diags if d.is_error and d.code == "GR009"]


def test_export_writes_the_plugin_names(tmp_path, plugin):
    out = tmp_path / "api.json"
    assert main(["export", str(graph(tmp_path)), "-o", str(out), "--plugin", str(plugin)]) == 0
    prompt = json.loads(out.read_text())
    ksampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")
    assert (ksampler["inputs"]["sampler_name"], ksampler["inputs"]["scheduler"]) == ("plugin_euler", "plugin_linear")


def test_the_readme_sampler_and_scheduler_examples_work(tmp_path):
    """README "Adding a sampler": the example plugin loads, validates and reproduces euler exactly."""
    import re

    import torch

    import graphrun

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    sampler_block = next(b for b in blocks if "@register_sampler(" in b)
    scheduler_block = next(b for b in blocks if "@register_scheduler(" in b)
    path = tmp_path / "my_sampler.py"
    path.write_text(sampler_block + "\n\n" + scheduler_block)
    reg = make_registry([path])
    runner = graphrun.Runner(graphrun.RunOptions(output_dir=tmp_path / "out"))
    ours = graphrun.load(graph(tmp_path, "my_euler", "simple"), registry=reg, runner=runner).run()
    euler = graphrun.load(graph(tmp_path, "euler", "simple"), registry=reg, runner=runner).run()
    assert np.array_equal(pixels(ours.files[0]), pixels(euler.files[0]))

    from graphrun.nodes.sampling.schedules import FlowModelSampling, basic_scheduler_sigmas

    assert torch.equal(basic_scheduler_sigmas(FlowModelSampling(3.0), "my_linear", 2), torch.tensor([1.0, 0.5, 0.0]))
