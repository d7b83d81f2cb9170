"""graphrun's Z-Image denoiser gives ComfyUI 0.33's model output bit for bit (CPU, float32, 1 thread).

ComfyUI 0.33's int8 layers quantize their activations per row, so a last-bit difference anywhere
before a layer changes its int8 codes; the transformer forward therefore has to reproduce ComfyUI's
NextDiT exactly, not just closely (see nodes/zimage/comfy_forward.py and the data README).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graphrun.nodes.zimage.loading import load_transformer_file
from graphrun.nodes.zimage.network import ZImageDenoiser
from graphrun.nodes.zimage.tiny import COMFY_TRANSFORMER, tiny_comfy_dir
from graphrun.nodes.zimage.tiny_quantized import content_sha256

DATA = Path(__file__).parent / "data" / "comfy" / "v0.33" / "dit_forward"
TRANSFORMER_SHA256 = "89db05344eb286dd3e46480089fbab5d5ce65288a5da1c798a52a5244c82c332"
# The references were computed with torch's x86 MKL build and MKL_CBWR=COMPATIBLE (tests/conftest.py):
# other BLAS libraries sum in other orders, so the last bits are only comparable there.
pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="references need torch with MKL (x86)")


@pytest.fixture(scope="module")
def denoiser() -> ZImageDenoiser:
    path = tiny_comfy_dir() / COMFY_TRANSFORMER
    assert content_sha256(path) == TRANSFORMER_SHA256, f"{path} differs from the file ComfyUI ran"
    return ZImageDenoiser(load_transformer_file(path, "cpu", torch.float32), device=torch.device("cpu"))


@pytest.mark.parametrize("case", ["a", "b"], ids=["batch2_24x24_caption45", "odd_15x17_caption32"])
def test_denoised_equals_comfyui_033_bit_for_bit(denoiser, one_thread, case):
    calls = load_file(DATA / "calls.safetensors")
    x, sigma, context = calls[f"{case}.x"], calls[f"{case}.sigma"], calls[f"{case}.context"]
    out = denoiser.apply_model(x, sigma, context)
    expected = calls[f"{case}.denoised"]
    assert out.shape == expected.shape and out.dtype == expected.dtype
    equal = float((out == expected).float().mean())
    assert torch.equal(out, expected), (
        f"case {case}: {equal:.2%} of values bit-equal, max diff {float((out - expected).abs().max()):.3g}")


def test_rows_with_different_caption_lengths_compute_as_if_alone(denoiser, one_thread):
    """A list of captions of different lengths: each row gives what it gives in a batch of its own."""
    calls = load_file(DATA / "calls.safetensors")
    x, sigma = calls["a.x"], calls["a.sigma"]
    short, long = calls["b.context"][0], calls["a.context"][1]
    together = denoiser.apply_model(x, sigma, [short, long])
    assert torch.equal(together[:1], denoiser.apply_model(x[:1], sigma[:1], [short]))
    assert torch.equal(together[1:], denoiser.apply_model(x[1:], sigma[1:], [long]))


def test_one_masked_forward_for_different_caption_lengths_equals_each_row_alone(denoiser, one_thread):
    """``forward_mixed`` (the GPUs' one batched forward for rows of different caption lengths, here run on
    the CPU): each row equals its own forward up to float rounding, whether its caption pads to the
    batch's longest or not."""
    from graphrun.nodes.zimage import comfy_forward

    calls = load_file(DATA / "calls.safetensors")
    x, sigma = calls["a.x"], calls["a.sigma"]
    short, long = calls["b.context"][0], calls["a.context"][1]  # 32 and 45 tokens: padded to 32 and 64
    transformer = denoiser.transformer
    with torch.no_grad():
        mixed = comfy_forward.forward_mixed(transformer, x, sigma, [short, long])
        alone = [comfy_forward.forward(transformer, x[i:i + 1], sigma[i:i + 1], c.unsqueeze(0))
                 for i, c in enumerate((short, long))]
    for row, expected in enumerate(alone):
        torch.testing.assert_close(mixed[row:row + 1], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # the rows really differ
