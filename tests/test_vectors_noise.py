"""prepare_noise against ComfyUI's reference noise (bit-exact)."""
from __future__ import annotations

import pytest
import torch

from graphrun.nodes.sampling.noise import DisableNoise, RandomNoise, fix_empty_latent_channels, prepare_noise

from toy_model import f32, load, sha256

torch.set_num_threads(1)

CASES = load("noise.json")["cases"]


def _case_id(case: dict) -> str:
    i = case["inputs"]
    shape = "x".join(map(str, i["latent_shape"]))
    bi = "" if i["batch_index"] is None else "-bi" + "_".join(map(str, i["batch_index"]))
    return f"seed{i['seed']}-{shape}{bi}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_prepare_noise(case: dict) -> None:
    i, e = case["inputs"], case["expected"]
    rng_before = torch.random.get_rng_state()
    noise = prepare_noise(torch.zeros(i["latent_shape"]), i["seed"], i["batch_index"])
    assert torch.equal(torch.random.get_rng_state(), rng_before), "the global RNG must not be touched"
    assert list(noise.shape) == e["shape"] and noise.dtype == torch.float32
    flat = noise.reshape(-1)
    assert flat[:32].tolist() == [f32(v) for v in e["first32"]]
    assert flat[-8:].tolist() == [f32(v) for v in e["last8"]]
    assert sha256(noise) == e["sha256"]
    for k, entry_sha in enumerate(e.get("per_batch_entry_sha256", [])):
        assert sha256(noise[k]) == entry_sha


def test_batch_index_duplicates_share_noise() -> None:
    noise = prepare_noise(torch.zeros(3, 16, 4, 4), 7, [2, 0, 2])
    assert torch.equal(noise[0], noise[2])
    full = prepare_noise(torch.zeros(3, 16, 4, 4), 7)
    assert torch.equal(noise[1], full[0]) and torch.equal(noise[0], full[2])


def test_fix_empty_latent_channels() -> None:
    empty4 = torch.zeros(2, 4, 6, 5)
    fixed = fix_empty_latent_channels(empty4, 16)
    assert fixed.shape == (2, 16, 6, 5) and not fixed.any()
    nonzero4 = torch.ones(1, 4, 6, 5)
    assert fix_empty_latent_channels(nonzero4, 16) is nonzero4
    empty16 = torch.zeros(1, 16, 6, 5)
    assert fix_empty_latent_channels(empty16, 16) is empty16


def test_noise_values() -> None:
    latent = torch.zeros(1, 16, 3, 2)
    assert torch.equal(RandomNoise(42).generate(latent), prepare_noise(latent, 42))
    off = DisableNoise()
    assert off.seed == 0 and not off.generate(latent).any()
