"""graphrun's VAEDecode/VAEEncode give ComfyUI 0.33's tensors bit for bit (CPU, float32, 1 thread).

The Flux VAE decode is the last step before the PNG, so a last-bit difference there can flip a uint8
pixel; graphrun therefore runs ComfyUI's forward order (nodes/zimage/vae_forward.py), its batching and
its memory layouts (nodes/zimage/vae.py). References: tests/data/comfy/v0.33/vae/README.md.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graphrun.nodes.zimage import vae
from graphrun.nodes.zimage.loading import load_vae_file

DATA = Path(__file__).parent / "data" / "comfy" / "v0.33" / "vae"
VAE_FILE = Path(__file__).parent / "data" / "comfy" / "v0.18.1" / "pipeline" / "models" / "vae" / "ae.safetensors"
VAE_SHA256 = "e2488aabc03360bdeb41b3e10702c79d821da59705a1acdf8f3169ba37905600"
# The references were computed with torch's x86 MKL build and MKL_CBWR=COMPATIBLE (tests/conftest.py):
# other BLAS libraries sum in other orders, so the last bits are only comparable there.
pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="references need torch with MKL (x86)")


@pytest.fixture(scope="module")
def ae():
    assert hashlib.sha256(VAE_FILE.read_bytes()).hexdigest() == VAE_SHA256, f"{VAE_FILE} differs from the file ComfyUI ran"
    return load_vae_file(VAE_FILE, "cpu", torch.float32)


@pytest.fixture(scope="module")
def calls() -> dict[str, torch.Tensor]:
    return load_file(DATA / "calls.safetensors")


def _assert_bit_equal(what: str, out: torch.Tensor, expected: torch.Tensor) -> None:
    assert out.shape == expected.shape and out.dtype == expected.dtype, f"{what}: {out.shape} {out.dtype}"
    equal = float((out == expected).float().mean())
    assert torch.equal(out, expected), (
        f"{what}: {equal:.2%} of values bit-equal, max diff {float((out - expected).abs().max()):.3g}")


def test_decode_equals_comfyui_033_bit_for_bit(ae, calls, one_thread):
    """A batch of two odd-sized latents (5x7), decoded together as ComfyUI does on the CPU."""
    image = vae.decode(ae, calls["decode.latent"])
    _assert_bit_equal("decode", image, calls["decode.image"])
    # ComfyUI's IMAGE is its [B, C, H, W] buffer viewed channel-last; later encodes depend on that layout.
    assert image.movedim(-1, 1).is_contiguous()


def test_encode_equals_comfyui_033_bit_for_bit(ae, calls, one_thread):
    """RGBA 43x37: center-cropped to 40x32, alpha dropped, posterior mode."""
    _assert_bit_equal("encode", vae.encode(ae, calls["encode.image"]), calls["encode.latent"])


def test_encoding_a_decoded_image_equals_comfyui_033_bit_for_bit(ae, calls, one_thread):
    """VAEDecode -> VAEEncode (img2img of a generated image): the decoded IMAGE's layout carries over."""
    _assert_bit_equal("re-encode", vae.encode(ae, vae.decode(ae, calls["decode.latent"])), calls["reencode.latent"])
