"""Z-Image's prompt conditioning is bit-identical to ComfyUI 0.33's on the CPU in float32.

ComfyUI 0.33's int8 layers quantize activations per row, so a last-bit difference in the conditioning
can change an int8 code in the diffusion model; graphrun therefore runs the Qwen3 encoder in ComfyUI's
operation order (graphrun.nodes.zimage.qwen3_forward). The references are ComfyUI's own CLIPTextEncode
outputs for the tiny encoder in float32 and its int8 (ConvRot) and fp8 copies
(tests/data/comfy/v0.33/text_encoder/README.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from graphrun.nodes.zimage import loading, text
from graphrun.nodes.zimage.tiny_quantized import content_sha256, quantize_state

DATA = Path(__file__).parent / "data" / "comfy"
REF = DATA / "v0.33" / "text_encoder"
FLOAT_ENCODER = DATA / "v0.18.1" / "pipeline" / "models" / "text_encoders" / "qwen_3_4b.safetensors"
EMBEDDINGS = DATA / "v0.18.1" / "pipeline_extra" / "models" / "embeddings"  # tinyemb.safetensors: 3 vectors
PROMPTS: list[str] = json.loads((REF / "prompts.json").read_text())["prompts"]
EMBEDDING_PROMPTS: list[str] = json.loads((REF / "prompts.json").read_text())["embedding_prompts"]
# The quantized copies ComfyUI ran: (format, ConvRot group size), as tiny_quantized.write_quantized_files
# makes them; their content hashes are recorded in ../quantized/files.json.
QUANTIZED = {"qwen_3_4b_int8_convrot": ("int8_convrot", 16), "qwen_3_4b_fp8_mixed": ("float8_e4m3fn", 256)}
ENCODERS = ["qwen_3_4b", *QUANTIZED]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The references were made with 1 intra-op thread (the thread count changes the last bit)."""


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(REF / "conditioning.safetensors"))


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, loading.TextEncoderParts]:
    """The tiny float32 encoder and its int8 / fp8 copies, loaded as the loaders load them."""
    root = tmp_path_factory.mktemp("text_encoders")
    recorded = json.loads((DATA / "v0.33" / "quantized" / "files.json").read_text())
    with safe_open(str(FLOAT_ENCODER), "pt") as handle:
        metadata = dict(handle.metadata() or {})
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    paths = {"qwen_3_4b": FLOAT_ENCODER}
    for name, (fmt, group) in QUANTIZED.items():
        paths[name] = root / f"{name}.safetensors"
        save_file(quantize_state(state, fmt, ("_proj",), group), str(paths[name]), metadata=metadata)
    for name, path in paths.items():
        assert content_sha256(path) == recorded[f"text_encoders/{name}.safetensors"], f"{name} is not the file ComfyUI ran"
    return {name: loading.load_text_encoder_file(path, "cpu", "float32") for name, path in paths.items()}


def _case(encoder: str, index: int):
    # fp8 on the 35-token prompt needs ComfyUI's transposed fp8 weight layout (QuantizedLinear.forward):
    # F.linear on a contiguous W rounds the last bit differently at that length.
    return pytest.param(encoder, index, id=f"{encoder}-{index}")


_CASES = [_case(encoder, index) for encoder in ENCODERS for index in range(len(PROMPTS))]


@pytest.mark.parametrize(("encoder", "index"), _CASES)
def test_conditioning_is_bit_identical_to_comfyui(encoders, reference, encoder, index):
    expected = reference[f"{encoder}.{index}"]
    cond = text.encode_prompt(encoders[encoder], PROMPTS[index])
    assert cond.shape == expected.shape
    equal = (cond == expected).float().mean().item()
    assert torch.equal(cond, expected), f"{equal:.2%} of the values bit-equal, max diff {(cond - expected).abs().max():.3g}"


@pytest.mark.parametrize("index", range(len(EMBEDDING_PROMPTS)))
def test_conditioning_with_an_embedding_is_bit_identical_to_comfyui(encoders, reference, index):
    """`embedding:NAME` vectors spliced into the token embeddings run through the same forward."""
    expected = reference[f"qwen_3_4b.embedding.{index}"]
    cond = text.encode_prompt(encoders["qwen_3_4b"], EMBEDDING_PROMPTS[index], [EMBEDDINGS])
    assert torch.equal(cond, expected)
