"""(being written) ComfyUI samplers: multistep."""
from __future__ import annotations
