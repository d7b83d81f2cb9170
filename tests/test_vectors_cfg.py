"""CFG formula and CFGGuider predictions against ComfyUI (bit-exact), plus batching rules."""
from __future__ import annotations

import pytest
import torch

from graphrun.nodes.sampling.guidance import (
    BasicGuider,
    CFGGuider,
    Conditioning,
    ConditioningEntry,
    Denoiser,
    cfg_function,
)
from graphrun.nodes.sampling.schedules import FlowModelSampling
from toy_model import ToyDenoiser, load, sha256, tensor_of, toy_cond

torch.set_num_threads(1)

CASES = load("cfg.json")["cases"]
FORMULA = [c for c in CASES if c["inputs"]["kind"] == "cfg_function"]
GUIDER = [c for c in CASES if c["inputs"]["kind"] != "cfg_function"]


@pytest.mark.parametrize("case", FORMULA, ids=[f"cfg{c['inputs']['cfg']}" for c in FORMULA])
def test_cfg_function(case: dict) -> None:
    i = case["inputs"]
    d = cfg_function(tensor_of(i["D_cond"]), tensor_of(i["D_uncond"]), i["cfg"])
    assert sha256(d) == case["expected"]["D"]["sha256"]


@pytest.mark.parametrize("case", GUIDER, ids=[f"guider-cfg{c['inputs']['cfg']}" for c in GUIDER])
def test_cfg_guider_prediction(case: dict) -> None:
    i = case["inputs"]
    toy = ToyDenoiser(FlowModelSampling(i["shift"]))
    assert isinstance(toy, Denoiser)
    guider = CFGGuider(toy, toy_cond(i["cond_c"]), toy_cond(i["uncond_c"]), i["cfg"])
    x = tensor_of(i["x"])
    for sigma_value, rec in zip(i["sigmas_probed"], case["expected"]["per_sigma"]):
        sigma = torch.full((x.shape[0],), sigma_value, dtype=torch.float32)
        assert float(sigma[0]) == rec["sigma"]
        toy.calls.clear()
        d = guider(x, sigma)
        assert sha256(d) == rec["D_guided"]["sha256"]
        assert len(toy.calls) == rec["model_forward_calls"]
        assert [{"batch": c["batch"], "c": c["c"]} for c in toy.calls] == rec["forward_batches"]
        assert guider.uses_negative == rec["uncond_evaluated"]
        # The branch predictions themselves.
        assert sha256(toy.apply_model(x, sigma, toy_cond(i["cond_c"]).entries[0].tensor)) == rec["D_cond"]["sha256"]
        assert sha256(toy.apply_model(x, sigma, toy_cond(i["uncond_c"]).entries[0].tensor)) == rec["D_uncond"]["sha256"]
        if rec["matches_formula_bitwise"] and rec["uncond_evaluated"]:
            assert sha256(cfg_function(tensor_of(rec["D_cond"]), tensor_of(rec["D_uncond"]), i["cfg"])) == rec["D_guided"]["sha256"]


def _toy_with_len(c: float, tokens: int) -> Conditioning:
    return Conditioning.from_tensor(torch.full((1, tokens, 4), c))


def test_different_token_counts_run_separately_positive_first() -> None:
    toy = ToyDenoiser(FlowModelSampling(3.0))
    x = torch.randn(2, 16, 3, 2, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.5)
    d = CFGGuider(toy, _toy_with_len(0.5, 7), _toy_with_len(-0.5, 3), 2.0)(x, sigma)
    assert [(c["batch"], c["c"]) for c in toy.calls] == [(2, [0.5, 0.5]), (2, [-0.5, -0.5])]
    toy.calls.clear()
    same = CFGGuider(toy, _toy_with_len(0.5, 3), _toy_with_len(-0.5, 3), 2.0)(x, sigma)
    assert [(c["batch"], c["c"]) for c in toy.calls] == [(4, [-0.5, -0.5, 0.5, 0.5])]
    assert torch.equal(d, same)  # the toy ignores token counts; batching must not change results


def test_cfg_one_skips_negative() -> None:
    toy = ToyDenoiser(FlowModelSampling(3.0))
    x = torch.randn(1, 16, 2, 2)
    sigma = torch.full((1,), 0.3)
    for cfg in (1.0, 1.0 + 1e-10):
        toy.calls.clear()
        d = CFGGuider(toy, toy_cond(0.5), toy_cond(-0.5), cfg)(x, sigma)
        assert len(toy.calls) == 1 and toy.calls[0]["c"] == [0.5]
        assert torch.equal(d, BasicGuider(toy, toy_cond(0.5))(x, sigma))


def test_combined_conditionings_average_by_strength() -> None:
    toy = ToyDenoiser(FlowModelSampling(3.0))
    x = torch.randn(1, 16, 2, 2)
    sigma = torch.full((1,), 0.3)
    a = Conditioning.from_tensor(torch.full((1, 1, 4), 0.5))
    b = Conditioning.from_tensor(torch.full((1, 1, 4), -0.5), strength=3.0)
    d = BasicGuider(toy, a + b)(x, sigma)
    da, db = toy.apply_model(x, sigma, a.entries[0].tensor), toy.apply_model(x, sigma, b.entries[0].tensor)
    torch.testing.assert_close(d, (da + 3.0 * db) / 4.0)


def test_conditioning_values() -> None:
    cond = Conditioning.from_tensor(torch.ones(1, 5, 4), attention_mask=torch.ones(1, 5), pooled_output=torch.ones(1, 8))
    zero = cond.zero_out()
    assert not zero.entries[0].tensor.any() and not zero.entries[0].extras["pooled_output"].any()
    assert zero.entries[0].extras["attention_mask"].all()
    with pytest.raises(TypeError):
        cond.entries[0].extras["x"] = 1  # type: ignore[index]
    with pytest.raises(ValueError, match="not supported"):
        CFGGuider(ToyDenoiser(FlowModelSampling(3.0)), Conditioning((ConditioningEntry(torch.ones(1, 1, 4), {"area": (8, 8, 0, 0)}),)), cond, 2.0)
    with pytest.raises(ValueError):
        ConditioningEntry(torch.ones(5, 4))
