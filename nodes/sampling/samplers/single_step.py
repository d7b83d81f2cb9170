"""(being written) ComfyUI samplers: single_step."""
from __future__ import annotations
