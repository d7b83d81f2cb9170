"""(being written) ComfyUI samplers: exponential."""
from __future__ import annotations
