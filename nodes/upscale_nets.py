"""Super-resolution models for ImageUpscaleWithModel: reading files, the networks, tiled inference.

This module imports torch; node modules import it lazily (see :mod:`graphrun.nodes.upscale`).

Loading follows ComfyUI's ``UpscaleModelLoader``: the file's state dict goes to spandrel, which
recognises the architecture from the key names and shapes (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT,
OmniSR, SPAN, ...). spandrel is optional (the ``upscale`` extra): its package requires torchvision,
and pip then replaces a CPU-only torch wheel with a multi-GB CUDA build or installs a torchvision that
cannot load next to it. Without spandrel, graphrun runs the models most upscaling workflows use on its
own implementation of the networks:

* ESRGAN / RRDBNet in all three key layouts (original ESRGAN ``model.N``, BSRGAN/RealSR
  ``RRDB_trunk``, Real-ESRGAN ``body.N.rdbM``), including Real-ESRGAN's pixel-unshuffle x2/x1 models
  (RealESRGAN_x4plus, RealESRGAN_x2plus, 4x-UltraSharp, 4x_NMKD-*, ...);
* Real-ESRGAN Compact (SRVGGNetCompact: realesr-general-x4v3, realesr-animevideov3, ...).

Both paths produce the same pixels up to float rounding (tests compare them when spandrel is
installed). spandrel imports torchvision for two architectures graphrun never runs through this node
(LaMa inpainting's ``rotate`` and RestoreFormer's ``normalize``); where torchvision is missing or
cannot load, a stand-in module is placed in ``sys.modules`` for the duration of ``import spandrel``
only, so ``pip install --no-deps spandrel einops`` is enough.

Pickle files (.pth/.pt/.ckpt/.bin/.pkl) are read only with ``torch.load(weights_only=True)``,
PyTorch's restricted unpickler that rebuilds tensors and plain containers and refuses anything else
(what ComfyUI does with ``safe_load=True``); it is used only on torch >= 2.6, the first release where
that mode had no known way around it. safetensors files are preferred and need nothing of the kind.
"""
from __future__ import annotations

import contextlib
import enum
import importlib.machinery
import importlib.util
import itertools
import math
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PICKLE_SUFFIXES",
    "UpscaleModel",
    "UpscaleModelError",
    "canonical_state_dict",
    "load_upscale_model",
    "model_from_state_dict",
    "read_state_dict",
    "spandrel_available",
    "tile_count",
    "tiled_scale",
    "upscale_images",
    "write_tiny_upscale_model",
]

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl", ".pt2")
Backend = Literal["auto", "spandrel", "graphrun"]


class UpscaleModelError(ValueError):
    """An upscale model file that cannot be read or whose architecture is not supported."""


# --- reading files ------------------------------------------------------------------------------------------------


def _weights_only_is_safe() -> bool:
    from torch.torch_version import TorchVersion

    return TorchVersion(torch.__version__) >= (2, 6)


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The tensors of a model file: safetensors directly, pickle files only through weights_only."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not _weights_only_is_safe():
            raise UpscaleModelError(
                f"'{path.name}' is a pickle file and torch {torch.__version__} cannot read pickle files safely "
                "(weights_only=True needs torch >= 2.6); convert it to .safetensors or upgrade torch"
            )
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # the restricted unpickler refused the file, or it is not a torch file
            raise UpscaleModelError(
                f"'{path.name}' could not be read as plain tensors ({type(exc).__name__}: {exc}); "
                "graphrun never unpickles arbitrary objects: convert the model to .safetensors"
            ) from None
        if not isinstance(loaded, dict):
            raise UpscaleModelError(f"'{path.name}' holds a {type(loaded).__name__}, not a state dict")
        return loaded
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise UpscaleModelError(f"'{path.name}' is not a readable safetensors file: {exc}") from None
    except OSError as exc:
        raise UpscaleModelError(f"'{path}' could not be read: {exc}") from None


def canonical_state_dict(state: dict[str, Any]) -> dict[str, Tensor]:
    """Unwrap training checkpoints (``params_ema``, ``state_dict``, ...) and drop a ``module.``/``netG.``
    prefix common to every key (DataParallel and GAN trainers add them)."""
    for key in ("model_state_dict", "state_dict", "params_ema", "params-ema", "params", "model", "net"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    if len(state) == 1 and isinstance(next(iter(state.values())), dict):
        state = next(iter(state.values()))
    for prefix in ("module.", "netG."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


# --- the model handle ---------------------------------------------------------------------------------------------


def _pad_to(x: Tensor, multiple: int, minimum: int) -> Tensor:
    """Pad right/bottom to a size that is >= minimum and a multiple of ``multiple``: reflect as far as
    reflection reaches, replicate beyond (spandrel's rule, so both backends see the same pixels)."""
    h, w = x.shape[-2:]
    pad_h = math.ceil(max(minimum, h) / multiple) * multiple - h
    pad_w = math.ceil(max(minimum, w) / multiple) * multiple - w
    if not (pad_h or pad_w):
        return x
    reflect_h, reflect_w = min(pad_h, h - 1), min(pad_w, w - 1)
    x = F.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect")
    return F.pad(x, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")


@dataclass(frozen=True, eq=False)
class UpscaleModel:
    """UPSCALE_MODEL: a loaded super-resolution network.

    ``net`` is a spandrel ``ImageModelDescriptor`` (backend ``spandrel``) or graphrun's own module
    (backend ``graphrun``). Calling the handle on ``[1, C, H, W]`` pixels in [0, 1] returns
    ``[1, C', H*scale, W*scale]`` clamped to [0, 1], padding odd sizes the way spandrel does.
    """

    net: Any
    scale: int
    input_channels: int
    output_channels: int
    architecture: str
    backend: str
    size_multiple: int = 1
    size_minimum: int = 1

    def to(self, device: torch.device | str) -> "UpscaleModel":
        self.net.to(device)
        return self

    @property
    def device(self) -> torch.device:
        if self.backend == "spandrel":
            return self.net.device
        return next(self.net.parameters()).device

    def __call__(self, image: Tensor) -> Tensor:
        if self.backend == "spandrel":
            return self.net(image)
        h, w = image.shape[-2:]
        with torch.inference_mode():
            out = self.net(_pad_to(image, self.size_multiple, self.size_minimum)).clamp_(0, 1)
        return out[..., : h * self.scale, : w * self.scale]


# --- graphrun's own networks: ESRGAN (RRDBNet) and Real-ESRGAN Compact -------------------------------------------


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


class _DenseBlock(nn.Module):
    """Residual dense block: five 3x3 convs, each seeing every earlier feature map; output scaled 0.2."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        for i in range(4):
            self.add_module(f"conv{i + 1}", _conv(nf + i * gc, gc))
        self.conv5 = _conv(nf + 4 * gc, nf)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2, inplace=True))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class _RRDB(nn.Module):
    """Residual-in-residual dense block (three dense blocks, residual scaled 0.2)."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = _DenseBlock(nf, gc), _DenseBlock(nf, gc), _DenseBlock(nf, gc)

    def forward(self, x: Tensor) -> Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator (Wang et al. 2018) with Real-ESRGAN's optional pixel-unshuffle input.

    Parameter names follow the Real-ESRGAN (BasicSR) layout: ``conv_first``, ``body.N.rdbM.convK``,
    ``conv_body``, ``conv_upN`` (one per x2 nearest-neighbour upsampling), ``conv_hr``, ``conv_last``.
    """

    def __init__(self, *, in_nc: int, out_nc: int, nf: int, nb: int, gc: int, upsamples: int, shuffle: int) -> None:
        super().__init__()
        self.shuffle = shuffle
        self.scale = 2**upsamples // shuffle
        self.conv_first = _conv(in_nc, nf)
        self.body = nn.Sequential(*[_RRDB(nf, gc) for _ in range(nb)])
        self.conv_body = _conv(nf, nf)
        self.ups = [f"conv_up{i + 1}" for i in range(upsamples)]
        for name in self.ups:
            self.add_module(name, _conv(nf, nf))
        self.conv_hr = _conv(nf, nf)
        self.conv_last = _conv(nf, out_nc)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.shuffle > 1:
            pad_h, pad_w = -h % self.shuffle, -w % self.shuffle
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
            x = F.pixel_unshuffle(x, self.shuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for name in self.ups:
            feat = getattr(self, name)(F.interpolate(feat, scale_factor=2, mode="nearest"))
            feat = F.leaky_relu(feat, 0.2, inplace=True)
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2, inplace=True))
        return out[..., : h * self.scale, : w * self.scale] if self.shuffle > 1 else out


class CompactNet(nn.Module):
    """Real-ESRGAN Compact (SRVGGNetCompact): 3x3 convs with PReLU at low resolution, a pixel shuffle,
    plus the nearest-neighbour upscaled input (the network learns the residual)."""

    def __init__(self, *, in_nc: int, out_nc: int, nf: int, num_conv: int, scale: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(in_nc, nf), nn.PReLU(nf)]
        for _ in range(num_conv):
            layers += [_conv(nf, nf), nn.PReLU(nf)]
        layers.append(_conv(nf, out_nc * scale * scale))
        self.body = nn.Sequential(*layers)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        out = F.pixel_shuffle(self.body(x), self.scale)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")


_RDB_KEY = re.compile(r"(?:body|RRDB_trunk)\.(\d+)\.(?:rdb|RDB)([123])\.conv([1-5])\.(weight|bias)$")
_OLD_RDB_KEY = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)$")


def _esrgan_layout(state: dict[str, Tensor]) -> str | None:
    keys = state.keys()
    if {"conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_last.weight"} <= keys:
        return "realesrgan"
    if {"conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight", "trunk_conv.weight", "conv_last.weight"} <= keys:
        return "bsrgan"
    if {"model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"} <= keys:
        return "esrgan"
    return None


def _to_realesrgan_keys(state: dict[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Rename ESRGAN/BSRGAN keys to the Real-ESRGAN layout of :class:`RRDBNet`."""
    if layout == "realesrgan":
        return dict(state)
    out: dict[str, Tensor] = {}
    if layout == "bsrgan":
        renames = {"trunk_conv": "conv_body", "HRconv": "conv_hr"}
        for key, value in state.items():
            match = _RDB_KEY.match(key)
            if match:
                block, rdb, conv, kind = match.groups()
                out[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
                continue
            head, _, kind = key.rpartition(".")
            head = renames.get(head, head)
            up = re.fullmatch(r"upconv(\d)", head)
            out[f"conv_up{up.group(1)}.{kind}" if up else f"{head}.{kind}"] = value
        return out
    # Original ESRGAN: a flat nn.Sequential. model.0 is the first conv, model.1 the residual trunk
    # (dense blocks, then the trunk conv at index num_blocks), then per x2 stage [upsample, conv, act],
    # then the HR conv, an activation and the last conv.
    blocks = {int(m.group(1)) for m in map(_OLD_RDB_KEY.match, state) if m}
    nb = max(blocks) + 1
    tail = sorted({int(k.split(".")[1]) for k in state if re.fullmatch(r"model\.\d+\.(weight|bias)", k)} - {0})
    if len(tail) < 2:
        raise UpscaleModelError("ESRGAN file without its final convolutions")
    names = {0: "conv_first", tail[-1]: "conv_last", tail[-2]: "conv_hr"}
    names.update({index: f"conv_up{i + 1}" for i, index in enumerate(tail[:-2])})
    for key, value in state.items():
        match = _OLD_RDB_KEY.match(key)
        if match:
            block, rdb, conv, kind = match.groups()
            out[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif key.startswith(f"model.1.sub.{nb}."):
            out["conv_body." + key.rsplit(".", 1)[1]] = value
        elif re.fullmatch(r"model\.\d+\.(weight|bias)", key):
            _, index, kind = key.split(".")
            out[f"{names[int(index)]}.{kind}"] = value
        else:
            out[key] = value  # unexpected keys make load_state_dict fail with their names
    return out


def _rrdbnet(state: dict[str, Tensor], layout: str) -> tuple[nn.Module, dict[str, Any]]:
    if any(".conv1x1." in k for k in state):
        raise UpscaleModelError("ESRGAN+ models need spandrel")
    state = _to_realesrgan_keys(state, layout)
    in_nc = state["conv_first.weight"].shape[1]
    out_nc = state["conv_last.weight"].shape[0]
    nf = state["conv_first.weight"].shape[0]
    gc = state["body.0.rdb1.conv1.weight"].shape[0]
    nb = len({int(m.group(1)) for m in map(_RDB_KEY.match, state) if m})
    upsamples = len([k for k in state if re.fullmatch(r"conv_up\d+\.weight", k)])
    shuffle = 1
    if in_nc in (out_nc * 4, out_nc * 16):
        shuffle = int(math.isqrt(in_nc // out_nc))
    if 2**upsamples < shuffle:
        raise UpscaleModelError("ESRGAN variant with more pixel-unshuffle than upsampling")
    net = RRDBNet(in_nc=in_nc, out_nc=out_nc, nf=nf, nb=nb, gc=gc, upsamples=upsamples, shuffle=shuffle)
    net.load_state_dict(state, strict=True)
    meta = {
        "architecture": "ESRGAN",
        "scale": net.scale,
        "input_channels": in_nc // (shuffle * shuffle),
        "output_channels": out_nc,
        "size_multiple": 4 if shuffle > 1 else 1,
        "size_minimum": 2,
    }
    return net, meta


def _compact(state: dict[str, Tensor]) -> tuple[nn.Module, dict[str, Any]]:
    indices = sorted({int(k.split(".")[1]) for k in state if re.fullmatch(r"body\.\d+\.(weight|bias)", k)})
    last = indices[-1]
    in_nc, nf = state["body.0.weight"].shape[1], state["body.0.weight"].shape[0]
    num_conv = (last - 2) // 2
    channels = state[f"body.{last}.weight"].shape[0]
    for out_nc in dict.fromkeys((in_nc, 3, 1, 4)):
        scale = math.isqrt(channels // out_nc) if channels % out_nc == 0 else 0
        if scale and scale * scale * out_nc == channels:
            break
    else:
        raise UpscaleModelError(f"Compact model with {channels} output channels: scale not recognised")
    net = CompactNet(in_nc=in_nc, out_nc=out_nc, nf=nf, num_conv=num_conv, scale=scale)
    net.load_state_dict(state, strict=True)
    meta = {"architecture": "RealESRGAN Compact", "scale": scale, "input_channels": in_nc, "output_channels": out_nc}
    return net, meta


def _native_model(state: dict[str, Tensor]) -> UpscaleModel | None:
    """graphrun's implementation when it knows the architecture, else None."""
    layout = _esrgan_layout(state)
    if layout is not None:
        net, meta = _rrdbnet(state, layout)
    elif {"body.0.weight", "body.1.weight"} <= state.keys():
        net, meta = _compact(state)
    else:
        return None
    return UpscaleModel(net=net.eval().requires_grad_(False), backend="graphrun", **meta)


# --- spandrel -----------------------------------------------------------------------------------------------------


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _normalize(tensor: Tensor, mean: list[float], std: list[float], inplace: bool = False) -> Tensor:
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub_(mean_t).div_(std_t) if inplace else (tensor - mean_t) / std_t


def _rotate(*args: Any, **kwargs: Any) -> Tensor:
    raise RuntimeError("this model (LaMa inpainting) needs torchvision, which cannot be imported here")


@contextlib.contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    """Make ``import spandrel`` work where torchvision is absent or broken (see the module docstring)."""
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:  # ImportError, or torchvision built for another torch (RuntimeError at import)
        pass
    else:
        yield
        return
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = _InterpolationMode  # type: ignore[attr-defined]
    functional.normalize = _normalize  # type: ignore[attr-defined]
    functional.rotate = _rotate  # type: ignore[attr-defined]
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    root = types.ModuleType("torchvision")
    root.transforms = transforms  # type: ignore[attr-defined]
    stand_ins = {
        "torchvision": root,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }
    for name, module in stand_ins.items():
        # A real spec keeps importlib.util.find_spec() callers (transformers, diffusers) from raising meanwhile.
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if sys.modules.get(name) is stand_ins[name]:
                if previous is None:
                    del sys.modules[name]
                else:
                    sys.modules[name] = previous


_SPANDREL: Any = None  # the module once imported; False when it cannot be
_spandrel_problem = ""


def _spandrel() -> Any:
    """The spandrel module (with spandrel_extra_arches registered when installed, as ComfyUI does), or None."""
    global _SPANDREL, _spandrel_problem
    if _SPANDREL is None:
        _SPANDREL = False
        if importlib.util.find_spec("spandrel") is None:
            _spandrel_problem = (
                "spandrel is not installed (pip install spandrel; beside a CPU-only torch wheel "
                "pip install --no-deps spandrel einops)"
            )
            return None
        try:
            with _torchvision_stand_in():
                import spandrel
        except Exception as exc:  # installed but broken: say so rather than pretend it is absent
            _spandrel_problem = f"spandrel is installed but failed to import ({type(exc).__name__}: {exc})"
            return None
        try:
            from spandrel_extra_arches import EXTRA_REGISTRY

            spandrel.MAIN_REGISTRY.add(*EXTRA_REGISTRY)
        except ImportError:
            pass
        _SPANDREL = spandrel
    return _SPANDREL or None


def spandrel_available() -> bool:
    """Whether spandrel can be imported (with the torchvision stand-in where needed)."""
    return _spandrel() is not None


def _spandrel_model(state: dict[str, Tensor]) -> UpscaleModel:
    spandrel = _spandrel()
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise UpscaleModelError("spandrel does not recognise this model's architecture") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscaleModelError(
            f"{descriptor.architecture.name} is a {descriptor.purpose} model, not a single-image upscaler"
        )
    descriptor.eval()
    return UpscaleModel(
        net=descriptor,
        scale=int(descriptor.scale),
        input_channels=descriptor.input_channels,
        output_channels=descriptor.output_channels,
        architecture=descriptor.architecture.name,
        backend="spandrel",
    )


def model_from_state_dict(state: dict[str, Any], backend: Backend = "auto") -> UpscaleModel:
    """Build an :class:`UpscaleModel` from a state dict.

    ``auto`` uses spandrel when it imports (ComfyUI's loader), else graphrun's own networks;
    ``spandrel``/``graphrun`` force one of them.
    """
    state = canonical_state_dict(state)
    # SwinIR checkpoints saved from DataParallel keep "module." on part of their keys (ComfyUI strips it).
    if "module.layers.0.residual_group.blocks.0.norm1.weight" in state:
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if not state:
        raise UpscaleModelError("the file holds no tensors")
    if backend == "spandrel" or (backend == "auto" and spandrel_available()):
        if not spandrel_available():
            raise UpscaleModelError(_spandrel_problem)
        return _spandrel_model(state)
    try:
        model = _native_model(state)
    except UpscaleModelError:
        raise
    except (RuntimeError, KeyError, IndexError, ValueError) as exc:  # shapes or names of an unknown variant
        raise UpscaleModelError(f"an ESRGAN-family model graphrun could not build: {exc}") from None
    if model is None:
        why = f": {_spandrel_problem}" if not spandrel_available() else ""
        raise UpscaleModelError(
            "graphrun's own networks cover ESRGAN/Real-ESRGAN (RRDBNet) and Real-ESRGAN Compact only; "
            f"SwinIR, HAT, DAT, OmniSR, SPAN and the others need spandrel{why}"
        )
    return model


def load_upscale_model(path: str | Path, backend: Backend = "auto") -> UpscaleModel:
    """Read an upscale model file (see :func:`read_state_dict`) and build it (see :func:`model_from_state_dict`)."""
    from .model_files import require_finite

    try:
        state = read_state_dict(path)
        # NaN/Inf weights upscale to a black or noise picture without any other sign.
        require_finite(canonical_state_dict(state), path, "upscale model", error=UpscaleModelError)
        return model_from_state_dict(state, backend)
    except UpscaleModelError as exc:
        raise UpscaleModelError(f"{Path(path).name}: {exc}") from None


# --- tiled inference (ComfyUI's tiled_scale rules) ----------------------------------------------------------------


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    return [max(0, min(size - overlap, start)) for start in range(0, size - overlap, tile - overlap)]


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    """How many tiles :func:`tiled_scale` runs per image."""
    return len(_tile_starts(height, tile, overlap)) * len(_tile_starts(width, tile, overlap))


def _feather(length: int, feather: int) -> Tensor:
    """Blend weights along one side of a tile: a linear ramp (t+1)/feather over ``feather`` pixels at each
    end, multiplied where the ramps meet; flat when the tile is not longer than the ramp."""
    ramp = torch.ones(length)
    if feather >= length:
        return ramp
    for t in range(feather):
        a = (t + 1) / feather
        ramp[t] *= a
        ramp[length - 1 - t] *= a
    return ramp


@torch.no_grad()
def tiled_scale(
    samples: Tensor,
    fn: Callable[[Tensor], Tensor],
    *,
    tile: int = 512,
    overlap: int = 32,
    scale: float = 4,
    out_channels: int = 3,
    on_tile: Callable[[], None] | None = None,
) -> Tensor:
    """Run ``fn`` (``[1, C, h, w]`` -> ``[1, out_channels, h*scale, w*scale]``) over ``samples [B, C, H, W]``
    in overlapping square tiles and blend them (ComfyUI ``tiled_scale``).

    Tiles start every ``tile - overlap`` pixels; the last one is clamped to start at most ``overlap``
    before the edge and may be shorter. Each tile's output is weighted by a linear ramp over
    ``round(overlap * scale)`` pixels at every edge, and the sum is divided by the summed weights. An image
    that fits in one tile is processed whole. The result is float32 on the CPU; ``on_tile`` is called
    after every tile (progress, interruption).
    """
    batch, _, height, width = samples.shape
    out_h, out_w = round(height * scale), round(width * scale)
    output = torch.empty((batch, out_channels, out_h, out_w), dtype=torch.float32)
    feather = round(overlap * scale)
    for b in range(batch):
        image = samples[b : b + 1]
        if height <= tile and width <= tile:
            output[b : b + 1] = fn(image).float().cpu()
            if on_tile is not None:
                on_tile()
            continue
        total = torch.zeros((1, out_channels, out_h, out_w), dtype=torch.float32)
        weight = torch.zeros((1, 1, out_h, out_w), dtype=torch.float32)
        for y, x in itertools.product(_tile_starts(height, tile, overlap), _tile_starts(width, tile, overlap)):
            piece = fn(image[..., y : y + min(tile, height - y), x : x + min(tile, width - x)]).float().cpu()
            ph, pw = piece.shape[-2:]
            mask = (_feather(ph, feather)[:, None] * _feather(pw, feather)[None, :])[None, None]
            oy, ox = round(y * scale), round(x * scale)
            total[..., oy : oy + ph, ox : ox + pw] += piece * mask
            weight[..., oy : oy + ph, ox : ox + pw] += mask
            if on_tile is not None:
                on_tile()
        output[b : b + 1] = total / weight
    return output


def _is_oom(exc: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if t)
    return isinstance(exc, oom_types) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def upscale_images(
    model: UpscaleModel,
    images: Tensor,
    device: torch.device | str = "cpu",
    *,
    tile: int = 512,
    overlap: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Upscale IMAGE ``[B, H, W, C]`` with ``model`` like ComfyUI's ImageUpscaleWithModel.

    Tiles of ``tile`` px with ``overlap`` px overlap; on out-of-memory the tile size is halved and the
    image restarted, down to 128 px. ``progress(done, total)`` is called after every tile and may raise
    to stop (graphrun's Ctrl-C). The model is moved to ``device`` for the run and back to the CPU after.
    Returns ``[B, H*scale, W*scale, C']`` float32 in [0, 1] on the CPU.
    """
    if images.ndim != 4:
        raise ValueError(f"expected an IMAGE [B, H, W, C], got shape {tuple(images.shape)}")
    if images.shape[-1] != model.input_channels:
        raise ValueError(
            f"the image has {images.shape[-1]} channels but the {model.architecture} model expects "
            f"{model.input_channels}"
        )
    device = torch.device(device)
    samples = images.movedim(-1, 1).to(device=device, dtype=torch.float32)
    model.to(device)
    try:
        while True:
            total = images.shape[0] * tile_count(images.shape[1], images.shape[2], tile, overlap)
            done = 0

            def on_tile() -> None:
                nonlocal done
                done += 1
                if progress is not None:
                    progress(done, total)

            try:
                out = tiled_scale(
                    samples, model, tile=tile, overlap=overlap, scale=model.scale,
                    out_channels=model.output_channels, on_tile=on_tile,
                )
                break
            except Exception as exc:
                if not _is_oom(exc) or tile // 2 < 128:
                    raise
                tile //= 2
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        model.to("cpu")
    return out.movedim(1, -1).clamp_(0.0, 1.0)


# --- a tiny random-weight model for tests --------------------------------------------------------------------------


def write_tiny_upscale_model(
    path: str | Path,
    *,
    layout: Literal["realesrgan", "esrgan", "compact"] = "realesrgan",
    scale: Literal[1, 2, 4] = 4,
    num_feat: int = 8,
    num_blocks: int = 1,
    seed: int = 0,
) -> Path:
    """Write a tiny random-weight upscale model as safetensors and return its path.

    ``realesrgan`` uses Real-ESRGAN's key layout (as RealESRGAN_x4plus.safetensors; x2/x1 through pixel
    unshuffle like RealESRGAN_x2plus), ``esrgan`` the original ESRGAN ``model.N`` layout (x4/x2/x1 by
    upsampling stages), ``compact`` SRVGGNetCompact (``body.N``). The dense blocks keep 32 growth
    channels, the value spandrel assumes, so spandrel loads these files too. Weights are deterministic
    for a given seed; the last conv is scaled down (and biased to 0.5 for ESRGAN) so outputs stay in [0, 1].
    """
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    if layout == "compact":
        net: nn.Module = CompactNet(in_nc=3, out_nc=3, nf=num_feat, num_conv=2, scale=scale)
        last = f"body.{len(net.body) - 1}"
    else:
        shuffle = {4: 1, 2: 2, 1: 4}[scale] if layout == "realesrgan" else 1
        upsamples = 2 if layout == "realesrgan" else int(math.log2(scale))
        net = RRDBNet(in_nc=3 * shuffle * shuffle, out_nc=3, nf=num_feat, nb=num_blocks, gc=32,
                      upsamples=upsamples, shuffle=shuffle)
        last = "conv_last"
    state = {}
    for name, value in net.state_dict().items():
        if name.endswith(".bias"):
            tensor = torch.randn(value.shape, generator=generator) * 0.05
        elif value.ndim == 1:  # PReLU slopes
            tensor = torch.full(value.shape, 0.25)
        else:
            fan_in = value[0].numel()
            tensor = torch.randn(value.shape, generator=generator) / math.sqrt(fan_in)
        if name == f"{last}.weight":
            tensor *= 0.3
        if name == f"{last}.bias":
            tensor = torch.full(value.shape, 0.0 if layout == "compact" else 0.5)
        state[name] = tensor.contiguous()
    if layout == "esrgan":
        state = _to_esrgan_keys(state, num_blocks, int(math.log2(scale)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def _to_esrgan_keys(state: dict[str, Tensor], nb: int, upsamples: int) -> dict[str, Tensor]:
    """Real-ESRGAN key names -> original ESRGAN ``model.N`` names (the inverse of :func:`_to_realesrgan_keys`)."""
    names = {"conv_first": "model.0", "conv_body": f"model.1.sub.{nb}"}
    names.update({f"conv_up{i + 1}": f"model.{3 * (i + 1)}" for i in range(upsamples)})
    names.update({"conv_hr": f"model.{3 * upsamples + 2}", "conv_last": f"model.{3 * upsamples + 4}"})
    out = {}
    for key, value in state.items():
        match = _RDB_KEY.match(key)
        if match:
            block, rdb, conv, kind = match.groups()
            out[f"model.1.sub.{block}.RDB{rdb}.conv{conv}.0.{kind}"] = value
        else:
            head, _, kind = key.rpartition(".")
            out[f"{names[head]}.{kind}"] = value
    return out
