"""The sampler and scheduler registries: names, registration and the functions behind the names.

This module never imports torch. Node declarations read their sampler and scheduler choices from
:func:`sampler_names` and :func:`scheduler_names` at the moment a graph is validated, listed or
turned into a JSON Schema, so a plugin that registers a sampler makes it valid everywhere, and
``graphrun validate`` stays fast.

Registering (the decorators are the public API; import them from here)::

    from graphrun.nodes.sampling.registry import register_sampler, register_scheduler

    @register_sampler("my_sampler")
    def sample_mine(model, x, sigmas, *, seed, callback=None, model_sampling=None, **options):
        '''One line: what the method is (the help text).'''

    @register_scheduler("my_schedule")
    def my_schedule(model_sampling, steps):
        '''One line: how the sigmas are spaced.'''

``graphrun.nodes.sampling.samplers`` documents the sampler signature, ``schedules`` the scheduler
one. The built-in names are listed here (ComfyUI's lists, in its order; 0.33 has v0.18.1's) because their
functions live in torch modules that validation must not import; ``tests/test_plugin_samplers.py``
checks that every listed name has a function once those modules are loaded.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = [
    "BUILTIN_SAMPLERS",
    "BUILTIN_SCHEDULERS",
    "DISCARD_PENULTIMATE_SIGMA_SAMPLERS",
    "SAMPLERS",
    "SCHEDULERS",
    "register_sampler",
    "register_scheduler",
    "sampler_names",
    "scheduler_names",
]

BUILTIN_SAMPLERS: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
    "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m",
    "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
    "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
    "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)
"""ComfyUI's ``KSampler.SAMPLERS`` (the same in v0.18.1 and 0.33): the built-in samplers, in the order of the
choice list."""

BUILTIN_SCHEDULERS: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
)
"""ComfyUI's ``SCHEDULER_NAMES`` (the same in v0.18.1 and 0.33): the built-in schedulers, in the order of the
choice list."""

SAMPLERS: dict[str, Callable[..., Any]] = {}
"""Sampler name -> sampler function (filled when the sampler modules are imported, and by plugins)."""

SCHEDULERS: dict[str, Callable[..., Any]] = {}
"""Scheduler name -> function(model_sampling, steps) (filled by ``schedules`` and by plugins)."""

DISCARD_PENULTIMATE_SIGMA_SAMPLERS: set[str] = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}
"""Samplers for which KSampler computes steps+1 sigmas and drops the penultimate one (samplers
registered with ``discard_penultimate_sigma=True`` are added)."""

_SAMPLER_PACKAGE = "graphrun.nodes.sampling.samplers"
_SCHEDULER_MODULE = "graphrun.nodes.sampling.schedules"


def sampler_names() -> list[str]:
    """Every sampler name a graph may use: the built-ins in ComfyUI's order, then registered ones.

    Reads no torch module: the built-in names are known without loading their functions."""
    return _names(BUILTIN_SAMPLERS, SAMPLERS)


def scheduler_names() -> list[str]:
    """Every scheduler name a graph may use: the built-ins in ComfyUI's order, then registered ones."""
    return _names(BUILTIN_SCHEDULERS, SCHEDULERS)


def register_sampler(
    name: str, *, discard_penultimate_sigma: bool = False, replace: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as sampler ``name``.

    The function needs a docstring (its first line is the sampler's help text). A name that is taken,
    built-in names included, is an error naming both definitions, unless ``replace=True`` (overrides
    it for the whole process). Re-running the same definition (a plugin file loaded twice) is fine.
    ``discard_penultimate_sigma``: KSampler computes ``steps + 1`` sigmas and drops the penultimate
    one for this sampler (ComfyUI does so for dpm_2, dpm_2_ancestral, uni_pc, uni_pc_bh2).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        _register("sampler", SAMPLERS, BUILTIN_SAMPLERS, _SAMPLER_PACKAGE, name, fn, replace)
        if discard_penultimate_sigma:
            DISCARD_PENULTIMATE_SIGMA_SAMPLERS.add(name)
        return fn

    return decorate


def register_scheduler(name: str, *, replace: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function ``fn(model_sampling, steps) -> sigmas`` as scheduler ``name``.

    Same rules as :func:`register_sampler`: a docstring is required, a taken name is an error naming
    both definitions unless ``replace=True``.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        _register("scheduler", SCHEDULERS, BUILTIN_SCHEDULERS, _SCHEDULER_MODULE, name, fn, replace)
        return fn

    return decorate


def put_builtins_first(table: dict[str, Callable[..., Any]], builtin_names: tuple[str, ...]) -> None:
    """Reorder ``table`` in place: built-in names in their listed order, then the others as registered
    (a plugin may register before the built-in modules are imported)."""
    builtins = {name: table.pop(name) for name in builtin_names if name in table}
    others = dict(table)
    table.clear()
    table.update(builtins)
    table.update(others)


def _names(builtin_names: tuple[str, ...], table: dict[str, Callable[..., Any]]) -> list[str]:
    return list(builtin_names) + [name for name in table if name not in builtin_names]


def _register(
    kind: str,
    table: dict[str, Callable[..., Any]],
    builtin_names: tuple[str, ...],
    builtin_module: str,
    name: str,
    fn: Callable[..., Any],
    replace: bool,
) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a {kind} name must be a non-empty string, got {name!r} ({_origin(fn)})")
    if not (getattr(fn, "__doc__", None) or "").strip():
        raise ValueError(f"{kind} {name!r} ({_origin(fn)}) needs a docstring: it is the {kind}'s help text")
    builtin = _defined_in(fn, builtin_module)
    if name in builtin_names and name not in table and not builtin:
        # The built-in function is not imported yet (validation runs without torch).
        if not replace:
            raise ValueError(
                f"{kind} {name!r} is a built-in {kind} ({builtin_module}); {_origin(fn)} cannot register "
                "it again (pick another name)"
            )
        importlib.import_module(builtin_module)  # load the built-in first, so that it is the one replaced
    existing = table.get(name)
    if existing is not None and existing is not fn and not replace and _origin(existing) != _origin(fn):
        raise ValueError(
            f"{kind} {name!r} is already registered by {_origin(existing)}; {_origin(fn)} cannot register "
            "it again (pick another name)"
        )
    table[name] = fn


def _defined_in(fn: Callable[..., Any], module: str) -> bool:
    defined = getattr(fn, "__module__", None) or ""
    return defined == module or defined.startswith(module + ".")


def _origin(fn: Callable[..., Any]) -> str:
    """Where a function is defined, for messages: ``qualname (file:line)``."""
    name = getattr(fn, "__qualname__", None) or repr(fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return f"{getattr(fn, '__module__', '?')}.{name}"
    return f"{name} ({code.co_filename}:{code.co_firstlineno})"
