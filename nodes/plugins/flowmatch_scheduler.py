"""The `FlowMatchEulerDiscreteScheduler (Custom)` node used by legacy Z-Image workflows.

Written only against graphrun's public plugin API (``graphrun.node``, ``graphrun.Comfy`` and
the socket types in ``graphrun.nodes.types``), as an example for outside authors: the same file
works with ``graphrun --plugin flowmatch_scheduler.py`` or from a package's
``graphrun.nodes`` entry point.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from graphrun import Comfy, node
from graphrun.nodes.types import Sigmas

Toggle = Literal["enable", "disable"]


@node(
    "FlowMatchSigmas",
    category="sampling/custom",
    comfy=Comfy("FlowMatchEulerDiscreteScheduler (Custom)"),
)
def flowmatch_sigmas(
    steps: Annotated[int, Field(ge=1, le=10_000)] = 9,
    start_at_step: Annotated[int, Field(ge=0, le=10_000)] = 0,
    end_at_step: Annotated[int, Field(ge=0, le=10_000)] = 9999,
    base_image_seq_len: Annotated[int, Field(ge=1)] = 256,
    base_shift: float = 0.5,
    invert_sigmas: Toggle = "disable",
    max_image_seq_len: Annotated[int, Field(ge=1)] = 4096,
    max_shift: float = 1.15,
    num_train_timesteps: Annotated[int, Field(ge=1)] = 1000,
    shift: float = 1.0,
    shift_terminal: float = 0.0,
    stochastic_sampling: Toggle = "disable",
    time_shift_type: Literal["exponential", "linear"] = "exponential",
    use_beta_sigmas: Toggle = "disable",
    use_dynamic_shifting: Toggle = "disable",
    use_exponential_sigmas: Toggle = "disable",
    use_karras_sigmas: Toggle = "disable",
    device: Literal["auto", "cpu", "gpu"] = "auto",
) -> Sigmas:
    """SIGMAS from diffusers' FlowMatchEulerDiscreteScheduler built with this config.

    `set_timesteps(steps, mu=0)`, then the schedule (with its final 0) is sliced
    `[start_at_step : end_at_step + 1]`. `device` is accepted for compatibility; sigmas are
    always computed on the CPU in float32.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    on = {"enable": True, "disable": False}
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=num_train_timesteps,
        shift=shift,
        use_dynamic_shifting=on[use_dynamic_shifting],
        base_shift=base_shift,
        max_shift=max_shift,
        base_image_seq_len=base_image_seq_len,
        max_image_seq_len=max_image_seq_len,
        invert_sigmas=on[invert_sigmas],
        shift_terminal=shift_terminal or None,
        use_karras_sigmas=on[use_karras_sigmas],
        use_exponential_sigmas=on[use_exponential_sigmas],
        use_beta_sigmas=on[use_beta_sigmas],
        time_shift_type=time_shift_type,
        stochastic_sampling=on[stochastic_sampling],
    )
    scheduler.set_timesteps(steps, device="cpu", mu=0.0)
    sigmas = scheduler.sigmas.to(torch.float32)
    return sigmas[start_at_step : end_at_step + 1]
