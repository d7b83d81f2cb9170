"""Quantized layers installed in a loaded model: the modules that compute with a ComfyUI checkpoint's
quantized weights at every call (fp8/nvfp4/mxfp8 :class:`QuantizedLinear`, ComfyUI 0.33's int8 and 4-bit
layers), put in place of the model's ``Linear`` layers by :func:`install_quantized_linears`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .quantized import QuantizedWeight, _refuse
from .quantized_int8 import Int8Linear, Int8Weight, add_pre_scale
from .quantized_w4 import W4A4Linear, W4A4Weight

__all__ = ["QuantizedLinear", "Targets", "install_quantized_linears"]


class QuantizedLinear(torch.nn.Module):
    """A Linear layer whose weight stays in its quantized form and is dequantized, in the input's
    dtype, for every call (ComfyUI's mixed-precision Linear on the CPU).

    The quantized tensors are non-persistent buffers stored as integer bit patterns: moving the
    module to a device moves them, while dtype casts (graphrun's float32-compute hooks, ``.to(bf16)``)
    leave them untouched, so no scale is ever rounded.
    """

    def __init__(self, weight: QuantizedWeight, bias: torch.nn.Parameter | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.layer = weight.layer
        self.format = weight.format
        self._dtypes: dict[str, torch.dtype] = {}
        for name in ("data", "scale", "block_scale"):
            tensor = getattr(weight, name)
            if tensor is not None:
                self._dtypes[name] = tensor.dtype
                bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
                self.register_buffer(f"q_{name}", tensor.contiguous().view(bits), persistent=False)
        self.bias = bias

    def quantized_weight(self) -> QuantizedWeight:
        def get(name: str) -> torch.Tensor | None:
            if name not in self._dtypes:
                return None
            return getattr(self, f"q_{name}").view(self._dtypes[name])

        return QuantizedWeight(self.layer, self.format, get("data"), get("scale"), get("block_scale"),
                               (self.out_features, self.in_features))

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.quantized_weight().dequantize(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight(x.dtype)
        if self.format.startswith("float8"):
            # ComfyUI multiplies by the dequantized fp8 weight laid out transposed (x @ W^T with W^T
            # contiguous); F.linear on a contiguous W takes another matmul kernel and differs in the last bit.
            weight = weight.t().contiguous().t()
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}"


#: Where a file's layer lives in the model: ``targets(layer, rows)`` gives (module name, first output
#: row, end row) per part; with ``rows=None`` only the names matter.
Targets = Callable[[str, "int | None"], list[tuple[str, int, int]]]


def _same_name(layer: str, rows: int | None) -> list[tuple[str, int, int]]:
    return [(layer, 0, rows or 0)]


def install_quantized_linears(model: torch.nn.Module, quantized: dict[str, QuantizedWeight], path: str | Path,
                              what: str, *, int8: dict[str, Int8Weight | W4A4Weight] | None = None,
                              pre_scales: dict[str, torch.Tensor] | None = None, targets: Targets = None) -> None:
    """Install the quantized layers in ``model``: ``quantized`` as :class:`QuantizedLinear`
    (dequantized at each call; the text encoder), ``int8`` as :class:`Int8Linear` (ComfyUI 0.33's int8
    matmul at each call), and each ``pre_scales`` entry as a multiplication of that layer's input.

    Call it with the model's Linear layers in place (before the ordinary weights load, or after: a
    bias, if any, stays the module's own). ``targets(layer, rows)`` maps a file's layer to the
    model's modules and their output rows (a fused ``qkv`` split into ``to_q``/``to_k``/``to_v``);
    by default the names are the same.
    """
    where = targets or _same_name
    path = Path(path)
    layers = [(layer, w, w.shape[0]) for layer, w in quantized.items()]
    layers += [(layer, w, w.shape[0]) for layer, w in (int8 or {}).items()]
    for layer, weight, rows in layers:
        for name, start, stop in where(layer, rows):
            module = _linear_at(model, name, layer, path, what, getattr(weight, "format", "int8_tensorwise"))
            if isinstance(weight, (Int8Weight, W4A4Weight)):
                part = weight.rows(start, stop) if (start, stop) != (0, rows) else weight
                replacement: torch.nn.Module = (Int8Linear(part, module.bias) if isinstance(part, Int8Weight)
                                                else W4A4Linear(part, module.bias))
            else:
                if (start, stop) != (0, rows):
                    raise _refuse(what, path, layer, f"is quantized ('{weight.format}') and split across several "
                                  f"layers of the model, which graphrun does not do for this format.")
                replacement = QuantizedLinear(weight, module.bias)
            if (module.out_features, module.in_features) != (stop - start, weight.shape[1]):
                raise _refuse(what, path, layer, f"has a quantized weight of shape {(stop - start, weight.shape[1])}, "
                              f"but the model expects {(module.out_features, module.in_features)}.")
            _replace(model, name, replacement)
    for layer, scale in (pre_scales or {}).items():
        for name, _start, _stop in where(layer, None):
            module = model.get_submodule(name)
            add_pre_scale(module, scale)


def _linear_at(model: torch.nn.Module, name: str, layer: str, path: Path, what: str, fmt: str) -> torch.nn.Linear:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if not isinstance(module, torch.nn.Linear):
        kind = "no layer" if module is None else f"a {type(module).__name__}"
        raise _refuse(what, path, layer, f"is quantized ('{fmt}') but is {kind} in the model; "
                      f"ComfyUI dequantizes Linear layers only. graphrun refuses it rather than load "
                      f"it wrong.")
    return module


def _replace(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
