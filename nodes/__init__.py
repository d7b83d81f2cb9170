"""graphrun.nodes: the built-in diffusion node library (ComfyUI semantics on diffusers).

``MODULES`` lists the modules whose node declarations the registry loads. Node modules
never import torch at import time, so listing and validating graphs stays fast.
"""

MODULES: list[str] = [
    "graphrun.nodes.models",
    "graphrun.nodes.conditioning",
    "graphrun.nodes.latent",
    "graphrun.nodes.sample",
    "graphrun.nodes.vae",
    "graphrun.nodes.image",
    "graphrun.nodes.upscale",
    "graphrun.nodes.plugins.flowmatch_scheduler",
]
