"""End-to-end runs of the shipped graphs and the Z-Image nodes on the tiny model."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import graphrun
from graphrun.engine.context import RunOptions
from graphrun.engine.diagnostics import GraphError
from graphrun.engine.executor import NodeFailed, Runner
from graphrun.engine.graph import load_document
from graphrun.engine.node import CheckEnv, builtin_registry
from graphrun.engine.validate import check

ROOT = Path(__file__).parent.parent
GRAPHS = ROOT / "graphs"

torch.set_num_threads(1)


def runner(out: Path, **extra) -> Runner:
    return Runner(RunOptions(output_dir=out, extra=extra))


def run(graph: str | dict, out: Path, runner_: Runner | None = None, **params):
    g = graphrun.load(GRAPHS / graph if isinstance(graph, str) else graph, runner=runner_ or runner(out))
    return g.run(**params)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def single_stage(**overrides) -> dict:
    """A small single-stage graph (64x64, 2 steps) for the LoRA and loader tests."""
    doc = yaml.safe_load((GRAPHS / "zimage_lora.yaml").read_text())
    doc["params"]["width"]["default"] = 64
    doc["params"]["height"]["default"] = 64
    doc["nodes"]["sample"]["steps"] = 2
    for key, value in overrides.items():
        doc["nodes"][key] = value
    return doc


@pytest.fixture(scope="module")
def three_stage(tmp_path_factory):
    out = tmp_path_factory.mktemp("three")
    r = runner(out)
    first = run("zimage_3stage.yaml", out, r, prompt="a red fox")
    return out, r, first


def test_three_stage_writes_672x864_png(three_stage):
    out, _, first = three_stage
    assert first.files == [out / "zimage" / "tweet_00001_.png"]
    with Image.open(first.files[0]) as img:
        assert img.size == (672, 864)
        assert img.mode == "RGB"
        assert "graphrun" in img.text
    assert set(first.seconds) >= {"stage1", "stage2", "stage3", "decode"}


def test_same_seed_gives_identical_png_bytes_and_another_seed_differs(three_stage, tmp_path):
    out, _, first = three_stage
    again = run("zimage_3stage.yaml", tmp_path / "a", prompt="a red fox")
    assert again.files[0].read_bytes() == first.files[0].read_bytes()
    other = run("zimage_3stage.yaml", tmp_path / "b", prompt="a red fox", seed=43)
    assert not np.array_equal(pixels(other.files[0]), pixels(first.files[0]))


def test_changing_stage3_denoise_reruns_only_stage3(three_stage, monkeypatch):
    out, r, _ = three_stage
    from graphrun.nodes.zimage.network import ZImageDenoiser

    calls = []
    original = ZImageDenoiser.apply_model
    monkeypatch.setattr(ZImageDenoiser, "apply_model", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    doc = yaml.safe_load((GRAPHS / "zimage_3stage.yaml").read_text())
    doc["nodes"]["stage3_sigmas"]["denoise"] = 0.5
    result = graphrun.load(doc, runner=r).run(prompt="a red fox")
    assert result.executed == ["stage3_sigmas", "stage3", "decode", "save"]
    assert len(calls) == 16  # 16 steps at cfg 1: one transformer forward each, nothing else re-ran
    assert result.files == [out / "zimage" / "tweet_00002_.png"]


def test_turbo_img2img_and_lora_graphs(tmp_path):
    turbo = run("zimage_turbo.yaml", tmp_path, width=128, height=96, steps=2)
    with Image.open(turbo.files[0]) as img:
        assert img.size == (128, 96)
    img2img = run("zimage_img2img.yaml", tmp_path, steps=2)
    with Image.open(img2img.files[0]) as img:
        assert img.size == (176, 224)  # the input picture's size
    lora = run("zimage_lora.yaml", tmp_path, width=64, height=64)
    with Image.open(lora.files[0]) as img:
        assert img.size == (64, 64)


def test_saveimage_counter_continues_and_never_overwrites(tmp_path):
    (tmp_path / "zimage_lora_00007_.png").write_bytes(b"existing")
    result = run(single_stage(), tmp_path)
    assert result.files == [tmp_path / "zimage_lora_00008_.png"]
    assert (tmp_path / "zimage_lora_00007_.png").read_bytes() == b"existing"
    assert not list(tmp_path.glob(".graphrun-*"))  # no temporary files left behind


def test_saveimage_refuses_paths_outside_output(tmp_path):
    with pytest.raises(GraphError, match="would save outside the output folder"):
        run(single_stage(), tmp_path / "out", prefix="../escape")
    assert not (tmp_path / "escape_00001_.png").exists()


# ------------------------------------------------------------------ LoRA

LAYOUTS = [
    "peft",
    "peft_bare_default",
    "kohya",
    "lycoris",
    "diffusion_model_ab",
    "diffusion_model_updown",
    "diffusion_model_diffusers_names",
]  # not comfy_native_qkv: its bare `layers.N.attention.qkv` keys are ignored, as by ComfyUI v0.18.1


@pytest.fixture(scope="module")
def base_pixels(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    return pixels(run(single_stage(), out, strength=0.0).files[0])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_lora_layout_changes_the_image(layout, base_pixels, tmp_path):
    image = pixels(run(single_stage(), tmp_path, lora=f"tiny:{layout}", strength=1.0).files[0])
    assert np.abs(image.astype(int) - base_pixels.astype(int)).max() > 0


def test_lora_strength_zero_equals_base_exactly(base_pixels, tmp_path):
    doc = single_stage()
    doc["nodes"]["model"]["model"] = "zimage.model"  # no LoRA node at all
    plain = pixels(run(doc, tmp_path / "plain").files[0])
    assert np.array_equal(plain, base_pixels)


def test_two_branches_with_different_loras_share_one_base(tmp_path):
    doc = single_stage()
    nodes = doc["nodes"]
    # The tiny test LoRAs all encode one update (so layouts can be compared); strengths differ here.
    nodes["lora_b"] = {"type": "LoadLora", "model": "zimage.model", "name": "tiny:kohya", "strength_model": -0.5}
    nodes["model_b"] = {"type": "ModelSampling", "model": "lora_b.model", "shift": 3.0}
    nodes["sample_b"] = {**nodes["sample"], "model": "model_b"}
    nodes["decode_b"] = {"type": "VAEDecode", "vae": "zimage.vae", "latent": "sample_b"}
    nodes["save_b"] = {"type": "SaveImage", "images": "decode_b", "filename_prefix": "branch_b"}
    both = run(doc, tmp_path / "both", lora="tiny:peft", strength=1.0)
    alone_a = run(single_stage(), tmp_path / "a", lora="tiny:peft", strength=1.0)
    alone_b = run(single_stage(), tmp_path / "b", lora="tiny:kohya", strength=-0.5)
    assert np.array_equal(pixels(both.outputs["save"][0]), pixels(alone_a.files[0]))
    assert np.array_equal(pixels(both.outputs["save_b"][0]), pixels(alone_b.files[0]))
    assert not np.array_equal(pixels(alone_a.files[0]), pixels(alone_b.files[0]))


def test_lora_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(NodeFailed, match=r"node .lora. \(LoadLora\) failed: LoRA .tiny_lora_unmatched.safetensors. matched none of the"):
        run(single_stage(), tmp_path, lora="tiny:unmatched")


def test_partial_lora_match_warns_with_unmatched_keys(tmp_path):
    with pytest.warns(UserWarning, match="node 'lora' \\(LoadLora\\)"):
        run(single_stage(), tmp_path, lora="tiny:partial")


# ------------------------------------------------------------------ ComfyUI single files

def comfy_files_graph() -> dict:
    doc = single_stage()
    nodes = doc["nodes"]
    del nodes["zimage"]
    nodes["unet"] = {"type": "LoadDiffusionModel", "name": "z_image_turbo_bf16.safetensors"}
    nodes["te"] = {"type": "LoadTextEncoder", "name": "qwen_3_4b.safetensors"}
    nodes["vae"] = {"type": "LoadVAE", "name": "ae.safetensors"}
    nodes["lora"]["model"] = "unet"
    nodes["positive"]["clip"] = "te"
    nodes["decode"]["vae"] = "vae"
    doc["params"].pop("model")
    return doc


def test_comfy_single_files_give_the_same_image_as_the_diffusers_folder(tmp_path):
    folder = run(single_stage(), tmp_path / "folder", lora="tiny:peft")
    files = graphrun.load(comfy_files_graph(), runner=runner(tmp_path / "files", models_dirs=["tiny"])).run(lora="tiny:peft")
    assert np.array_equal(pixels(files.files[0]), pixels(folder.files[0]))


# ------------------------------------------------------------------ bad inputs, one clear error each

def errors(doc, **params) -> list[str]:
    document = load_document(doc)
    _, diags = check(document, builtin_registry(), params)
    return [d.format() for d in diags if d.is_error]


def test_missing_weights_file_is_reported_before_running(tmp_path):
    missing = tmp_path / "nope.safetensors"
    (error,) = errors(GRAPHS / "zimage_3stage.yaml", unet=str(missing))
    assert error.startswith(
        f"{GRAPHS / 'zimage_3stage.yaml'}:24:50: error[GR018] node 'unet_loader' input 'name': "
        f"diffusion_models file '{missing}' not found"
    )


def test_width_below_comfyui_minimum_and_unknown_sampler(tmp_path):
    doc = yaml.safe_load((GRAPHS / "zimage_turbo.yaml").read_text())
    doc["nodes"]["sample"]["sampler"] = "euler_a"
    found = errors(doc, width=8)
    assert len(found) == 2
    assert found[0] == (
        "error[GR009] node 'empty' input 'width': value 8 (from param 'width') is invalid: input should be "
        "greater than or equal to 16 (hint: expected INT, >= 16, <= 16384)"
    )
    assert found[1].startswith("error[GR009] node 'sample' input 'sampler': value 'euler_a' ")
    assert "'euler_ancestral'" in found[1]
    # ComfyUI accepts sizes that are not multiples of 16 (the widget only steps by 16).
    assert errors(doc | {"nodes": {**doc["nodes"], "sample": {**doc["nodes"]["sample"], "sampler": "euler"}}}, width=1000) == []


def test_corrupt_safetensors_gives_a_clear_error(tmp_path):
    from graphrun.nodes.zimage.tiny import tiny_comfy_dir

    models = tmp_path / "models"
    shutil.copytree(tiny_comfy_dir(), models)
    weights = models / "diffusion_models" / "z_image_turbo_bf16.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    g = graphrun.load(comfy_files_graph(), runner=runner(tmp_path / "out", models_dirs=[str(models)]))
    with pytest.raises(GraphError) as err:  # found from the header, before anything loads
        g.run()
    [error] = [d for d in err.value.diagnostics if d.is_error]
    assert error.node == "unet" and error.code == "GR018"
    assert "z_image_turbo_bf16.safetensors" in error.message and "truncated" in error.message


def test_missing_model_file_and_pickle_are_validation_errors(tmp_path):
    doc = comfy_files_graph()
    doc["nodes"]["unet"]["name"] = "missing.safetensors"
    doc["nodes"]["vae"]["name"] = "ae.ckpt"
    document = load_document(doc)
    _, diags = check(document, builtin_registry(), {}, CheckEnv(options={"models_dirs": ["tiny"]}))
    text = [d.format() for d in diags if d.is_error]
    assert len(text) == 2
    assert text[0].startswith("error[GR018] node 'unet' input 'name': diffusion_models file 'missing.safetensors' not found")
    assert text[1] == (
        "error[GR018] node 'vae' input 'name': 'ae.ckpt' is a pickle file; graphrun loads safetensors only "
        "(hint: convert it to .safetensors (pickle files can run arbitrary code))"
    )


def test_graph_error_lists_everything_at_once():
    doc = yaml.safe_load((GRAPHS / "zimage_turbo.yaml").read_text())
    doc["nodes"]["sample"]["steps"] = 0
    doc["nodes"]["sample"]["cfg"] = "high"
    with pytest.raises(GraphError) as err:
        graphrun.load(doc).bind()
    assert [d.input for d in err.value.diagnostics if d.is_error] == ["steps", "cfg"]
