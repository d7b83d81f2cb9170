"""Image files in and out: LoadImage, SaveImage, PreviewImage (ComfyUI semantics)."""
from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import Field

from graphrun.engine.context import Context
from graphrun.engine.node import CheckEnv, Comfy, Problem, node

from .types import Image, Mask

_BACKEND_TOKENS = ("width", "height", "year", "month", "day", "hour", "minute", "second")


class LoadedImage(NamedTuple):
    image: Image
    mask: Mask


def _image_candidates(name: str, input_dirs: list[str], graph_dir: Path | None) -> list[Path]:
    """Where an image name may live: as given, in input dirs, in ./input, next to the graph file."""
    candidates = [Path(name).expanduser()] + [Path(d) / name for d in input_dirs] + [Path("input") / name]
    if graph_dir is not None:
        candidates.append(graph_dir / name)
    return candidates


def _check_image(literals: dict[str, Any], env: CheckEnv) -> list[Problem]:
    name = literals.get("image", "")
    candidates = _image_candidates(name, env.options.get("input_dirs", []), env.graph_dir)
    if any(c.is_file() for c in candidates):
        return []
    return [Problem("image", f"image '{name}' not found", "looked in: " + ", ".join(map(str, candidates)))]


def _resolve_input(ctx: Context, name: str) -> Path:
    graph_file = ctx.graph.document.file if ctx.graph is not None else None
    candidates = _image_candidates(
        name, ctx.options.extra.get("input_dirs", []), Path(graph_file).parent if graph_file else None
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"image '{name}' not found (looked in: {looked})")


@node(
    "LoadImage",
    category="image",
    comfy=Comfy("LoadImage", image_upload=("image",)),
    check=_check_image,
)
def load_image(ctx: Context, image: Annotated[str, Field(description="image file path")]) -> LoadedImage:
    """Load an image file as IMAGE plus a MASK from its alpha channel (ComfyUI LoadImage).

    All frames of the same size as the first are stacked into a batch; EXIF orientation is
    applied; the mask is 1 - alpha (zeros 64x64 when the image has no alpha).
    """
    import numpy as np
    import torch
    from PIL import Image as PILImage, ImageOps, ImageSequence

    path = _resolve_input(ctx, image)
    images, masks = [], []
    with PILImage.open(path) as img:
        size = None
        for frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            elif rgb.size != size:
                continue
            images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0))
            if "A" in frame.getbands():
                alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
                masks.append(1.0 - torch.from_numpy(alpha))
            elif frame.mode == "P" and "transparency" in frame.info:
                alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
                masks.append(1.0 - torch.from_numpy(alpha))
            else:
                masks.append(torch.zeros((64, 64), dtype=torch.float32))
            if img.format == "MPO":
                break  # MPO extra frames are depth maps, not animation
    return LoadedImage(torch.stack(images), torch.stack(masks))


def expand_prefix(prefix: str, width: int, height: int, now: time.struct_time | None = None) -> str:
    """Replace %width% %height% %year% %month% %day% %hour% %minute% %second% (ComfyUI backend)."""
    now = now or time.localtime()
    values = {
        "width": str(width),
        "height": str(height),
        "year": str(now.tm_year),
        "month": f"{now.tm_mon:02d}",
        "day": f"{now.tm_mday:02d}",
        "hour": f"{now.tm_hour:02d}",
        "minute": f"{now.tm_min:02d}",
        "second": f"{now.tm_sec:02d}",
    }
    for token in _BACKEND_TOKENS:
        prefix = prefix.replace(f"%{token}%", values[token])
    return prefix


def save_path(output_dir: Path, prefix: str, width: int, height: int) -> tuple[Path, str, int]:
    """(folder, filename stem, first counter) for a prefix, refusing paths outside output_dir."""
    prefix = expand_prefix(prefix, width, height)
    output_dir = output_dir.resolve()
    normalized = os.path.normpath(prefix)
    folder = (output_dir / os.path.dirname(normalized)).resolve()
    filename = os.path.basename(normalized)
    if os.path.commonpath([output_dir, folder]) != str(output_dir) or not filename or filename in (".", ".."):
        raise ValueError(
            f"filename_prefix '{prefix}' would save outside the output folder {output_dir}; "
            "use a relative prefix such as 'zimage/run1'"
        )
    pattern = re.compile(re.escape(filename) + r"_(\d+)", re.IGNORECASE)
    counter = 0
    if folder.is_dir():
        for entry in os.listdir(folder):
            match = pattern.match(entry)
            if match:
                counter = max(counter, int(match.group(1)))
    return folder, filename, counter + 1


def to_uint8(image: Any):
    """ComfyUI's pixel conversion: clip(255 * x) truncated to uint8 (not rounded)."""
    import numpy as np

    return np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)


def _metadata(ctx: Context) -> Any:
    """PNG text chunks: `prompt` (the graph as a ComfyUI API prompt, so the image opens in ComfyUI and
    `graphrun IMAGE.png` re-runs it) and `graphrun` (the graph document with the params used, and the
    ComfyUI version whose behaviour the run followed, `comfy`)."""
    from PIL.PngImagePlugin import PngInfo

    from graphrun.engine.comfy.export import graph_to_api

    info = PngInfo()
    graph = ctx.graph
    if graph is not None:
        doc = graph.document
        info.add_text("prompt", json.dumps(graph_to_api(graph), default=str))
        record = {"graph": doc.raw, "params": graph.params, "comfy": ctx.comfy_version}
        info.add_text("graphrun", json.dumps(record, default=str))
    return info


def write_png_exclusive(
    pixels: Any, folder: Path, filename: str, counter: int, info: Any, compress_level: int
) -> tuple[Path, int]:
    """Write atomically under the first free ``filename_#####_.png`` name; never overwrite."""
    from PIL import Image as PILImage

    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".graphrun-", suffix=".png.part", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            PILImage.fromarray(pixels).save(handle, format="PNG", pnginfo=info, compress_level=compress_level)
        while True:
            target = folder / f"{filename}_{counter:05d}_.png"
            try:
                os.link(tmp, target)  # atomic and fails if the name exists: never overwrites
                return target, counter
            except FileExistsError:
                counter += 1
            except OSError:  # filesystems without hard links
                if not target.exists():
                    os.replace(tmp, target)
                    return target, counter
                counter += 1
    finally:
        tmp.unlink(missing_ok=True)


@node(
    "SaveImage",
    category="image",
    output=True,
    comfy=Comfy("SaveImage", inputs={"images": "images", "filename_prefix": "filename_prefix"}),
)
def save_image(
    ctx: Context,
    images: Image,
    filename_prefix: Annotated[
        str, Field(description="file name prefix, may contain subfolders and %width% %height% %year% ...")
    ] = "ComfyUI",
) -> list[Path]:
    """Save images as PNG in the output folder (`--out`) like ComfyUI: prefix_00001_.png, ...

    The counter continues after existing files; each file is written atomically and never
    overwrites anything. The PNG carries the graph (and ComfyUI's `prompt`) as text chunks.
    Returns the written paths.
    """
    batch, height, width = images.shape[0], images.shape[1], images.shape[2]
    folder, filename, counter = save_path(ctx.output_dir, filename_prefix, width, height)
    info = _metadata(ctx)
    written = []
    for index in range(batch):
        name = filename.replace("%batch_num%", str(index))
        path, counter = write_png_exclusive(to_uint8(images[index]), folder, name, counter, info, compress_level=4)
        counter += 1
        written.append(path)
        ctx.progress(index + 1, batch)
    return written


@node("PreviewImage", category="image", output=True, comfy=Comfy("PreviewImage"))
def preview_image(ctx: Context, images: Image) -> list[Path]:
    """Save images to a temporary preview folder (`<out>/.preview`), not the outputs."""
    folder = ctx.output_dir / ".preview"
    suffix = "".join(secrets.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    written = []
    for index in range(images.shape[0]):
        path, _ = write_png_exclusive(to_uint8(images[index]), folder, f"preview_{suffix}", 1, None, compress_level=1)
        written.append(path)
    return written
