"""LatentUpscale / LatentUpscaleBy against ComfyUI's outputs (bit-exact), plus image scaling."""
from __future__ import annotations

import pytest
import torch

from graphrun.nodes.resample import common_upscale, image_upscale, image_upscale_by, latent_upscale, latent_upscale_by
from toy_model import f32, load, sha256, tensor_of

torch.set_num_threads(1)

DATA = load("latent_upscale.json")
CASES = DATA["cases"]
LATENT = tensor_of(DATA["fixtures"]["latent"])


def _case_id(case: dict) -> str:
    i = case["inputs"]
    if i["node"] == "LatentUpscale":
        return f"{i['upscale_method']}-{i['width']}x{i['height']}-{i['crop']}"
    return f"{i['upscale_method']}-by{i['scale_by']}"


def test_fixture() -> None:
    assert sha256(LATENT) == DATA["fixtures"]["latent"]["sha256"]


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_latent_upscale(case: dict) -> None:
    i, e = case["inputs"], case["expected"]
    if i["node"] == "LatentUpscale":
        out = latent_upscale(LATENT, i["upscale_method"], i["width"], i["height"], i["crop"])
    else:
        out = latent_upscale_by(LATENT, i["upscale_method"], i["scale_by"])
    assert list(out.shape) == e["shape"]
    if "target_wh_latent" in e:
        assert [out.shape[-1], out.shape[-2]] == e["target_wh_latent"]
    if e.get("unchanged"):
        assert torch.equal(out, LATENT)
    values = e["output"].get("data", e["output"].get("first"))
    assert out.reshape(-1)[: len(values)].tolist() == [f32(v) for v in values]
    assert sha256(out) == e["output"]["sha256"]


def test_video_latent_resized_per_frame() -> None:
    video = torch.randn(1, 16, 3, 6, 4)
    out = common_upscale(video, 8, 12, "bilinear", "disabled")
    assert out.shape == (1, 16, 3, 12, 8)
    torch.testing.assert_close(out[:, :, 1], common_upscale(video[:, :, 1], 8, 12, "bilinear", "disabled"))


def test_image_scale() -> None:
    images = torch.rand(2, 30, 40, 3, generator=torch.Generator().manual_seed(0))
    assert image_upscale(images, "bilinear", 0, 0) is images
    assert image_upscale(images, "bicubic", 20, 0).shape == (2, 15, 20, 3)
    assert image_upscale_by(images, "nearest-exact", 1.5).shape == (2, 45, 60, 3)
    out = image_upscale(images, "lanczos", 80, 60)
    assert out.shape == (2, 60, 80, 3) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    # Lanczos works on 8-bit pixels: values are multiples of 1/255.
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-3)
    with pytest.raises(ValueError):
        latent_upscale(LATENT, "lanczos", 64, 64)
