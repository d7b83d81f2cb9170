"""Deterministic LoadImage test inputs (numpy + PIL; 16-bit RGB PNG written with zlib)."""
import struct, sys, zlib
from pathlib import Path
import numpy as np
from PIL import Image

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
W, H = 96, 80

def pattern(w, h, phase=0.0):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 0.5 + 0.5 * np.sin(x / 7.0 + phase) * np.cos(y / 11.0)
    g = (x + y) / (w + h)
    b = 0.5 + 0.5 * np.sin(np.hypot(x - w / 2, y - h / 2) / 4.0 + phase)
    disc = np.hypot(x - w * 0.3, y - h * 0.6) < min(w, h) / 5
    r = np.where(disc, 0.95, r); b = np.where(disc, 0.1, b)
    return np.stack([r, g, b], -1)

def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

def png16(path, arr, color_type):
    h, w = arr.shape[:2]
    raw = b"".join(b"\0" + arr[i].astype(">u2").tobytes() for i in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

rgb8 = np.round(pattern(W, H) * 255).astype(np.uint8)
Image.fromarray(rgb8).save(out / "jpeg420.jpg", quality=90, subsampling=2)
Image.fromarray(rgb8).save(out / "jpeg444.jpg", quality=90, subsampling=0)
# EXIF orientation 6 (the camera was turned: viewers rotate 90 degrees clockwise)
exif = Image.Exif(); exif[0x0112] = 6
Image.fromarray(rgb8).save(out / "exif6.jpg", quality=90, subsampling=2, exif=exif.tobytes())
# 16 bit: values that 8 bits cannot hold (fine steps)
rgb16 = np.round(pattern(W, H, 0.3) * 65535).astype(np.uint16)
png16(out / "rgb16.png", rgb16, 2)
png16(out / "gray16.png", rgb16[..., 1], 0)
# 16-bit at an odd width (not a multiple of 32): the float path with FFmpeg's alignment padding
png16(out / "rgb16_90x70.png", np.round(pattern(90, 70, 0.7) * 65535).astype(np.uint16), 2)
# RGBA: alpha ramp and a hole
y, x = np.mgrid[0:H, 0:W]
alpha = np.clip((x * 255) // (W - 1), 0, 255).astype(np.uint8)
alpha[np.hypot(x - 60, y - 30) < 12] = 0
Image.fromarray(np.dstack([rgb8, alpha])).save(out / "rgba.png")
# grayscale 8 bit, LA, palette with tRNS, palette without
Image.fromarray(rgb8[..., 1]).save(out / "gray8.png")
Image.fromarray(np.dstack([rgb8[..., 0], alpha]), "LA").save(out / "la.png")
pal = Image.fromarray(rgb8).quantize(16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
pal.save(out / "palette.png")
pal.info["transparency"] = 3
pal.save(out / "palette_trns.png", transparency=3)
# multi-frame: an animated GIF (3 frames) and an animated WebP (PyAV decodes no frame of it)
frames = [Image.fromarray(np.round(pattern(48, 40, p) * 255).astype(np.uint8)) for p in (0.0, 1.0, 2.0)]
frames[0].save(out / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
frames[0].save(out / "anim.webp", save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
# lossy WebP (FFmpeg: yuv420p, the float path) at an unaligned width
Image.fromarray(np.round(pattern(90, 70, 0.5) * 255).astype(np.uint8)).save(out / "lossy.webp", quality=80)
# EXR (float, only FFmpeg reads it): written with PyAV's exr encoder
import av  # noqa: E402

ey, ex = np.mgrid[0:24, 0:40].astype(np.float32)
exr = np.stack([ex / 39, ey / 23, 0.5 + 0.5 * np.sin(ex * 0.7 + ey * 0.3)], axis=-1).astype(np.float32) * 1.25
container = av.open(str(out / "grad.exr"), "w", format="image2")
stream = container.add_stream("exr")
stream.width, stream.height, stream.pix_fmt = 40, 24, "gbrpf32le"
for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(exr), format="gbrpf32le")):
    container.mux(packet)
for packet in stream.encode():
    container.mux(packet)
container.close()
