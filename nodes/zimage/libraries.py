"""The model libraries the Z-Image loaders use, imported once per process with the garbage collector paused.

Importing torch, diffusers' Z-Image classes and transformers' Qwen3 loads some 3,700 modules and creates
millions of long-lived objects. With the cyclic garbage collector running, its full collections walk that
growing heap again and again: about a fifth of the import time (~1.4 s of ~6.9 s on a 2-core CPU), and the
collections at interpreter exit walk it once more (~1.6 s after a cold `graphrun` run). Nothing created
while importing is garbage worth collecting, so the collector is paused meanwhile, and afterwards everything
alive is frozen (``gc.freeze``): later collections, including the ones at exit, skip those objects. Objects
are still freed by reference counting as usual; only cycles among objects that were alive when the libraries
were imported are never collected (``gc.unfreeze()`` gives them back to the collector).

This module itself imports nothing heavy: the loaders call :func:`import_model_libraries` before their own
``import torch``.
"""
from __future__ import annotations

import gc

_imported = False


def import_model_libraries() -> None:
    """Import torch, diffusers' ZImageTransformer2DModel / AutoencoderKL (and their single-file converters),
    transformers' Qwen3 model and tokenizers, accelerate and safetensors, with the collector paused; then
    freeze what is alive. Once per process; an ImportError propagates (and the next call tries again)."""
    global _imported
    if _imported:
        return
    enabled = gc.isenabled()
    gc.collect()  # garbage made before this point is collected now, not frozen
    gc.disable()
    try:
        import accelerate  # noqa: F401
        import huggingface_hub.constants  # noqa: F401
        import safetensors.torch  # noqa: F401
        import torch  # noqa: F401
        from diffusers import AutoencoderKL, ZImageTransformer2DModel  # noqa: F401
        from diffusers.loaders import single_file_utils  # noqa: F401
        from transformers import AutoTokenizer, Qwen2Tokenizer, Qwen3Config, Qwen3Model  # noqa: F401

        _imported = True
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
