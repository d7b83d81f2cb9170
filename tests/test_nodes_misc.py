"""Node declarations agree with the sampling registries; the bundled FlowMatch plugin works standalone."""
from __future__ import annotations

from pathlib import Path

import torch

from graphrun.engine.node import builtin_registry, make_registry

ROOT = Path(__file__).parent.parent


def test_sampler_and_scheduler_choices_match_the_registries():
    from graphrun.nodes.sampling.samplers import SAMPLERS
    from graphrun.nodes.sampling.schedules import SCHEDULERS

    registry = builtin_registry()
    for node_type, input_name, names in [("Sampler", "sampler", SAMPLERS), ("Sampler", "scheduler", SCHEDULERS),
                                         ("SamplerAdvanced", "sampler", SAMPLERS),
                                         ("SamplerAdvanced", "scheduler", SCHEDULERS),
                                         ("KSamplerSelect", "sampler", SAMPLERS),
                                         ("BasicScheduler", "scheduler", SCHEDULERS)]:
        spec = registry.get(node_type).input(input_name)
        assert spec.type_name == "COMBO" and list(spec.choices) == list(names), (node_type, input_name)


def test_every_builtin_node_is_documented_and_declares_its_comfy_counterpart_where_one_exists():
    registry = builtin_registry()
    for spec in registry:
        assert spec.summary, f"{spec.name} has no docstring"
    comfy = registry.comfy_index()
    for class_type in ["KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced", "KSamplerSelect",
                       "BasicScheduler", "RandomNoise", "DisableNoise", "CFGGuider", "BasicGuider", "SplitSigmas",
                       "UNETLoader", "CLIPLoader", "VAELoader", "LoraLoader", "LoraLoaderModelOnly",
                       "ModelSamplingAuraFlow", "ModelSamplingSD3", "CLIPTextEncode", "ConditioningZeroOut",
                       "EmptySD3LatentImage", "EmptyLatentImage", "LatentUpscale", "LatentUpscaleBy", "VAEDecode",
                       "VAEEncode", "LoadImage", "SaveImage", "PreviewImage",
                       "FlowMatchEulerDiscreteScheduler (Custom)"]:
        assert class_type in comfy, class_type


def test_flowmatch_plugin_loads_standalone_and_matches_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    registry = make_registry([ROOT / "nodes" / "plugins" / "flowmatch_scheduler.py"], builtins=False)
    spec = registry.get("FlowMatchSigmas")
    assert spec is not None and spec.comfy[0].class_type == "FlowMatchEulerDiscreteScheduler (Custom)"
    sigmas = spec.fn(steps=9, shift=3.0, max_image_seq_len=8192)
    reference = FlowMatchEulerDiscreteScheduler(shift=3.0)
    reference.set_timesteps(9, mu=0.0)
    assert torch.equal(sigmas, reference.sigmas.float())
    assert len(sigmas) == 10 and sigmas[-1] == 0 and abs(float(sigmas[0]) - 1.0) < 1e-6
    assert torch.equal(spec.fn(steps=9, shift=3.0, start_at_step=2, end_at_step=5), reference.sigmas.float()[2:6])


def test_every_package_folder_is_listed_in_pyproject():
    """A subpackage missing from pyproject's explicit list would vanish from built wheels."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"graphrun"} | {
        "graphrun." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("engine", "nodes")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found == listed


def test_tiny_models_dir_serves_every_file_the_official_templates_name():
    """`--models-dir tiny` must resolve each model file the shipped templates refer to."""
    import re

    from graphrun.nodes.model_files import resolve_model_file

    wanted = set()
    for template in (ROOT / "tests" / "data" / "comfy" / "templates").glob("*.json"):
        text = template.read_text()
        for name in set(re.findall(r'"([\w.\-]+\.safetensors)"', text)):
            wanted.add(name)
    assert wanted >= {"z_image_turbo_bf16.safetensors", "RealESRGAN_x4plus.safetensors"}
    folders = {"z_image_turbo_bf16.safetensors": "diffusion_models", "z_image_bf16.safetensors": "diffusion_models",
               "qwen_3_4b.safetensors": "text_encoders", "ae.safetensors": "vae",
               "RealESRGAN_x4plus.safetensors": "upscale_models",
               # the int8 templates' files (ComfyUI 0.33): int8 transformers, fp8-mixed text encoder
               "z_image_int8_convrot.safetensors": "diffusion_models",
               "z_image_turbo_int8_convrot.safetensors": "diffusion_models",
               "qwen_3_4b_fp8_mixed.safetensors": "text_encoders"}
    assert wanted <= set(folders), wanted - set(folders)
    for name in wanted:
        assert resolve_model_file(name, folders[name], ["tiny"]).is_file()


def test_split_sigmas_denoise_and_manual_sigmas():
    from graphrun.nodes.sample import manual_sigmas, split_sigmas, split_sigmas_denoise

    sigmas = manual_sigmas("1.0, 0.8 0.5;0.25 0")
    assert sigmas.dtype == torch.float32 and sigmas.tolist() == [1.0, 0.800000011920929, 0.5, 0.25, 0.0]
    high, low = split_sigmas_denoise(sigmas, 0.5)  # 4 steps -> the low part gets 2
    assert high.tolist() == sigmas[:3].tolist() and low.tolist() == sigmas[2:].tolist()
    high, low = split_sigmas_denoise(sigmas, 0.0)
    assert high.tolist() == [] and low.tolist() == [0.0]
    high, low = split_sigmas(sigmas, 1)
    assert high.tolist() == sigmas[:2].tolist() and low.tolist() == sigmas[1:].tolist()
    import pytest

    with pytest.raises(ValueError, match="no numbers"):
        manual_sigmas("none")


def test_add_noise_follows_flow_noise_scaling():
    from graphrun.nodes.latent import LatentValue
    from graphrun.nodes.sample import add_noise
    from graphrun.nodes.sampling.noise import RandomNoise, prepare_noise

    class Handle:
        shift = 3.0

    latent = torch.randn([1, 16, 4, 4], generator=torch.Generator().manual_seed(1))
    sigmas = torch.tensor([0.75, 0.5, 0.0])
    out = add_noise(Handle(), RandomNoise(7), sigmas, LatentValue(latent)).samples
    eps = prepare_noise(latent, 7)
    expected = ((latent - 0.1159) * 0.3611 * 0.25 + 0.75 * eps) / 0.3611 + 0.1159
    assert torch.allclose(out, expected, atol=1e-6)
    assert add_noise(Handle(), RandomNoise(7), sigmas[:0], LatentValue(latent)).samples is latent
