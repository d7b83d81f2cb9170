"""(being written) ComfyUI samplers: unipc."""
from __future__ import annotations
