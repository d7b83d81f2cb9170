"""How LoadImage turns an image file into IMAGE and MASK tensors, as the selected ComfyUI version does.

Why graphrun has its own code here: ComfyUI changed its decoder between the versions graphrun follows, and the
pixels a workflow starts from (img2img, inpainting masks) change with it:

* ComfyUI 0.33 (PR #13594 "Use pyav to load images instead of pillow" and its follow-ups up to de6b062f) decodes
  through FFmpeg (PyAV). The first decoded frame's pixel format decides everything: the 8-bit formats FFmpeg's
  JPEG and PNG decoders give (``yuvj420p``/``yuvj422p``/``yuvj444p``, ``rgb24``, ``rgba``, ``pal8``) are converted
  to ``rgb24``/``rgba`` bytes and divided by 255; every other format (16-bit PNG, grayscale, gray+alpha, GIF's
  ``bgra``, lossy WebP's ``yuv420p``, ...) is converted by FFmpeg straight to planar float32 (``gbrpf32le`` /
  ``gbrapf32le``), which keeps 16-bit precision. Frames whose width is not a multiple of 32 go through FFmpeg's
  ``pad`` + ``fillborders=smear`` filters first (ComfyUI's fix for nondeterministic conversions), then are
  cropped back. A frame's display rotation (EXIF orientation, display matrix) is applied in steps of 90 degrees;
  mirrored orientations are not. An alpha channel (and every palette image, with or without ``tRNS``) gives the
  MASK ``1 - alpha`` at full size, otherwise the MASK is zeros 64x64 per frame. JPEG pixels differ from PIL's by a
  few levels (FFmpeg's IDCT and chroma upsampling). When FFmpeg decodes no frame at all (animated WebP) ComfyUI
  falls back to PIL, without the 16-bit ``I`` scaling and the palette-transparency mask of v0.18.1.
* ComfyUI v0.18.1 and October 2025 decode with PIL (EXIF transpose, ``convert("RGB")``, 8 bits per channel).

Both decoders are written from those semantics against PyAV and PIL, the libraries ComfyUI calls, so the tensors
come out bit for bit the same (see ``tests/data/comfy/v0.33/load_image/``).
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from graphrun.engine.comfy.versions import comfy_at_least

__all__ = ["DecodedImage", "decode_image", "uses_pyav", "without_pil_bomb_check"]

#: FFmpeg pixel formats ComfyUI 0.33 reads as 8-bit ``rgb24``/``rgba`` (then / 255); all others go to float32.
EIGHT_BIT_FORMATS = frozenset({"yuvj420p", "yuvj422p", "yuvj444p", "rgb24", "rgba", "pal8"})
#: Widths FFmpeg's float conversion is padded to (ComfyUI's alignment fix).
_ALIGN = 32


class DecodedImage(NamedTuple):
    """LoadImage's two outputs: IMAGE [B, H, W, 3] and MASK [B, H, W] (or [B, 64, 64]), float32 on the CPU."""

    image: Any
    mask: Any


def uses_pyav(comfy_version: str) -> bool:
    """Whether LoadImage decodes through PyAV under this ``comfy`` setting (ComfyUI 0.33 on)."""
    return comfy_at_least(comfy_version, "0.33")


def decode_image(path: Path, comfy_version: str, max_pixels: int | None = None) -> DecodedImage:
    """Decode ``path`` as LoadImage does under ``comfy_version``.

    ``max_pixels`` bounds the pixels decoded over all frames (the header check comes first, in ``image_problem``;
    this guards formats whose frame count the header does not tell). Raises ValueError naming the file for
    anything that cannot be decoded.
    """
    if uses_pyav(comfy_version):
        decoded = _decode_pyav(path, max_pixels)
        if decoded is not None:
            return decoded
        return _decode_pil_033(path)  # ComfyUI 0.33's fallback: FFmpeg decoded no frame
    return _decode_pil_018(path)


# --- ComfyUI 0.33: PyAV ------------------------------------------------------------------------------------------


class _Aligner:
    """FFmpeg filters that pad a frame to multiples of 32 in both directions and smear its border into the padding:
    ComfyUI 0.33 converts unaligned frames to float through them (built once, from the first such frame)."""

    def __init__(self, frame: Any, time_base: Any) -> None:
        import av

        width, height = frame.width, frame.height
        padded_w = -(-width // _ALIGN) * _ALIGN
        padded_h = -(-height // _ALIGN) * _ALIGN
        self.graph = av.filter.Graph()
        self.source = self.graph.add_buffer(width=width, height=height, format=frame.format.name, time_base=time_base)
        pad = self.graph.add("pad", f"{padded_w}:{padded_h}:0:0")
        smear = self.graph.add(
            "fillborders", f"left=0:right={padded_w - width}:top=0:bottom={padded_h - height}:mode=smear"
        )
        sink = self.graph.add("buffersink")
        self.source.link_to(pad)
        pad.link_to(smear)
        smear.link_to(sink)
        self.sink = sink
        self.graph.configure()

    def to_ndarray(self, frame: Any, pixel_format: str) -> Any:
        import numpy as np

        self.source.push(frame)
        padded = self.sink.pull().to_ndarray(format=pixel_format)
        return np.ascontiguousarray(padded[: frame.height, : frame.width])


def pyav_problem(path: Path, limit: int | None) -> str | None:
    """Why ComfyUI 0.33's LoadImage cannot load a file PIL does not read (EXR, ...) from its container header,
    or None: FFmpeg must open it and find a picture stream within the pixel limit."""
    import av

    not_an_image = f"'{path}' is not an image file that PIL or FFmpeg reads (PNG, JPEG, WebP, GIF, BMP, TIFF, EXR, ...)"
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                return str(_pyav_error(path, ValueError("no picture stream in the file")))
            stream = container.streams.video[0]
            frames = max(int(stream.frames or 0), 1)
            pixels = int(stream.width or 0) * int(stream.height or 0) * frames
            if limit is not None and pixels > limit:
                return (f"image '{path}' is {stream.width}x{stream.height}"
                        + (f" x {frames} frames" if frames > 1 else "")
                        + f", more than the {limit} pixels LoadImage accepts; to allow it, raise "
                        "GRAPHRUN_MAX_IMAGE_PIXELS (0 = no limit)")
            # FFmpeg opens many files by their name alone (a text file called .png): a frame must decode.
            if next(container.decode(video=0), None) is None:
                return not_an_image
    except (av.error.FFmpegError, OSError) as exc:
        return f"{not_an_image}: {exc}"
    return None


def _pyav_error(path: Path, exc: BaseException) -> ValueError:
    return ValueError(
        f"image '{path}' cannot be read by FFmpeg (PyAV), which ComfyUI 0.33's LoadImage decodes with ({exc}); "
        "convert it to PNG or JPEG, or follow ComfyUI v0.18.1's PIL decoder with --comfy 0.18.1"
    )


def _decode_pyav(path: Path, max_pixels: int | None) -> DecodedImage | None:
    """ComfyUI 0.33's decode, or None when FFmpeg yields no frame (then ComfyUI falls back to PIL)."""
    import av
    import numpy as np
    import torch

    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError) as exc:
        raise _pyav_error(path, exc) from exc
    colours: list[Any] = []
    alphas: list[Any] = []
    pixel_format: str | None = None
    has_alpha = eight_bit = False
    aligner: _Aligner | None = None
    pixels = 0
    with container:
        if not container.streams.video:
            raise _pyav_error(path, ValueError("no picture stream in the file"))
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            try:
                for frame in packet.decode():
                    if frame.pts is not None and frame.pts < 0:
                        continue  # before the start (ComfyUI reads from time 0)
                    if pixel_format is None:  # the first frame decides the conversion for all
                        name = frame.format.name
                        has_alpha = name == "pal8" or any(c.is_alpha for c in frame.format.components)
                        eight_bit = name in EIGHT_BIT_FORMATS
                        if eight_bit:
                            pixel_format = "rgba" if has_alpha else "rgb24"
                        else:
                            pixel_format = "gbrapf32le" if has_alpha else "gbrpf32le"
                    pixels += frame.width * frame.height
                    if max_pixels is not None and pixels > max_pixels:
                        raise ValueError(
                            f"image '{path}' decodes to more than {max_pixels} pixels over its frames; to allow "
                            f"it, raise GRAPHRUN_MAX_IMAGE_PIXELS (0 = no limit)"
                        )
                    if not eight_bit and frame.width % _ALIGN:
                        if aligner is None:
                            aligner = _Aligner(frame, stream.time_base)
                        array = aligner.to_ndarray(frame, pixel_format)
                    else:
                        array = frame.to_ndarray(format=pixel_format)
                    if frame.rotation:
                        array = np.rot90(array, k=int(round(frame.rotation // 90)), axes=(0, 1)).copy()
                    if has_alpha:
                        colours.append(torch.from_numpy(array[..., :-1]))
                        alphas.append(torch.from_numpy(array[..., -1:]))
                    else:
                        colours.append(torch.from_numpy(array))
            except av.error.InvalidDataError:
                continue  # ComfyUI logs "pyav decode error" and reads on
            except av.error.FFmpegError as exc:
                raise _pyav_error(path, exc) from exc
    if not colours:
        return None
    if len({tuple(c.shape) for c in colours}) > 1:
        sizes = sorted({f"{c.shape[1]}x{c.shape[0]}" for c in colours})
        raise ValueError(f"image '{path}' has frames of different sizes ({', '.join(sizes)}), which ComfyUI 0.33's "
                         "LoadImage cannot stack into one batch; save the frame you want as a PNG")

    def finish(values: list[Any]) -> Any:
        stacked = torch.stack(values)
        return stacked.float() / 255.0 if eight_bit else stacked

    image = finish(colours).to(torch.float32)
    if has_alpha:
        mask = (1.0 - finish(alphas)[..., -1]).to(torch.float32)
    else:
        mask = torch.zeros((image.shape[0], 64, 64), dtype=torch.float32)
    return DecodedImage(image, mask)


# --- PIL: ComfyUI v0.18.1 / October 2025, and 0.33's fallback ----------------------------------------------------

_PIL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def without_pil_bomb_check() -> Iterator[None]:
    """PIL refuses images over 2 x its MAX_IMAGE_PIXELS on its own; graphrun's limit (checked first) replaces it,
    so a user who raises GRAPHRUN_MAX_IMAGE_PIXELS gets what they asked for."""
    from PIL import Image as PILImage

    with _PIL_LIMIT_LOCK:
        previous = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            PILImage.MAX_IMAGE_PIXELS = previous


def _pil_corrupt(path: Path, exc: BaseException) -> ValueError:
    return ValueError(f"image '{path}' is corrupt or truncated ({exc})")


def _decode_pil_018(path: Path) -> DecodedImage:
    """ComfyUI v0.18.1: every frame of the first frame's size, EXIF-transposed, 32-bit ``I`` frames scaled by
    1/255, the mask from an alpha band or a palette's transparency; MPO files give their first frame only."""
    return _decode_pil(path, legacy=True)


def _decode_pil_033(path: Path) -> DecodedImage:
    """ComfyUI 0.33's PIL fallback (animated WebP and other files FFmpeg decodes no frame of): every frame of the
    first frame's size, EXIF-transposed, ``convert("RGB")``; the mask only from an alpha band."""
    return _decode_pil(path, legacy=False)


def _decode_pil(path: Path, legacy: bool) -> DecodedImage:
    """The PIL decoder of both versions; ``legacy`` adds what only v0.18.1 did (``I`` scaling, palette masks,
    MPO's first frame)."""
    import numpy as np
    import torch
    from PIL import Image as PILImage, ImageOps, ImageSequence

    def unit(band: Any) -> Any:
        return torch.from_numpy(np.array(band).astype(np.float32) / 255.0)

    images, masks = [], []
    try:
        with without_pil_bomb_check(), PILImage.open(path) as img:
            size = None
            for frame in ImageSequence.Iterator(img):
                frame = ImageOps.exif_transpose(frame)
                if legacy and frame.mode == "I":
                    frame = frame.point(lambda v: v * (1 / 255))
                rgb = frame.convert("RGB")
                if size is None:
                    size = rgb.size
                elif rgb.size != size:
                    continue
                images.append(unit(rgb))
                if "A" in frame.getbands():
                    masks.append(1.0 - unit(frame.getchannel("A")))
                elif legacy and frame.mode == "P" and "transparency" in frame.info:
                    masks.append(1.0 - unit(frame.convert("RGBA").getchannel("A")))
                else:
                    masks.append(torch.zeros((64, 64), dtype=torch.float32))
                if legacy and img.format == "MPO":
                    break  # MPO extra frames are depth maps, not animation
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _pil_corrupt(path, exc) from exc
    return DecodedImage(torch.stack(images), torch.stack(masks))
