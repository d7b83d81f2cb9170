"""Image scaling nodes (ComfyUI ImageScale / ImageScaleBy / ImageScaleToTotalPixels / ImageScaleToMaxDimension /
GetImageSize) and model upscaling (UpscaleModelLoader / ImageUpscaleWithModel) on tiny random-weight models."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file

import graphrun
from graphrun.engine.context import Context, Interrupted, RunOptions
from graphrun.engine.executor import Runner
from graphrun.engine.node import builtin_registry
from graphrun.nodes import upscale_nets as nets
from graphrun.nodes.upscale import (
    get_image_size,
    image_scale,
    image_scale_by,
    image_scale_to_max_dimension,
    image_scale_to_total_pixels,
    image_upscale_with_model,
    load_upscale_model,
    total_pixels_size,
    write_tiny_upscale_model,
)

torch.set_num_threads(1)
ROOT = Path(__file__).parent.parent
GRADIENT = ROOT / "graphs" / "assets" / "gradient.png"


def images(batch: int = 2, height: int = 30, width: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


def smooth_images(batch: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    """Photo-like content: a bicubic blow-up of a coarse random grid."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, height // 8), max(2, width // 8), generator=generator)
    return F.interpolate(coarse, size=(height, width), mode="bicubic").clamp(0, 1).movedim(1, -1).contiguous()


def pil_lanczos(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI's lanczos: 8-bit pixels (truncated), PIL LANCZOS, back to [0, 1]."""
    pixels = np.clip(255.0 * image.numpy(), 0, 255).astype(np.uint8)
    resized = PILImage.fromarray(pixels).resize((width, height), resample=PILImage.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(resized).astype(np.float32) / 255.0)


def context(tmp_path: Path, events: list | None = None, stop: threading.Event | None = None) -> Context:
    options = RunOptions(output_dir=tmp_path, extra={"models_dirs": [str(tmp_path / "models")]})
    emit = (lambda kind, data: events.append((kind, data))) if events is not None else (lambda kind, data: None)
    return Context(node_id="n", node_type="T", options=options, emit=emit, stop=stop or threading.Event())


# --- ImageScale / ImageScaleBy / ImageScaleToTotalPixels / ImageScaleToMaxDimension / GetImageSize ----------------


def test_image_scale_sizes_and_aspect_from_zero() -> None:
    x = images()
    assert image_scale(x, "bilinear", 0, 0) is x
    assert image_scale(x, "bicubic", 20, 0).shape == (2, 15, 20, 3)
    assert image_scale(x, "area", 0, 45).shape == (2, 45, 60, 3)
    assert image_scale(x, "nearest-exact", 1, 0).shape == (2, 1, 1, 3)  # at least 1 px


def test_image_scale_pixels_match_comfy_rules() -> None:
    x = images()
    expected = F.interpolate(x.movedim(-1, 1), size=(17, 23), mode="bilinear").movedim(1, -1)
    torch.testing.assert_close(image_scale(x, "bilinear", 23, 17), expected, rtol=0, atol=0)
    # crop center: 40x30 -> 20x20 trims round((40 - 30) / 2) = 5 columns on each side first.
    expected = F.interpolate(x[:, :, 5:35].movedim(-1, 1), size=(20, 20), mode="nearest-exact").movedim(1, -1)
    torch.testing.assert_close(image_scale(x, "nearest-exact", 20, 20, "center"), expected, rtol=0, atol=0)
    out = image_scale(x, "lanczos", 55, 41)
    for i in range(2):
        torch.testing.assert_close(out[i], pil_lanczos(x[i], 55, 41), rtol=0, atol=0)


def test_image_scale_by_rounds_like_python() -> None:
    x = images(1, 5, 7)
    assert image_scale_by(x, "bilinear", 0.5).shape == (1, 2, 4, 3)  # round(2.5) = 2, round(3.5) = 4
    assert image_scale_by(images(), "nearest-exact", 1.5).shape == (2, 45, 60, 3)
    out = image_scale_by(images(), "lanczos", 0.5)
    torch.testing.assert_close(out[1], pil_lanczos(images()[1], 20, 15), rtol=0, atol=0)


def test_total_pixels_size_formula() -> None:
    # scale = sqrt(2^20 / (640 * 480)) = 1.8475...: 1182.4 x 886.8
    assert total_pixels_size(640, 480, 1.0) == (1182, 887)
    assert total_pixels_size(640, 480, 1.0, resolution_steps=64) == (1152, 896)
    assert total_pixels_size(1024, 1024, 1.0) == (1024, 1024)
    assert total_pixels_size(1000, 500, 2.0, resolution_steps=16) == (2048, 1024)  # scale sqrt(4.194) = 2.048
    assert total_pixels_size(333, 200, 0.25, resolution_steps=8) == (664, 400)  # 663.2 / 8 = 82.9; 398.3 / 8 = 49.8


def test_image_scale_to_total_pixels_node() -> None:
    x = images(1, 48, 64)
    out = image_scale_to_total_pixels(x, "lanczos", 0.01)  # 10485.76 px: 118.2 x 88.7
    assert out.shape == (1, 89, 118, 3)
    torch.testing.assert_close(out[0], pil_lanczos(x[0], 118, 89), rtol=0, atol=0)
    assert image_scale_to_total_pixels(x, "bilinear", 0.01, 8).shape == (1, 88, 120, 3)
    with pytest.raises(ValueError, match="resolution_steps"):
        image_scale_to_total_pixels(x, "bilinear", 0.01, 256)


def test_image_scale_to_max_dimension() -> None:
    assert image_scale_to_max_dimension(images(1, 30, 40), "area", 100).shape == (1, 75, 100, 3)
    assert image_scale_to_max_dimension(images(1, 40, 30), "bilinear", 100).shape == (1, 100, 75, 3)
    assert image_scale_to_max_dimension(images(1, 33, 33), "lanczos", 16).shape == (1, 16, 16, 3)


def test_get_image_size() -> None:
    assert get_image_size(images(3, 30, 40)) == (40, 30, 3)


def test_comfy_widget_order_matches_the_templates() -> None:
    """The UI format stores widgets positionally: our primitive inputs must be in ComfyUI's order."""
    index = builtin_registry().comfy_index()
    expected = {
        "ImageScale": ["upscale_method", "width", "height", "crop"],
        "ImageScaleBy": ["upscale_method", "scale_by"],
        "ImageScaleToTotalPixels": ["upscale_method", "megapixels", "resolution_steps"],
        "ImageScaleToMaxDimension": ["upscale_method", "largest_size"],
        "UpscaleModelLoader": ["model_name"],
        "ImageUpscaleWithModel": [],
        "GetImageSize": [],
    }
    for class_type, widgets in expected.items():
        spec, comfy = index[class_type]
        assert [comfy.comfy_name(i.name) for i in spec.inputs if not i.socket] == widgets, class_type


# --- upscale models ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_x4(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("upscale") / "models"
    return write_tiny_upscale_model(models / "upscale_models" / "RealESRGAN_x4plus.safetensors")


def test_tiny_model_uses_realesrgan_key_layout(tiny_x4: Path) -> None:
    keys = load_file(str(tiny_x4)).keys()
    assert {"conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_up1.weight",
            "conv_up2.weight", "conv_hr.weight", "conv_last.weight"} <= keys
    assert tiny_x4.stat().st_size < 1_000_000


def test_loader_and_upscale_node_end_to_end(tiny_x4: Path, tmp_path: Path) -> None:
    (tmp_path / "models").symlink_to(tiny_x4.parent.parent)
    model = load_upscale_model(context(tmp_path), "RealESRGAN_x4plus.safetensors")
    assert (model.scale, model.input_channels, model.output_channels, model.architecture) == (4, 3, 3, "ESRGAN")
    events: list = []
    x = smooth_images(2, 24, 20)
    out = image_upscale_with_model(context(tmp_path, events), model, x)
    assert out.shape == (2, 96, 80, 3) and out.dtype == torch.float32 and not out.is_inference()
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert float(out.std()) > 0.01  # the picture depends on the input, not a constant
    assert [data["step"] for kind, data in events if kind == "step"] == [1, 2]  # one tile per image


def test_tiled_equals_untiled_away_from_seams(tiny_x4: Path) -> None:
    model = nets.load_upscale_model(tiny_x4, "graphrun")
    x = smooth_images(1, 72, 88)
    whole = nets.upscale_images(model, x)  # fits one 512 px tile
    steps: list[tuple[int, int]] = []
    tiled = nets.upscale_images(model, x, tile=64, overlap=16, progress=lambda d, t: steps.append((d, t)))
    assert steps == [(i, 4) for i in range(1, 5)]  # 2 x 2 tiles
    # Rows and columns < 46 (low-res) come from the first tile only and lie more than the network's
    # receptive radius (18 px) inside it: identical. Everywhere else only the seams blend.
    torch.testing.assert_close(tiled[:, : 46 * 4, : 46 * 4], whole[:, : 46 * 4, : 46 * 4], rtol=0, atol=1e-5)
    difference = (tiled - whole).abs()
    assert float(difference.mean()) < 2e-3 and float(difference.max()) < 0.1


def test_tiled_scale_blending_is_exact_for_a_local_operation() -> None:
    x = torch.rand(2, 3, 50, 37, generator=torch.Generator().manual_seed(3))

    def nearest(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, scale_factor=4, mode="nearest")

    out = nets.tiled_scale(x, nearest, tile=16, overlap=4, scale=4, out_channels=3)
    torch.testing.assert_close(out, nearest(x), rtol=0, atol=1e-6)
    # ComfyUI's step count: 1 if the side fits, else ceil((side - overlap) / (tile - overlap)).
    assert nets.tile_count(50, 37, 16, 4) == 4 * 3
    assert nets.tile_count(512, 512, 512, 32) == 1 and nets.tile_count(1024, 768, 512, 32) == 3 * 2


@pytest.mark.parametrize("layout", ["realesrgan", "esrgan", "compact"])
@pytest.mark.parametrize("scale", [4, 2, 1])
def test_graphrun_networks_match_spandrel(tmp_path: Path, layout: str, scale: int) -> None:
    if layout == "compact" and scale == 1:
        pytest.skip("Real-ESRGAN Compact has no x1 models")
    if not nets.spandrel_available():
        pytest.skip("spandrel is not installed (optional: pip install --no-deps spandrel einops)")
    path = write_tiny_upscale_model(tmp_path / "m.safetensors", layout=layout, scale=scale)
    ours, theirs = nets.load_upscale_model(path, "graphrun"), nets.load_upscale_model(path, "spandrel")
    assert (ours.scale, ours.architecture) == (theirs.scale, theirs.architecture) == (scale, theirs.architecture)
    x = torch.rand(1, 3, 21, 17, generator=torch.Generator().manual_seed(4))  # odd sizes: padding paths
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    # Where torchvision cannot load, spandrel was imported with a stand-in that must be gone again.
    left = sys.modules.get("torchvision.transforms.functional")
    assert left is None or getattr(left, "rotate", None) is not nets._rotate


def test_esrgan_key_layouts_load_to_the_same_network(tmp_path: Path) -> None:
    new = write_tiny_upscale_model(tmp_path / "new.safetensors", layout="realesrgan")
    old = write_tiny_upscale_model(tmp_path / "old.safetensors", layout="esrgan")
    assert "model.1.sub.1.weight" in load_file(str(old))  # the trunk conv after one RRDB block
    rename = {"conv_body": "trunk_conv", "conv_up1": "upconv1", "conv_up2": "upconv2", "conv_hr": "HRconv"}

    def bsrgan_key(key: str) -> str:  # BSRGAN/RealSR names: RRDB_trunk.N.RDBm.convK, trunk_conv, upconvN, HRconv
        if key.startswith("body."):
            return key.replace("body.", "RRDB_trunk.", 1).replace(".rdb", ".RDB")
        head, _, kind = key.rpartition(".")
        return f"{rename.get(head, head)}.{kind}"

    bsrgan = {bsrgan_key(key): value for key, value in load_file(str(new)).items()}
    assert {"RRDB_trunk.0.RDB3.conv5.weight", "trunk_conv.bias", "upconv2.weight", "HRconv.weight"} <= bsrgan.keys()
    save_file(bsrgan, str(tmp_path / "bsrgan.safetensors"))
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(5))
    reference = nets.load_upscale_model(new, "graphrun")(x)
    for path in (old, tmp_path / "bsrgan.safetensors"):
        torch.testing.assert_close(nets.load_upscale_model(path, "graphrun")(x), reference, rtol=0, atol=0)


class _CallsAFunction:
    """Unpickling this calls os.getcwd(): the shape of a malicious checkpoint, without the harm."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_pickle_files_load_only_plain_tensors(tiny_x4: Path, tmp_path: Path) -> None:
    state = load_file(str(tiny_x4))
    torch.save({"params_ema": state}, tmp_path / "wrapped.pth")  # Real-ESRGAN's training checkpoint layout
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    expected = nets.load_upscale_model(tiny_x4, "graphrun")(x)
    torch.testing.assert_close(nets.load_upscale_model(tmp_path / "wrapped.pth", "graphrun")(x), expected)
    torch.save({"state": state, "hook": _CallsAFunction()}, tmp_path / "objects.pth")
    with pytest.raises(nets.UpscaleModelError, match="safetensors"):
        nets.load_upscale_model(tmp_path / "objects.pth")


def test_upscale_model_with_nan_weights_is_refused(tiny_x4: Path, tmp_path: Path) -> None:
    state = load_file(str(tiny_x4))
    state["conv_last.weight"] = state["conv_last.weight"].clone()
    state["conv_last.weight"].view(-1)[3] = float("nan")
    save_file(state, str(tmp_path / "nan_x4.safetensors"))
    with pytest.raises(nets.UpscaleModelError, match=r"nan_x4.safetensors.*NaN/Inf weights: tensor 'conv_last.weight'"):
        nets.load_upscale_model(tmp_path / "nan_x4.safetensors")


def test_unsupported_files_say_what_to_do(tmp_path: Path) -> None:
    save_file({"layers.0.attn.qkv.weight": torch.zeros(3, 3)}, str(tmp_path / "swin.safetensors"))
    with pytest.raises(nets.UpscaleModelError, match="spandrel"):
        nets.load_upscale_model(tmp_path / "swin.safetensors", "graphrun")
    (tmp_path / "broken.safetensors").write_bytes(b"not a model")
    with pytest.raises(nets.UpscaleModelError, match="broken.safetensors"):
        nets.load_upscale_model(tmp_path / "broken.safetensors")
    with pytest.raises(FileNotFoundError, match="upscale_models"):
        load_upscale_model(context(tmp_path), "missing_x4.safetensors")


def test_channel_mismatch_is_reported(tiny_x4: Path) -> None:
    model = nets.load_upscale_model(tiny_x4, "graphrun")
    with pytest.raises(ValueError, match="4 channels"):
        nets.upscale_images(model, torch.rand(1, 8, 8, 4))


class _NeedsSmallTiles(torch.nn.Module):
    """Nearest x2 upscaling that runs out of memory on inputs larger than 130 px."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > 130:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return F.interpolate(x, scale_factor=2, mode="nearest")


def test_out_of_memory_halves_the_tile(tmp_path: Path) -> None:
    net = _NeedsSmallTiles()
    model = nets.UpscaleModel(
        net=net, scale=2, input_channels=3, output_channels=3, architecture="test", backend="graphrun"
    )
    x = torch.rand(1, 300, 260, 3, generator=torch.Generator().manual_seed(7))
    out = nets.upscale_images(model, x)
    assert net.sizes[0] == 300 and max(net.sizes[1:3]) == 256 and max(net.sizes[-1:]) <= 128  # 512 -> 256 -> 128
    torch.testing.assert_close(out, F.interpolate(x.movedim(-1, 1), scale_factor=2).movedim(1, -1), rtol=0, atol=1e-6)
    net.sizes.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        nets.upscale_images(model, torch.rand(1, 300, 300, 3), tile=200)  # 200 fails, 100 < 128: give up


def test_ctrl_c_stops_at_a_tile_boundary(tiny_x4: Path, tmp_path: Path) -> None:
    model = nets.load_upscale_model(tiny_x4, "graphrun")
    stop = threading.Event()
    events: list = []
    ctx = context(tmp_path, events, stop)
    calls = []
    original = model.net.forward
    model.net.forward = lambda x: (calls.append(1), stop.set(), original(x))[-1]  # Ctrl-C during tile 1
    with pytest.raises(Interrupted):
        image_upscale_with_model(ctx, model, smooth_images(3, 16, 16))
    assert len(calls) == 1 and model.device.type == "cpu"


def test_upscaler_pipeline_graph(tiny_x4: Path, tmp_path: Path) -> None:
    """The image half of ComfyUI's Z-Image 2k upscaler template: about 1 MP, x4 model, then half size."""
    doc = {
        "nodes": {
            "picture": {"type": "LoadImage", "image": str(GRADIENT)},
            "fit": {"type": "ImageScaleToTotalPixels", "image": "picture.image", "method": "lanczos",
                    "megapixels": 0.01, "resolution_steps": 1},
            "esrgan": {"type": "LoadUpscaleModel", "name": "RealESRGAN_x4plus.safetensors"},
            "up": {"type": "ImageUpscaleWithModel", "upscale_model": "esrgan", "image": "fit"},
            "half": {"type": "ImageScaleBy", "image": "up", "method": "lanczos", "scale_by": 0.5},
            "size": {"type": "GetImageSize", "image": "half"},
            "save": {"type": "SaveImage", "images": "half", "filename_prefix": "upscaled"},
        }
    }
    with PILImage.open(GRADIENT) as img:
        width, height = total_pixels_size(*img.size, 0.01)
    runner = Runner(RunOptions(output_dir=tmp_path, extra={"models_dirs": [str(tiny_x4.parent.parent)]}))
    result = graphrun.load(doc, runner=runner).run()
    with PILImage.open(result.files[0]) as img:
        assert img.size == (width * 2, height * 2)
