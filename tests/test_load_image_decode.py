"""LoadImage's decoding: ComfyUI 0.33's PyAV path (the default setting) against ComfyUI v0.18.1's PIL path.

ComfyUI 0.21 (commit dae3d347, PR #13594) and its follow-ups up to 0.33 (de6b062f) decode LoadImage files
through FFmpeg (PyAV): 16-bit PNGs keep their precision, JPEG pixels differ from PIL's (FFmpeg's IDCT and
chroma upsampling), palette images always get a full-size mask, GIF frames keep fractional values.
``tests/data/comfy/v0.33/load_image/`` holds the inputs (made by its ``make_inputs.py``), the IMAGE and
MASK tensors real ComfyUI 0.33 and v0.18.1 produced from them (``decode.json``: float32 sha256 and stats)
and two img2img runs (JPEG 4:2:0 and 16-bit PNG) with both versions' PNGs. The tensors must match bit for
bit; the img2img PNGs by the pipeline tests' criterion (>= 99.9 % identical uint8 values, none off by > 2).
"""
from __future__ import annotations

import hashlib
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
from graphrun.nodes.image_decode import decode_image
from test_comfy_pipeline import PIPELINE, pixel_agreement

DATA = Path(__file__).parent / "data" / "comfy" / "v0.33" / "load_image"
INPUTS = DATA / "inputs"
DECODE = json.loads((DATA / "decode.json").read_text())
MODELS = str(PIPELINE / "models")
_COMFY_ID = re.compile(r"ComfyUI node (\S+) ")


def _assert_tensor(actual: torch.Tensor, ref: dict[str, Any], what: str) -> None:
    """Bit-exact against ComfyUI's summary; on a mismatch say how far off."""
    assert list(actual.shape) == ref["shape"], f"{what}: shape {list(actual.shape)}, ComfyUI {ref['shape']}"
    assert str(actual.dtype).replace("torch.", "") == ref["dtype"], f"{what}: dtype {actual.dtype}"
    digest = hashlib.sha256(actual.detach().contiguous().numpy().tobytes()).hexdigest()
    flat = actual.double().reshape(-1)
    assert digest == ref["sha256_float32"], (
        f"{what}: not ComfyUI's values (sum {float(flat.sum())} vs {ref['sum']}, first "
        f"{[round(float(x), 6) for x in flat[:4]]} vs {[round(x, 6) for x in ref['first16'][:4]]})")


def _loaded(runner: Runner, result: Any, bound: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """ComfyUI node id -> (IMAGE, MASK) of every LoadImage node in the run."""
    found = {}
    for node_id, key in result.keys.items():
        match = _COMFY_ID.match(bound.document.origins.get(node_id, ""))
        outputs = runner.cache.get(key)
        if match is not None and outputs is not None and bound.nodes[node_id].spec.name == "LoadImage":
            found[match.group(1)] = (outputs[0], outputs[1])
    return found


@pytest.mark.parametrize("comfy", ["0.33", "0.18.1"])
def test_loaded_tensors_are_comfyuis(comfy: str, tmp_path: Path) -> None:
    """The decode workflow (one LoadImage -> PreviewImage per input) run through graphrun gives ComfyUI's
    IMAGE and MASK tensors bit for bit, for every input under both settings."""
    options = RunOptions(output_dir=tmp_path, comfy=comfy, extra={"input_dirs": [str(INPUTS)]})
    runner = Runner(options, cache_bytes=1 << 30)
    graph = graphrun.load(DATA / "decode.api.json", runner=runner)
    result = graph.run()
    loaded = _loaded(runner, result, graph.bind())
    references = DECODE[comfy]
    assert sorted(loaded) == sorted(ref["node"] for ref in references.values())
    for name, ref in references.items():
        image, mask = loaded[ref["node"]]
        _assert_tensor(image, ref["image"], f"{name} IMAGE (--comfy {comfy})")
        _assert_tensor(mask, ref["mask"], f"{name} MASK (--comfy {comfy})")


def test_the_settings_decode_differently() -> None:
    """What changed in ComfyUI's own tensors between v0.18.1 and 0.33 (so the setting matters)."""
    old, new = DECODE["0.18.1"], DECODE["0.33"]
    changed = {name for name in new if new[name]["image"]["sha256_float32"] != old[name]["image"]["sha256_float32"]}
    assert {"jpeg420.jpg", "jpeg444.jpg", "exif6.jpg", "rgb16.png", "gray16.png", "anim.gif"} <= changed
    assert "rgba.png" not in changed and "palette.png" not in changed  # 8-bit RGB(A) and palettes: same pixels
    assert new["palette.png"]["mask"]["shape"] == [1, 80, 96] and old["palette.png"]["mask"]["shape"] == [1, 64, 64]


def test_exif_orientation_turns_the_image() -> None:
    """exif6.jpg holds jpeg420.jpg's pixels with EXIF orientation 6: both settings turn it 90 degrees
    clockwise (PyAV from the frame's display rotation, PIL by exif_transpose)."""
    for comfy in ("0.33", "0.18.1"):
        upright = decode_image(INPUTS / "jpeg420.jpg", comfy).image
        turned = decode_image(INPUTS / "exif6.jpg", comfy).image
        assert turned.shape == (1, 96, 80, 3)
        assert torch.equal(turned, torch.rot90(upright, k=-1, dims=(1, 2)))


def test_16_bit_pngs_keep_their_precision() -> None:
    """0.33 reads a 16-bit grayscale PNG as value / 65535 in every channel; v0.18.1's PIL path loses it."""
    values = np.array(Image.open(INPUTS / "gray16.png"))
    assert values.dtype == np.uint16
    image = decode_image(INPUTS / "gray16.png", "0.33").image
    expected = torch.from_numpy((values.astype(np.float64) / 65535).astype(np.float32))
    for channel in range(3):
        assert torch.equal(image[0, ..., channel], expected)
    rgb = decode_image(INPUTS / "rgb16.png", "0.33").image
    assert rgb.unique().numel() > 10_000  # 8 bits would give at most 256 values
    assert decode_image(INPUTS / "rgb16.png", "0.18.1").image.unique().numel() <= 256


def test_alpha_gives_the_mask() -> None:
    """MASK = 1 - alpha / 255 at full size; no alpha: zeros 64x64 per frame."""
    alpha = np.array(Image.open(INPUTS / "rgba.png"))[..., 3]
    for comfy in ("0.33", "0.18.1"):
        decoded = decode_image(INPUTS / "rgba.png", comfy)
        assert torch.equal(decoded.mask[0], 1.0 - torch.from_numpy(alpha).float() / 255.0)
        assert torch.equal(decode_image(INPUTS / "jpeg420.jpg", comfy).mask, torch.zeros(1, 64, 64))
    frames = decode_image(INPUTS / "anim.gif", "0.33")
    assert frames.image.shape == (3, 40, 48, 3) and frames.mask.shape == (3, 40, 48)


def _run(workflow: Path, out: Path, comfy: str | None = None) -> Path:
    options = RunOptions(output_dir=out, comfy=comfy, extra={"models_dirs": [MODELS], "input_dirs": [str(INPUTS)]})
    (png,) = graphrun.load(workflow, runner=Runner(options)).run().files
    return png


def _reference(case: str, version: str) -> Path:
    (png,) = (DATA / case / f"v{version}").glob("*.png")
    return png


@pytest.mark.parametrize("case", ["i1_jpeg420_img2img", "i2_rgb16_img2img"])
def test_img2img_matches_comfyui_033(case: str, tmp_path: Path) -> None:
    """LoadImage -> VAEEncode -> KSampler (denoise 0.6) -> SaveImage gives ComfyUI 0.33's PNG."""
    png = _run(DATA / case / "workflow.api.json", tmp_path)
    identical, worst = pixel_agreement(_reference(case, "0.33"), png)
    assert identical >= 0.999 and worst <= 2, f"{case}: {identical:.4%} identical, max diff {worst}"


@pytest.mark.parametrize("case", ["i1_jpeg420_img2img", "i2_rgb16_img2img"])
def test_v0181_setting_matches_comfyui_v0181(case: str, tmp_path: Path) -> None:
    """--comfy 0.18.1 keeps PIL's decode: v0.18.1's PNG, which differs from 0.33's beyond the criterion."""
    png = _run(DATA / case / "workflow.api.json", tmp_path, comfy="0.18.1")
    identical, worst = pixel_agreement(_reference(case, "0.18.1"), png)
    assert identical >= 0.999 and worst <= 2, f"{case}: {identical:.4%} identical, max diff {worst}"
    assert pixel_agreement(_reference(case, "0.33"), _reference(case, "0.18.1"))[0] < 0.99


def _image_graph(path: Path) -> dict[str, Any]:
    return {"graph": "load", "nodes": {"picture": {"type": "LoadImage", "image": str(path)},
                                       "show": {"type": "PreviewImage", "images": "picture.image"}}}


def test_file_ffmpeg_cannot_read_is_a_clear_error(tmp_path: Path) -> None:
    """A PIL-only format (ICNS): ComfyUI 0.33's LoadImage fails in FFmpeg; graphrun names the file, the node
    and the ways out, and --comfy 0.18.1 still loads it with PIL."""
    path = tmp_path / "picture.icns"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(path)
    doc = tmp_path / "g.yaml"
    doc.write_text(json.dumps(_image_graph(path)))
    with pytest.raises(NodeFailed, match=r"picture\.icns.*cannot be read by FFmpeg.*--comfy 0\.18\.1") as failed:
        graphrun.load(doc, runner=Runner(RunOptions(output_dir=tmp_path / "out"))).run()
    assert "picture" in str(failed.value)
    runner = Runner(RunOptions(output_dir=tmp_path / "old", comfy="0.18.1"), cache_bytes=1 << 28)
    assert len(graphrun.load(doc, runner=runner).run().files) == 1


def test_file_truncated_after_validation_is_refused_at_load(tmp_path: Path) -> None:
    """FFmpeg decodes a truncated JPEG without complaint (grey rows); the PyAV path has PIL check it first."""
    path = tmp_path / "picture.jpg"
    path.write_bytes((INPUTS / "jpeg420.jpg").read_bytes())
    doc = tmp_path / "g.yaml"
    doc.write_text(json.dumps(_image_graph(path)))
    graph = graphrun.load(doc, runner=Runner(RunOptions(output_dir=tmp_path / "out")))
    bound = graph.bind()
    path.write_bytes(path.read_bytes()[:1200])
    with pytest.raises(NodeFailed, match=r"picture\.jpg' is corrupt or truncated"):
        graph.runner.run(bound)


#: sha256 of the float32 IMAGE real ComfyUI de6b062f's LoadImage gave for inputs/grad.exr ([1, 24, 40, 3];
#: the MASK is zeros [1, 64, 64]); see the README.
EXR_IMAGE_SHA256 = "3b4dfad1dec10f8a9808523e5509a50ffac78e39e1854a6e9515a1b280d07ab2"


def test_exr_which_only_ffmpeg_reads_loads_as_in_comfyui_033(tmp_path: Path) -> None:
    """ComfyUI 0.33 decodes an EXR (float planes) through FFmpeg: graphrun validates it and gives the same
    tensor. PIL reads no EXR, so under --comfy 0.18.1 (PIL, as v0.18.1) it is a validation error naming the file."""
    workflow = tmp_path / "exr.api.json"
    workflow.write_text(json.dumps({"1": {"class_type": "LoadImage", "_meta": {"title": "exr"}, "inputs": {"image": "grad.exr"}},
                                    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}))
    runner = Runner(RunOptions(output_dir=tmp_path / "out", extra={"input_dirs": [str(INPUTS)]}), cache_bytes=1 << 28)
    graph = graphrun.load(workflow, runner=runner)
    assert not [d for d in graph.validate() if d.is_error]
    result = graph.run()
    image, mask = _loaded(runner, result, graph.bind())["1"]
    assert list(image.shape) == [1, 24, 40, 3] and image.dtype == torch.float32
    assert hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest() == EXR_IMAGE_SHA256
    assert list(mask.shape) == [1, 64, 64] and not mask.any()
    old = Runner(RunOptions(output_dir=tmp_path / "old", comfy="0.18.1", extra={"input_dirs": [str(INPUTS)]}))
    errors = [d for d in graphrun.load(workflow, runner=old).validate() if d.is_error]
    assert len(errors) == 1 and "grad.exr" in errors[0].message and "not an image file" in errors[0].message
