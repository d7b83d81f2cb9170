"""End-to-end parity with real ComfyUI on the tiny Z-Image files.

``tests/data/comfy/v0.18.1/pipeline/`` holds workflows that real ComfyUI v0.18.1 ran on the CPU in
float32 on the tiny model files copied beside them, the PNGs it wrote and per-node summaries of
its outputs (``record.json``); ``pipeline_extra/`` holds more such workflows (other samplers and
schedulers, KSamplerAdvanced and SamplerCustomAdvanced splits, prompt escapes, batches, LoraLoader
with model and text-encoder keys, ``embedding:`` words, quantized model files, extreme seeds) with
ComfyUI's PNGs only. Real ComfyUI 0.33 (de6b062f) writes the same PNGs for all but two of them
(byte-identical on one machine, see ``tests/data/comfy/v0.33/pipeline/README.md``), so they are the
references of the default setting (0.33) too; for the two whose embedding words 0.33 reads differently
(e32, e33) its own PNGs are in ``tests/data/comfy/v0.33/pipeline/``. The public workflows and those two
also run under ``comfy="0.18.1"`` against v0.18.1's PNGs.
graphrun runs each workflow from its API JSON on the same files.
graphrun's text encoder and transformer compute in ComfyUI's op order and equal it bit for bit given
the same inputs (tests/test_text_encoder_exact.py, tests/test_zimage_forward_exact.py), but the VAE and
the CPU's float32 rounding (these references were recorded on another machine) are not, so the
criterion is ComfyUI's: per PNG at least 99.9 % of the uint8 values identical and none off by
more than 2; latents within 1e-4 relative and conditionings within 1e-5 of each node's summary.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import graphrun
from graphrun.engine.context import RunOptions
from graphrun.engine.executor import NodeFailed, Runner

PIPELINE = Path(__file__).parent / "data" / "comfy" / "v0.18.1" / "pipeline"
# More workflows run through real ComfyUI v0.18.1 on the same model files: PNGs only, no record.json
# (see its README.md for how they were produced).
PIPELINE_EXTRA = PIPELINE.parent / "pipeline_extra"
# ComfyUI 0.33's PNGs where they differ from v0.18.1's (same folder names).
PIPELINE_033 = PIPELINE.parent.parent / "v0.33" / "pipeline"
WORKFLOWS = [
    pytest.param(folder, version, id=f"{folder.name}-{version}")
    for root in (PIPELINE, PIPELINE_EXTRA)
    for folder in sorted(root.iterdir())
    if (folder / "workflow.api.json").exists()
    for version in (("0.33", "0.18.1") if root is PIPELINE or (PIPELINE_033 / folder.name).is_dir() else ("0.33",))
]
_COMFY_ID = re.compile(r"ComfyUI node (\S+) ")
# pipeline_extra's own model files (tiny LoRAs, embeddings, the quantized files), in ComfyUI's layout.
EXTRA_MODELS = PIPELINE_EXTRA / "models"


def pixel_agreement(reference: Path, produced: Path) -> tuple[float, int]:
    """(fraction of identical uint8 values, max |difference|) of two PNGs of one size."""
    a = np.asarray(Image.open(reference).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(produced).convert("RGB"), dtype=np.int16)
    assert a.shape == b.shape, f"{produced.name}: {b.shape[1]}x{b.shape[0]}, ComfyUI wrote {a.shape[1]}x{a.shape[0]}"
    diff = np.abs(a - b)
    return float((diff == 0).mean()), int(diff.max())


def _close(actual: torch.Tensor, ref: dict[str, Any], rel: float, what: str) -> None:
    assert list(actual.shape) == ref["shape"], f"{what}: shape {list(actual.shape)} != {ref['shape']}"
    flat = actual.detach().double().reshape(-1)
    scale = float(ref["abs_sum"]) or 1.0
    assert abs(float(flat.sum()) - ref["sum"]) <= rel * scale, f"{what}: sum {float(flat.sum())} vs {ref['sum']}"
    assert abs(float(flat.abs().sum()) - ref["abs_sum"]) <= rel * scale, f"{what}: abs_sum differs"
    first = torch.tensor(ref["first16"], dtype=torch.float64)
    bound = rel * (float(first.abs().max()) or 1.0)
    assert float((flat[: len(first)] - first).abs().max()) <= bound, f"{what}: first values differ beyond {rel:g}"


def _check_summaries(runner: Runner, bound: Any, result: Any, record: dict[str, Any]) -> int:
    """Compare every LATENT and CONDITIONING output of the run with ComfyUI's summary; returns the
    number of values compared."""
    checked = 0
    origins = bound.document.origins
    for node_id, key in result.keys.items():
        match = _COMFY_ID.match(origins.get(node_id, ""))
        outputs = runner.cache.get(key)
        if match is None or outputs is None or match.group(1) not in record["nodes"]:
            continue
        for slot, summaries in enumerate(record["nodes"][match.group(1)]["outputs"]):
            for summary in summaries:
                value = outputs[slot]
                what = f"node {node_id} (ComfyUI {match.group(1)}) output {slot}"
                if summary.get("type") == "LATENT":
                    _close(value.samples, summary, 1e-4, what)
                    checked += 1
                elif summary.get("type") == "CONDITIONING":
                    for entry, ref in zip(value.entries, summary["entries"]):
                        _close(entry.tensor, ref, 1e-5, what)
                        checked += 1
    return checked


@pytest.mark.parametrize(("folder", "version"), WORKFLOWS)
def test_workflow_matches_comfyui(folder: Path, version: str, tmp_path: Path) -> None:
    name = folder.name
    models_dirs = [str(PIPELINE / "models"), str(EXTRA_MODELS)]
    options = RunOptions(
        output_dir=tmp_path, comfy=version,
        extra={"models_dirs": models_dirs, "input_dirs": [str(PIPELINE / "inputs")]},
    )
    runner = Runner(options, cache_bytes=8 << 30)
    graph = graphrun.load(folder / "workflow.api.json", runner=runner)
    result = graph.run()
    own = PIPELINE_033 / name
    references = sorted(p for p in (own if version == "0.33" and own.is_dir() else folder).rglob("*.png"))
    produced = sorted(result.files)
    assert [p.name for p in produced] == [p.name for p in references]
    for ref, out in zip(references, produced):
        identical, worst = pixel_agreement(ref, out)
        assert identical >= 0.999 and worst <= 2, f"{name}/{out.name}: {identical:.4%} identical, max diff {worst}"
    if (folder / "record.json").exists():
        record = json.loads((folder / "record.json").read_text())
        assert _check_summaries(runner, graph.bind(), result, record) > 0


def _run_extra(workflow: dict[str, Any], out: Path, comfy: str = "") -> np.ndarray:
    """Run an API workflow on pipeline/ and pipeline_extra/ models; the pixels of its one PNG."""
    out.mkdir(parents=True)
    (out / "workflow.api.json").write_text(json.dumps(workflow))
    options = RunOptions(output_dir=out, comfy=comfy,
                         extra={"models_dirs": [str(PIPELINE / "models"), str(EXTRA_MODELS)]})
    (png,) = graphrun.load(out / "workflow.api.json", runner=Runner(options)).run().files
    return np.asarray(Image.open(png).convert("RGB"))


def test_kohya_text_encoder_keys_are_ignored_with_a_warning(tmp_path: Path) -> None:
    """e31: ComfyUI v0.18.1 reads no kohya ``lora_te*`` keys for Qwen3 ("lora key not loaded"), and 0.33
    reads only the ``lora_te_<module>`` spelling, not this file's ``lora_te_model_*`` / ``lora_te1_*``;
    the file's transformer key runs at strength_model 0, so ComfyUI's PNG is byte-identical to the graph
    without the LoraLoader. graphrun names the ignored keys and gives its no-LoRA image exactly."""
    workflow = json.loads((PIPELINE_EXTRA / "e31_lora_kohya_te_ignored" / "workflow.api.json").read_text())
    with pytest.warns(UserWarning, match=r"8 of 10 keys are not applied.*lora_te1_model_layers_0_mlp_up_proj"):
        with_lora = _run_extra(workflow, tmp_path / "lora")
    del workflow["13"]
    workflow["4"]["inputs"]["model"], workflow["5"]["inputs"]["clip"] = ["1", 0], ["2", 0]
    assert np.array_equal(with_lora, _run_extra(workflow, tmp_path / "plain"))


@pytest.mark.parametrize("comfy", ["0.33", "0.18.1"])
def test_missing_embeddings_are_dropped_with_a_warning(comfy: str, tmp_path: Path) -> None:
    """e33: ``embedding:nosuch`` names no file, and ``embedding:tinyemb`` stands at the very end of the
    prompt. ComfyUI v0.18.1 takes the template's ``<|im_end|>`` into that name and drops both; 0.33 ends
    the name at ``<`` and finds ``tinyemb``. graphrun warns about each dropped one."""
    workflow = json.loads((PIPELINE_EXTRA / "e33_embedding_missing" / "workflow.api.json").read_text())
    with pytest.warns(UserWarning) as caught:
        _run_extra(workflow, tmp_path / "out", comfy)
    dropped = [str(w.message) for w in caught if "is dropped from the prompt" in str(w.message)]
    assert "embedding 'nosuch' not found" in dropped[0]
    if comfy == "0.18.1":
        assert len(dropped) == 2 and "embedding 'tinyemb<|im_end|>' not found" in dropped[1]
    else:
        assert len(dropped) == 1


@pytest.mark.parametrize("sampler", ["res_multistep", "euler_ancestral"])
def test_largest_seed_fails_like_comfyui(sampler: str, tmp_path: Path) -> None:
    """Seed 2**64 - 1 is valid for the KSampler, but both samplers seed their noise generator with
    seed + 1 on the CPU, which overflows it: real ComfyUI v0.18.1 fails there ("Overflow when
    unpacking long long"), res_multistep too although its eta 0 draws no noise (see
    pipeline_extra/README.md); graphrun fails the same way rather than returning an image."""
    workflow = json.loads((PIPELINE / "p2_turbo_res_multistep" / "workflow.api.json").read_text())
    workflow["8"]["inputs"].update(seed=2**64 - 1, sampler_name=sampler)
    path = tmp_path / "max_seed.api.json"
    path.write_text(json.dumps(workflow))
    options = RunOptions(output_dir=tmp_path, extra={"models_dirs": [str(PIPELINE / "models")]})
    with pytest.raises(NodeFailed, match="does not fit the noise generator"):
        graphrun.load(path, runner=Runner(options)).run()


def test_october_2025_setting_reproduces_the_old_ancestral_noise(tmp_path: Path) -> None:
    """``comfy: "2025.10"`` draws ancestral noise from the seed itself: against v0.18.1's PNG the
    ancestral workflow then differs almost everywhere, and the setting is recorded in the PNG."""
    folder = PIPELINE / "p3_turbo_euler_ancestral"
    runs = {}
    for version in ("0.18.1", "2025.10"):
        options = RunOptions(output_dir=tmp_path / version, comfy=version,
                             extra={"models_dirs": [str(PIPELINE / "models")]})
        result = graphrun.load(folder / "workflow.api.json", runner=Runner(options)).run()
        (png,) = result.files
        runs[version] = pixel_agreement(folder / "p3_euler_a_00001_.png", png)
        assert json.loads(Image.open(png).text["graphrun"])["comfy"] == version
    assert runs["0.18.1"][0] >= 0.999
    assert runs["2025.10"][0] < 0.5


def test_graph_level_comfy_setting_and_bad_value(tmp_path: Path) -> None:
    from graphrun.engine.graph import document_from_data

    doc = {"graph": "g", "comfy": "2025.10", "nodes": {}}
    assert document_from_data(doc).comfy == "2025.10"
    bad = [d for d in document_from_data({**doc, "comfy": "0.18"}).problems if "ComfyUI version" in d.message]
    assert [d.code for d in bad] == ["GR002"]
    assert "unknown ComfyUI version '0.18'" in bad[0].message and "'0.18.1'" in bad[0].message
