"""(being written) ComfyUI samplers: dpm_solver."""
from __future__ import annotations
